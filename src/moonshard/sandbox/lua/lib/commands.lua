-- @moonshard/commands: a slash-command router for INTERACTION_CREATE.
--
-- Routes application commands (and their subcommands) to handlers, reads typed options,
-- answers through ctx.discord.respond (then followup), turns commands.fail into an
-- ephemeral answer, and keeps per-user cooldowns in ctx.kv. A built-in library: it runs in
-- the requiring template's sandbox with only what a template has.

local duration = require("@moonshard/duration")

local commands = {}

-- Keys of the cooldowns live in this kv scope, apart from the template's own keys.
commands.COOLDOWN_SCOPE = "moonshard.cooldowns"

-- Discord's application command option types.
local SUBCOMMAND, SUBCOMMAND_GROUP, APPLICATION_COMMAND = 1, 2, 2

local DISCORD_TYPE_NAMES = {
  [3] = "string", [4] = "integer", [5] = "boolean", [6] = "user", [7] = "channel",
  [8] = "role", [9] = "mentionable", [10] = "number", [11] = "attachment",
}

-- A declared option type -> the Discord option types it accepts.
local ACCEPTS = {
  string = {[3] = true}, integer = {[4] = true}, boolean = {[5] = true},
  user = {[6] = true}, channel = {[7] = true}, role = {[8] = true},
  mentionable = {[9] = true, [6] = true, [8] = true}, number = {[10] = true, [4] = true},
  attachment = {[11] = true}, duration = {[3] = true},
}
local TYPE_LIST = "string, integer, number, boolean, user, channel, role, mentionable, "
  .. "attachment, duration"

local DEFAULT_MESSAGES = {
  cooldown = "⏳ You can use {command} again in {wait}.",
  error = "⚠️ Something went wrong while running {command}.",
}

local function present(value)
  return value ~= nil and value ~= json.null
end

local function fill(text, values)
  return (text:gsub("{(%w+)}", function(name) return values[name] or ("{" .. name .. "}") end))
end

---------------------------------------------------------------------------------------------
-- Errors the user should read (bad input, not allowed): answered ephemerally, the run succeeds.

local UserError = {}
UserError.__index = UserError
UserError.__tostring = function(e) return e.message end

--- Stops the command and answers the user (only them) with `message`.
function commands.fail(message)
  error(setmetatable({message = tostring(message)}, UserError), 2)
end

local function user_error(message)
  return setmetatable({message = message}, UserError)
end

---------------------------------------------------------------------------------------------
-- Declarations

local function option_list(spec_options, path)
  local list = {}
  if spec_options == nil then return list end
  if type(spec_options) ~= "table" then
    error("commands: options of /" .. path .. " must be a table", 3)
  end
  if spec_options[1] ~= nil then
    for _, option in ipairs(spec_options) do list[#list + 1] = option end
  else
    local names = {}
    for name in pairs(spec_options) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      local option = spec_options[name]
      if type(option) == "string" then option = {type = option} end
      if type(option) ~= "table" then
        error("commands: option '" .. tostring(name) .. "' of /" .. path
          .. " must be a type name or a table", 3)
      end
      local copy = {name = name}
      for key, value in pairs(option) do copy[key] = value end
      list[#list + 1] = copy
    end
  end
  for _, option in ipairs(list) do
    if type(option.name) ~= "string" then
      error("commands: every option of /" .. path .. " needs a name", 3)
    end
    if not ACCEPTS[option.type] then
      error("commands: option '" .. option.name .. "' of /" .. path .. " has type "
        .. tostring(option.type) .. "; the types are " .. TYPE_LIST, 3)
    end
    if option.type == "duration" then
      for _, bound in ipairs({"min", "max"}) do
        if option[bound] ~= nil then
          local seconds, problem = duration.try_parse(option[bound])
          if seconds == nil then
            error("commands: " .. bound .. " of option '" .. option.name .. "': " .. problem, 3)
          end
          option[bound] = seconds
        end
      end
    end
  end
  return list
end

local Router = {}
Router.__index = Router

local function default_send(ctx, call, args)
  return ctx.discord[call](args)
end

--- A new router. opts.send(ctx, call, args) answers ("respond" or "followup"; the default
--- calls ctx.discord[call](args)); opts.messages overrides the cooldown and error answers.
function commands.router(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("commands.router: expected a table of options", 2) end
  if opts.send ~= nil and type(opts.send) ~= "function" then
    error("commands.router: send must be a function(ctx, call, args)", 2)
  end
  local messages = {}
  for key, value in pairs(DEFAULT_MESSAGES) do messages[key] = value end
  for key, value in pairs(opts.messages or {}) do
    if DEFAULT_MESSAGES[key] == nil then
      error("commands.router: unknown message '" .. tostring(key)
        .. "' (there are: cooldown, error)", 2)
    end
    messages[key] = tostring(value)
  end
  return setmetatable({routes = {}, send = opts.send or default_send, messages = messages},
    Router)
end

--- Routes `/path` ("ping", "config set", "mod warn add") to `handler(cmd)`.
--- spec (optional): {options = {...}, cooldown = seconds or "30s", ephemeral = bool}.
function Router:command(path, spec, handler)
  if type(spec) == "function" and handler == nil then spec, handler = {}, spec end
  if spec == nil then spec = {} end
  if type(path) ~= "string" then
    error("router:command: the command name must be a string, got " .. type(path), 2)
  end
  path = path:gsub("^%s*/?", ""):gsub("%s+$", ""):gsub("%s+", " ")
  if path == "" then error("router:command: the command name is empty", 2) end
  if type(spec) ~= "table" then error("router:command: spec must be a table", 2) end
  if type(handler) ~= "function" then
    error("router:command: /" .. path .. " needs a handler function", 2)
  end
  if self.routes[path] then error("router:command: /" .. path .. " is routed twice", 2) end
  local cooldown = nil
  if spec.cooldown ~= nil then
    local seconds, problem = duration.try_parse(spec.cooldown)
    if seconds == nil then error("router:command: cooldown of /" .. path .. ": " .. problem, 2) end
    if seconds > 0 then cooldown = math.max(1, math.ceil(seconds)) end
  end
  self.routes[path] = {
    path = path, options = option_list(spec.options, path), cooldown = cooldown,
    ephemeral = spec.ephemeral and true or false, handler = handler,
  }
  return self
end

--- The handler to put in init.lua's table: INTERACTION_CREATE = router:handler().
function Router:handler()
  return function(ctx, event) return self:dispatch(ctx, event) end
end

---------------------------------------------------------------------------------------------
-- Options

local function option_value(route, declared, given)
  local name, value = declared.name, given.value
  if not ACCEPTS[declared.type][given.type] then
    error(string.format("commands: option '%s' of /%s is declared as %s, but Discord sent a %s; "
      .. "make the declaration match the registered command", name, route.path, declared.type,
      DISCORD_TYPE_NAMES[given.type] or ("type " .. tostring(given.type))), 0)
  end
  if declared.type == "duration" then
    local seconds, problem = duration.try_parse(value)
    if seconds == nil then error(user_error("`" .. name .. "`: " .. problem), 0) end
    value = seconds
  elseif declared.type == "integer" then
    value = math.tointeger(value) or value
  end
  local size, show = value, tostring
  if declared.type == "string" then size = utf8.len(value) or #value end
  if declared.type == "duration" then show = duration.format end
  local unit = declared.type == "string" and " characters" or ""
  if declared.min ~= nil and size < declared.min then
    error(user_error("`" .. name .. "` must be at least " .. show(declared.min) .. unit), 0)
  end
  if declared.max ~= nil and size > declared.max then
    error(user_error("`" .. name .. "` must be at most " .. show(declared.max) .. unit), 0)
  end
  return value
end

local function read_options(route, given_options)
  local args, given = {}, {}
  if present(given_options) then
    for _, option in ipairs(given_options) do given[option.name] = option end
  end
  for _, declared in ipairs(route.options) do
    local option = given[declared.name]
    if option ~= nil then
      args[declared.name] = option_value(route, declared, option)
      given[declared.name] = nil
    elseif declared.default ~= nil then
      args[declared.name] = declared.default
    elseif declared.required then
      error(user_error("`" .. declared.name .. "` is required"), 0)
    end
  end
  -- Options the route did not declare still arrive, as Discord typed them.
  for name, option in pairs(given) do
    args[name] = option.type == 4 and (math.tointeger(option.value) or option.value)
      or option.value
  end
  return args
end

---------------------------------------------------------------------------------------------
-- One invocation

local Command = {}
Command.__index = Command

local function message_args(cmd, message, ephemeral)
  local args
  if type(message) == "string" or type(message) == "number" then
    args = {content = tostring(message)}
  elseif type(message) == "table" then
    args = {}
    for key, value in pairs(message) do args[key] = value end
  else
    error("cmd:reply: expected a string or a table {content=, embeds=, ephemeral=}, got "
      .. type(message), 3)
  end
  if ephemeral then args.ephemeral = true end
  if args.ephemeral == nil and cmd.route.ephemeral then args.ephemeral = true end
  args.interaction = cmd.interaction
  return args
end

--- Answers the command (the first answer responds, later ones follow up).
function Command:reply(message)
  local args = message_args(self, message, false)
  local call = self.replied and "followup" or "respond"
  local result = self.router.send(self.ctx, call, args)
  self.replied = true
  return result
end

--- Answers so that only the user who ran the command sees it.
function Command:reply_ephemeral(message)
  local args = message_args(self, message, true)
  local call = self.replied and "followup" or "respond"
  local result = self.router.send(self.ctx, call, args)
  self.replied = true
  return result
end

--- Stops the command and answers the user (only them) with `message`.
function Command:fail(message)
  error(setmetatable({message = tostring(message)}, UserError), 2)
end

local function find_route(routes, path)
  local rest = nil
  while true do
    local route = routes[path]
    if route then return route, rest end
    local parent, last = path:match("^(.*) (%S+)$")
    if parent == nil then return nil end
    rest = rest and (last .. " " .. rest) or last
    path = parent
  end
end

local function invoker(interaction)
  local member = present(interaction.member) and interaction.member or nil
  local user = member and member.user or interaction.user
  if not present(user) then user = {} end
  return user, member
end

--- Runs the command of an INTERACTION_CREATE event; returns the routed path ("config set"),
--- or nil when the event is not an application command this router knows.
function Router:dispatch(ctx, event)
  local interaction = type(event) == "table" and event.data
  if type(interaction) ~= "table" or interaction.type ~= APPLICATION_COMMAND then return nil end
  local data = interaction.data
  if not present(data) or type(data.name) ~= "string" then return nil end
  local path, options = data.name, data.options
  -- A subcommand group holds subcommands; a subcommand holds the options.
  for _ = 1, 2 do
    local first = present(options) and options[1]
    if first and (first.type == SUBCOMMAND or first.type == SUBCOMMAND_GROUP) then
      path, options = path .. " " .. first.name, first.options
    else
      break
    end
  end
  local route, rest = find_route(self.routes, path)
  if route == nil then return nil end
  local user, member = invoker(interaction)
  local cmd = setmetatable({
    ctx = ctx, event = event, interaction = interaction, router = self, route = route,
    name = route.path, path = path, subcommand = rest, args = {},
    user = user, user_id = user.id, member = member,
    guild_id = present(interaction.guild_id) and interaction.guild_id or nil,
    channel_id = present(interaction.channel_id) and interaction.channel_id or nil,
    locale = interaction.locale,
    resolved = present(data.resolved) and data.resolved or {},
    replied = false,
  }, Command)
  local command_text = "/" .. route.path

  local cooldown_key = nil
  if route.cooldown and cmd.user_id then
    cooldown_key = "cooldown:" .. route.path .. ":" .. cmd.user_id
    local record = ctx.kv.record(cooldown_key, {scope = commands.COOLDOWN_SCOPE})
    if record ~= nil then
      local now = event.at or os.time()
      local wait = math.max(1, math.ceil((record.expires_at or now) - now))
      cmd:reply_ephemeral(fill(self.messages.cooldown,
        {command = command_text, wait = duration.format(wait)}))
      return route.path
    end
  end

  local ok, result = pcall(function()
    cmd.args = read_options(route, options)
    return route.handler(cmd)
  end)
  if not ok then
    if getmetatable(result) == UserError then
      cmd:reply_ephemeral(result.message)
      return route.path
    end
    -- A bug: tell the user, then fail the run so it is logged and its writes roll back.
    pcall(cmd.reply_ephemeral, cmd, fill(self.messages.error, {command = command_text}))
    error(result, 0)
  end
  if result ~= nil and not cmd.replied then
    cmd:reply(result)
  elseif not cmd.replied and ctx.log then
    ctx.log("warn", command_text .. " returned without replying; Discord shows the user "
      .. "\"The application did not respond\"")
  end
  if cooldown_key then
    ctx.kv.set(cooldown_key, true, {scope = commands.COOLDOWN_SCOPE, ttl = route.cooldown})
  end
  return route.path
end

return commands
