-- afk: `/afk message:lunch` marks you away; anyone who mentions you gets your message, and
-- your next message marks you back.
local commands = require("@moonshard/commands")
local duration = require("@moonshard/duration")

local router = commands.router()

router:command("afk", {options = {message = {type = "string", max = 100, default = "AFK"}}},
  function(cmd)
    cmd.ctx.kv.set("afk:" .. cmd.user_id, {message = cmd.args.message, since = cmd.event.at})
    return {content = "💤 You are AFK: " .. cmd.args.message, ephemeral = true}
  end)

return {
  INTERACTION_CREATE = router:handler(),

  MESSAGE_CREATE = function(ctx, event)
    local message = event.data
    if message.author == nil or message.author.bot then return end
    local answers = {}
    -- Back from AFK: their own message clears the status.
    local mine = ctx.kv.get("afk:" .. message.author.id)
    if mine ~= nil then
      ctx.kv.delete("afk:" .. message.author.id)
      answers[#answers + 1] = "👋 Welcome back <@" .. message.author.id .. ">, you were away "
        .. duration.format(math.max(0, math.floor(event.at - mine.since)), {units = 2}) .. "."
    end
    for _, user in ipairs(message.mentions or {}) do
      local away = user.id ~= message.author.id and ctx.kv.get("afk:" .. user.id)
      if away then
        answers[#answers + 1] = "💤 " .. (user.global_name or user.username) .. " is AFK: "
          .. away.message
      end
    end
    if #answers == 0 then return end
    ctx.discord.send_message{channel_id = message.channel_id, reply_to = message.id,
                             content = table.concat(answers, "\n"),
                             allowed_mentions = {users = {}}}
    return answers
  end,
}
