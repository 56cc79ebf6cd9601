-- A moonshard template: init.lua returns a table of event names and handlers.
-- Try it (from the folder above this one):
--   moonshard exec NAME --event MESSAGE_CREATE --data @NAME/events/MESSAGE_CREATE.json
--   moonshard exec NAME --event INTERACTION_CREATE --data @NAME/events/INTERACTION_CREATE.json

local commands = require("@moonshard/commands")
local duration = require("@moonshard/duration")
local embed = require("@moonshard/embed")

local router = commands.router()

-- /ping answers "Pong!" (returning text from a command replies with it).
router:command("ping", function(cmd)
  return "Pong!"
end)

-- /stats shows how many messages the user has sent; each user may ask once a minute.
router:command("stats", {cooldown = "1m"}, function(cmd)
  local sent = cmd.ctx.kv.get("messages:" .. cmd.user_id) or 0
  local card = embed.new()
    :title("Stats of " .. cmd.user.username)
    :color("#5865F2")
    :field("Messages", sent, true)
    :footer("You can ask again in " .. duration.format(60, {long = true}))
    :build()
  return {embeds = {card}, ephemeral = true}
end)

---@type moonshard.Template
return {
  ---@param ctx moonshard.Context
  ---@param event moonshard.Event
  MESSAGE_CREATE = function(ctx, event)
    ---@type discord.Message
    local message = event.data
    if message.author.bot then return nil end
    local count = ctx.kv.incr("messages:" .. message.author.id)
    print(message.author.username .. " has sent " .. count .. " messages")
    return {messages = count}
  end,

  INTERACTION_CREATE = router:handler(),
}
