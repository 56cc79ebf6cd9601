-- levels: XP for talking (10 per message, at most one message a minute counts), a message
-- on each level up, `/rank` and `/top` from the leaderboard calls (ctx.kv.rank, ctx.kv.top).
local commands = require("@moonshard/commands")
local embed = require("@moonshard/embed")

local XP_PER_MESSAGE, COOLDOWN = 10, 60
local XP = {scope = "xp"}              -- one key per member: its value is their XP

-- Level n needs 50 * n * n XP: 50, 200, 450, ...
local function level_of(xp) return math.floor(math.sqrt(xp / 50)) end

local router = commands.router()

router:command("rank", {options = {user = "user"}}, function(cmd)
  local user = cmd.args.user or cmd.user_id
  local xp = cmd.ctx.kv.get(user, XP)
  if xp == nil then return "<@" .. user .. "> has no XP yet." end
  local rank = cmd.ctx.kv.rank(user, XP)
  return "<@" .. user .. "> is #" .. rank .. " with " .. xp .. " XP (level "
    .. level_of(xp) .. ")."
end)

router:command("top", function(cmd)
  local rows = cmd.ctx.kv.top({scope = "xp", limit = 10})
  if #rows == 0 then return "Nobody has XP yet." end
  local lines = {}
  for i, record in ipairs(rows) do
    lines[i] = i .. ". <@" .. record.key .. "> " .. record.value .. " XP (level "
      .. level_of(record.value) .. ")"
  end
  return {embeds = {embed.new():title("Leaderboard"):description(table.concat(lines, "\n"))
                      :build()}}
end)

return {
  INTERACTION_CREATE = router:handler(),

  MESSAGE_CREATE = function(ctx, event)
    local message = event.data
    if message.author == nil or message.author.bot or message.guild_id == nil then return end
    local user = message.author.id
    -- The cooldown is a key that expires: while it exists, messages earn nothing.
    if ctx.kv.get(user, {scope = "xp-cooldown"}) then return {xp = "cooldown"} end
    ctx.kv.set(user, true, {scope = "xp-cooldown", ttl = COOLDOWN})
    local before = ctx.kv.get(user, XP) or 0
    local xp = ctx.kv.incr(user, XP_PER_MESSAGE, XP)
    if level_of(xp) > level_of(before) then
      ctx.discord.send_message{channel_id = message.channel_id,
                               content = "🎉 <@" .. user .. "> reached level " .. level_of(xp)
                                 .. "!", allowed_mentions = {users = {user}}}
    end
    return {xp = xp, level = level_of(xp)}
  end,
}
