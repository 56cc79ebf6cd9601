-- remindme: `/remindme in:10m what:stretch` answers privately, then, when the time comes,
-- pings the user in the channel they asked from. The reminder is a key with a ttl: its
-- expiry is durable, so a restart in between does not lose it.
local commands = require("@moonshard/commands")
local duration = require("@moonshard/duration")

local router = commands.router()

router:command("remindme", {
  options = {
    ["in"] = {type = "duration", required = true, min = "5s", max = "30d"},
    what = {type = "string", max = 200, default = "something"},
  },
  ephemeral = true,
}, function(cmd)
  local mine = cmd.ctx.kv.count({scope = "reminders:" .. cmd.user_id})
  if mine >= 5 then cmd:fail("You already have 5 reminders waiting.") end
  -- One key per reminder, in the user's own scope, so their reminders can be counted.
  cmd.ctx.kv.set(cmd.interaction.id, {channel_id = cmd.channel_id, user_id = cmd.user_id,
                                      what = cmd.args.what},
                 {ttl = cmd.args["in"], scope = "reminders:" .. cmd.user_id})
  return "⏰ I will remind you in " .. duration.format(cmd.args["in"], {long = true})
    .. ": " .. cmd.args.what
end)

return {
  INTERACTION_CREATE = router:handler(),

  KeyExpiry = function(ctx, event)
    if event.data.scope:sub(1, 10) ~= "reminders:" then return end  -- a cooldown, say
    local reminder = event.data.value
    ctx.discord.send_message{
      channel_id = reminder.channel_id,
      content = "<@" .. reminder.user_id .. "> reminder: " .. reminder.what,
      allowed_mentions = {users = {reminder.user_id}},
    }
    return "reminded " .. reminder.user_id
  end,
}
