-- tempban: `/tempban user:@someone for:1d reason:...` bans now and unbans when the time is
-- up. The ban is a key with a ttl (its expiry unbans) and `resume = true`, so whenever the
-- tenant's VM is rebuilt (a restart, a new version of this template) every running tempban
-- is reported again through KeyResume, and a ban whose time ran out meanwhile is lifted by
-- its expiry, which fires after the restart.
local commands = require("@moonshard/commands")
local duration = require("@moonshard/duration")

local router = commands.router()

router:command("tempban", {
  options = {
    user = {type = "user", required = true},
    ["for"] = {type = "duration", required = true, min = "1s", max = "365d"},
    reason = {type = "string", max = 400, default = "no reason given"},
  },
}, function(cmd)
  local target, seconds = cmd.args.user, cmd.args["for"]
  if target == cmd.user_id then cmd:fail("You cannot tempban yourself.") end
  local reason = cmd.args.reason .. " (tempban by " .. cmd.user_id .. " for "
    .. duration.format(seconds) .. ")"
  cmd.ctx.discord.ban{user_id = target, reason = reason}
  cmd.ctx.kv.set("ban:" .. target, {reason = cmd.args.reason, by = cmd.user_id,
                                    seconds = seconds},
                 {ttl = seconds, resume = true})
  return "🔨 <@" .. target .. "> is banned for " .. duration.format(seconds, {long = true})
    .. "."
end)

return {
  INTERACTION_CREATE = router:handler(),

  KeyExpiry = function(ctx, event)
    local user = event.data.key:match("^ban:(%d+)$")
    if user == nil then return end
    ctx.discord.unban{user_id = user, reason = "tempban ended"}
    return "unbanned " .. user
  end,

  KeyResume = function(ctx, event)
    local user = event.data.key:match("^ban:(%d+)$")
    if user == nil then return end
    local record = ctx.kv.record(event.data.key)
    print("tempban of " .. user .. " still running; it ends at " .. record.expires_at)
    return {user = user, ends_at = record.expires_at}
  end,
}
