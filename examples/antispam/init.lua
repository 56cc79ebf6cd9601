-- An anti-spam template: a member who sends more than 5 messages in 10 seconds is timed out
-- for 10 minutes and their message deleted; /ping answers privately.
local LIMIT, WINDOW = 5, 10

return {
  MESSAGE_CREATE = function(ctx, event)
    local message = event.data
    if message.author == nil or message.author.bot then return end
    local key = "rate:" .. message.author.id
    local count = ctx.kv.incr(key)
    if count == 1 then ctx.kv.expire(key, WINDOW) end
    if count <= LIMIT then return {count = count} end
    ctx.discord.delete_message{channel_id = message.channel_id, message_id = message.id,
                               reason = "spam: " .. count .. " messages in " .. WINDOW .. " s"}
    if count == LIMIT + 1 then
      ctx.discord.timeout{user_id = message.author.id, seconds = 600,
                          reason = "spam: more than " .. LIMIT .. " messages in " .. WINDOW .. " s"}
      ctx.discord.send_message{channel_id = message.channel_id,
                               content = "<@" .. message.author.id .. "> slow down.",
                               allowed_mentions = {users = {message.author.id}}}
    end
    return {count = count, action = "deleted"}
  end,

  INTERACTION_CREATE = function(ctx, event)
    if event.data.data and event.data.data.name == "ping" then
      ctx.discord.respond{interaction = event.data, content = "pong", ephemeral = true}
    end
  end,
}
