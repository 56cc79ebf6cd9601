-- The trusted kernel of one tenant VM.
--
-- Runs once in a fresh Lua 5.4 state with the full standard library, builds the restricted
-- environment that templates see, and returns the kernel table that Python drives. Nothing in
-- here is reachable from a template: templates only ever see the tables built below.
--
-- Arguments from Python (each hidden in a closure, never handed to a template):
--   bridge.clock()                 CPU seconds of the calling OS thread
--   bridge.json_encode(v)          -> string   (raises on values JSON cannot hold)
--   bridge.json_decode(s)          -> value
--   bridge.log(level, template, message)
--   config.tenant_kind, config.tenant_id, config.hook_count, config.pattern_steps,
--   config.log_line_bytes, config.log_lines_per_run
--   config.libraries               name -> source of each @moonshard/<name> library

local bridge, config = ...

local real_load = load
local real_pcall, real_xpcall, real_error = pcall, xpcall, error
local real_setmetatable, real_getmetatable, real_rawset = setmetatable, getmetatable, rawset
local real_type, real_tostring, real_select = type, tostring, select
local real_create, real_resume, real_yield = coroutine.create, coroutine.resume, coroutine.yield
local real_status, real_close = coroutine.status, coroutine.close
local real_running, real_isyieldable = coroutine.running, coroutine.isyieldable
local sethook, traceback = debug.sethook, debug.traceback
local debug_getmetatable = debug.getmetatable
local real_find, real_match, real_gmatch, real_gsub = string.find, string.match, string.gmatch, string.gsub
local real_sub, real_byte, real_char, real_format = string.sub, string.byte, string.char, string.format
local real_concat, real_unpack, real_pack = table.concat, table.unpack, table.pack
local utf8_len = utf8.len
local huge = math.huge
local clock = bridge.clock
local py_json_encode, py_json_decode, py_log = bridge.json_encode, bridge.json_decode, bridge.log

local TENANT_KIND, TENANT_ID = config.tenant_kind, config.tenant_id
local HOOK_COUNT = config.hook_count
local PATTERN_STEPS = config.pattern_steps
local LOG_LINE_BYTES = config.log_line_bytes
local LOG_LINES_PER_RUN = config.log_lines_per_run
local MEMORY_ERROR = "not enough memory"
local LIMIT_MESSAGES = {
  cpu = "cpu time limit exceeded",
  memory = "memory limit exceeded",
}

-- A host request travels up through any user coroutines tagged with this private value.
local HOST = {}

---------------------------------------------------------------------------------------------
-- The current handler run: one at a time per VM (a tenant's events run one after another).

local current = nil      -- {deadline = number, tripped = nil | "cpu" | "memory"}

local function trip(kind)
  if current then current.tripped = current.tripped or kind end
  real_error(LIMIT_MESSAGES[kind], 0)
end

-- Once a limit has tripped, every later tick raises again, so pcall cannot swallow it.
local function hook()
  local run = current
  if run == nil then return end
  if run.tripped then real_error(LIMIT_MESSAGES[run.tripped], 0) end
  if clock() > run.deadline then trip("cpu") end
end

local function check_tripped()
  local run = current
  if run and run.tripped then real_error(LIMIT_MESSAGES[run.tripped], 0) end
end

-- A caught error that is really a broken limit is raised again.
local function rethrow_limits(ok, ...)
  if not ok then
    local err = ...
    if err == MEMORY_ERROR then trip("memory") end
    check_tripped()
  end
  return ok, ...
end

local function new_thread(fn)
  local co = real_create(fn)
  sethook(co, hook, "", HOOK_COUNT)
  return co
end

---------------------------------------------------------------------------------------------
-- Read-only tables.

local frozen = real_setmetatable({}, {__mode = "k"})

-- `missing` maps names that exist in standard Lua but not here to the reason.
local function freeze(contents, label, missing)
  local proxy = {}
  local index = contents
  if missing then
    index = function(_, key)
      local value = contents[key]
      if value == nil and missing[key] then
        real_error(label .. "." .. real_tostring(key) .. " is not available in templates: "
          .. missing[key], 2)
      end
      return value
    end
  end
  real_setmetatable(proxy, {
    __index = index,
    __newindex = function(_, key)
      real_error("cannot change " .. label .. "." .. real_tostring(key)
        .. ": library tables are read-only", 2)
    end,
    __pairs = function() return next, contents, nil end,
    __len = function() return #contents end,
    __metatable = false,
  })
  frozen[proxy] = true
  return proxy
end

local function copy(source, names)
  local out = {}
  for _, name in ipairs(names) do out[name] = source[name] end
  return out
end

---------------------------------------------------------------------------------------------
-- Pattern guard: Lua's matcher runs in C where no hook fires, and backtracking over several
-- overlapping quantifiers is polynomial in the subject length. Estimate the worst case before
-- matching and refuse what could run for too long.

local class_members = {}  -- item text -> {[byte] = true}

local function members(item)
  local set = class_members[item]
  if set == nil then
    set = {}
    for b = 0, 255 do
      if real_find(real_char(b), "^" .. item) then set[b] = true end
    end
    class_members[item] = set
  end
  return set
end

-- Splits a pattern into items {text, quantifier, kind}.
local function pattern_items(p)
  local items, i, n = {}, 1, #p
  if real_sub(p, 1, 1) == "^" then i = 2 end
  while i <= n do
    local c = real_sub(p, i, i)
    local text, kind
    if c == "(" or c == ")" then
      i = i + 1
    elseif c == "$" and i == n then
      i = i + 1
    else
      if c == "%" then
        local nxt = real_sub(p, i + 1, i + 1)
        if nxt == "b" then
          kind, text, i = "balanced", nil, i + 4
        elseif nxt == "f" then
          local close = real_find(p, "]", i + 4, true) or n
          kind, i = "transparent", close + 1
        elseif real_find(nxt, "^%d") then
          kind, i = "transparent", i + 2
        else
          kind, text, i = "class", real_sub(p, i, i + 1), i + 2
        end
      elseif c == "[" then
        local j = i + 1
        if real_sub(p, j, j) == "^" then j = j + 1 end
        if real_sub(p, j, j) == "]" then j = j + 1 end
        while j <= n and real_sub(p, j, j) ~= "]" do
          if real_sub(p, j, j) == "%" then j = j + 1 end
          j = j + 1
        end
        kind, text, i = "class", real_sub(p, i, j), j + 1
      else
        kind, text, i = "class", (c == "." and "." or "%" .. c), i + 1
        if c ~= "." and real_find(c, "^%w") then text = c end
      end
      local q = real_sub(p, i, i)
      if q == "*" or q == "+" or q == "-" or q == "?" then i = i + 1 else q = "" end
      if kind ~= "transparent" then items[#items + 1] = {text = text, q = q, kind = kind} end
    end
  end
  return items
end

-- The largest number of quantified items that can all consume the same byte in a row.
local function overlap_depth(p)
  local items = pattern_items(p)
  local deepest = 0
  for b = 0, 255 do
    local run = 0
    for _, item in ipairs(items) do
      if item.kind == "balanced" then
        run = run + 1
      else
        local hit = members(item.text)[b]
        if item.q == "*" or item.q == "-" then
          if hit then run = run + 1 end
        elseif item.q == "+" then
          run = hit and run + 1 or 0
        elseif item.q == "" and not hit then
          run = 0
        end
      end
      if run > deepest then deepest = run end
    end
  end
  return deepest
end

local pattern_cache, pattern_cache_size = {}, 0

local function check_pattern(fname, s, p, init)
  if real_type(s) ~= "string" and real_type(s) ~= "number" then return end
  if real_type(p) ~= "string" and real_type(p) ~= "number" then return end
  p = real_tostring(p)
  local depth = pattern_cache[p]
  if depth == nil then
    local ok, result = real_pcall(overlap_depth, p)
    depth = ok and result or 0
    if pattern_cache_size > 512 then pattern_cache, pattern_cache_size = {}, 0 end
    pattern_cache[p], pattern_cache_size = depth, pattern_cache_size + 1
  end
  if depth < 2 then return end
  local length = #real_tostring(s)
  if real_type(init) == "number" then
    if init < 0 then init = length + init + 1 end
    length = length - init + 1
  end
  if length < 1 then return end
  local anchored = real_sub(p, 1, 1) == "^" and fname ~= "gmatch"
  local steps = (length + 1) ^ depth * (anchored and 1 or length + 1)
  if steps > PATTERN_STEPS then
    real_error(real_format("string.%s: pattern %q is too costly for a subject of %d bytes "
      .. "(%d overlapping repetitions could backtrack about %.0e times)",
      fname, #p > 40 and real_sub(p, 1, 40) .. "..." or p, length, depth, steps), 3)
  end
end

local safe_string = copy(string, {
  "byte", "char", "format", "len", "lower", "upper", "rep", "reverse", "sub",
  "pack", "packsize", "unpack",
})
function safe_string.find(s, p, init, plain)
  if not plain then check_pattern("find", s, p, init) end
  return real_find(s, p, init, plain)
end
function safe_string.match(s, p, init)
  check_pattern("match", s, p, init)
  return real_match(s, p, init)
end
function safe_string.gmatch(s, p, init)
  check_pattern("gmatch", s, p, init)
  return real_gmatch(s, p, init)
end
function safe_string.gsub(s, p, repl, n)
  check_pattern("gsub", s, p, nil)
  return real_gsub(s, p, repl, n)
end
local STRING = freeze(safe_string, "string", {
  dump = "templates cannot produce bytecode",
})

-- Method calls on strings ("x"):upper() go through the shared string metatable.
local string_meta = debug_getmetatable("")
string_meta.__index = STRING
string_meta.__metatable = false

---------------------------------------------------------------------------------------------
-- Text helpers for logs and errors.

local function to_text(s)
  s = real_tostring(s)
  if utf8_len(s) == nil then s = real_gsub(s, "[\128-\255]", "?") end
  if #s > LOG_LINE_BYTES then s = real_sub(s, 1, LOG_LINE_BYTES) .. "... (truncated)" end
  return s
end

-- Never runs template code: a table error with __tostring is not called outside its run.
local function error_text(err)
  local t = real_type(err)
  if t == "string" or t == "number" then return to_text(err) end
  if t == "nil" then return "error (nil error value)" end
  return "error (error object is a " .. t .. " value)"
end

---------------------------------------------------------------------------------------------
-- json

local null = freeze({}, "json.null")
local object_marker = {}

local function json_encode(value)
  if real_type(value) == "string" and utf8_len(value) == nil then
    real_error("json.encode: string is not valid UTF-8", 2)
  end
  local ok, result = real_pcall(py_json_encode, value)
  if not ok then real_error("json.encode: " .. real_tostring(result), 2) end
  return result
end

local function json_decode(text)
  if real_type(text) ~= "string" then
    real_error("json.decode: expected a string, got " .. real_type(text), 2)
  end
  if utf8_len(text) == nil then real_error("json.decode: text is not valid UTF-8", 2) end
  local ok, result = real_pcall(py_json_decode, text)
  if not ok then real_error("json.decode: " .. real_tostring(result), 2) end
  return result
end

-- An empty table encodes as [] unless marked as an object.
local function json_object(t)
  t = t or {}
  if real_getmetatable(t) == nil then real_setmetatable(t, object_marker) end
  return t
end

local JSON = freeze({
  encode = json_encode,
  decode = json_decode,
  null = null,
  object = json_object,
  array = function(t) return t or {} end,
}, "json")

-- How Python tells an empty object from an empty array and from json.null.
local function empty_kind(t)
  local mt = real_getmetatable(t)
  if t == null then return "null" end
  if mt == object_marker then return "object" end
  return "array"
end

local function find_cycle(root)
  local on_path = {}
  local function walk(t)
    if on_path[t] then return true end
    on_path[t] = true
    for _, v in next, t do
      if real_type(v) == "table" and walk(v) then return true end
    end
    on_path[t] = nil
    return false
  end
  return walk(root)
end

---------------------------------------------------------------------------------------------
-- Coroutines: each gets the hook, and host requests pass through them to the driver.

local function pass_host_requests(co, ...)
  local r = real_pack(real_resume(co, ...))
  while r[1] and r[2] == HOST and real_status(co) == "suspended" do
    r = real_pack(real_resume(co, real_yield(HOST, r[3], r[4], r[5])))
  end
  if not r[1] and r[2] == MEMORY_ERROR then trip("memory") end
  check_tripped()
  return real_unpack(r, 1, r.n)
end

local function co_wrap(fn)
  local co = new_thread(fn)
  return function(...)
    local r = real_pack(pass_host_requests(co, ...))
    if not r[1] then real_error(r[2], 0) end
    return real_unpack(r, 2, r.n)
  end
end

local COROUTINE = freeze({
  create = function(fn)
    if real_type(fn) ~= "function" then
      real_error("bad argument #1 to 'create' (function expected)", 2)
    end
    return new_thread(fn)
  end,
  wrap = function(fn)
    if real_type(fn) ~= "function" then
      real_error("bad argument #1 to 'wrap' (function expected)", 2)
    end
    return co_wrap(fn)
  end,
  resume = pass_host_requests,
  yield = real_yield,
  status = real_status,
  running = real_running,
  isyieldable = real_isyieldable,
  close = real_close,
}, "coroutine")

---------------------------------------------------------------------------------------------
-- The globals every template starts from.

local FORBIDDEN = {
  io = "there is no file access",
  debug = "the debug library could break the sandbox",
  package = "use require for this template's files",
  loadstring = "use load(text)",
  dofile = "there is no file access",
  loadfile = "there is no file access",
  python = "there is no route to Python",
  warn = "use print or ctx.log",
}

local OS = freeze(copy(os, {"time", "clock", "date", "difftime"}), "os", {
  execute = "no processes", exit = "no processes", getenv = "no environment",
  remove = "no file access", rename = "no file access", tmpname = "no file access",
  setlocale = "the locale is fixed",
})

local function safe_setmetatable(t, mt)
  if frozen[t] then real_error("cannot change the metatable of a library table", 2) end
  if real_type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    real_error("__gc metamethods are not allowed in templates", 2)
  end
  return real_setmetatable(t, mt)
end

local function safe_rawset(t, k, v)
  if frozen[t] then real_error("cannot change a library table: it is read-only", 2) end
  return real_rawset(t, k, v)
end

local function safe_pcall(fn, ...)
  return rethrow_limits(real_pcall(fn, ...))
end

local function safe_xpcall(fn, handler, ...)
  local function guarded_handler(err)
    -- A broken limit skips the template's handler: it must not run more code.
    if err == MEMORY_ERROR or (current and current.tripped) then return err end
    return handler(err)
  end
  return rethrow_limits(real_xpcall(fn, guarded_handler, ...))
end

local function safe_collectgarbage(opt)
  if opt == "count" then return collectgarbage("count") end
  real_error("collectgarbage: only collectgarbage(\"count\") is available in templates", 2)
end

local base = {
  assert = assert, error = real_error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, xpcall = safe_xpcall, rawequal = rawequal, rawget = rawget,
  rawlen = rawlen, rawset = safe_rawset, select = real_select,
  setmetatable = safe_setmetatable, getmetatable = real_getmetatable,
  tonumber = tonumber, tostring = real_tostring, type = real_type, _VERSION = _VERSION,
  collectgarbage = safe_collectgarbage,
  string = STRING, table = freeze(copy(table, {
    "concat", "insert", "move", "pack", "remove", "sort", "unpack",
  }), "table"),
  math = freeze(copy(math, {
    "abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger",
    "min", "mininteger", "modf", "pi", "rad", "random", "randomseed", "sin", "sqrt", "tan",
    "tointeger", "type", "ult", "acos", "asin", "atan",
  }), "math"),
  utf8 = freeze(copy(utf8, {
    "char", "charpattern", "codes", "codepoint", "len", "offset",
  }), "utf8"),
  coroutine = COROUTINE,
  os = OS,
  json = JSON,
}
local BASE = real_setmetatable(base, {
  __index = function(_, key)
    local why = FORBIDDEN[key]
    if why then real_error(real_tostring(key) .. " is not available in templates: " .. why, 2) end
  end,
  __newindex = function() real_error("the shared globals are read-only", 2) end,
  __metatable = false,
})
frozen[BASE] = true

local BUILTIN_LIBRARIES = {json = JSON}
local LIBRARY_SOURCES = config.libraries or {}   -- name -> trusted Lua source of @moonshard/name
local LOADING_LIBRARY = {}

-- A library runs in the template's own world: a read-only env on BASE whose require reaches
-- only other built-in libraries, so it is no new route out. `loaded` (the requiring template's
-- module cache) makes it once per template per VM, so templates cannot share its tables.
local function load_library(lib, loaded)
  local key = "@moonshard/" .. lib
  local found = BUILTIN_LIBRARIES[lib] or loaded[key]
  if found == LOADING_LIBRARY then real_error("circular require of '" .. key .. "'", 3) end
  if found ~= nil or real_type(LIBRARY_SOURCES[lib]) ~= "string" then return found end
  local lib_env = real_setmetatable({}, {__index = BASE, __metatable = false,
    __newindex = function() real_error(key .. ": a library's globals are read-only", 2) end})
  frozen[lib_env] = true
  real_rawset(lib_env, "require", function(name)
    local other = real_type(name) == "string" and real_match(name, "^@moonshard/(.+)$")
    local value = other and load_library(other, loaded)
    if value == nil then
      real_error(key .. ": no built-in library '" .. real_tostring(name) .. "'", 2)
    end
    return value
  end)
  local fn, err = real_load(LIBRARY_SOURCES[lib], "@" .. key .. ".lua", "t", lib_env)
  if not fn then real_error(err, 0) end
  loaded[key] = LOADING_LIBRARY
  local ok, result = real_pcall(fn, key)
  if not ok then loaded[key] = nil; real_error(result, 0) end
  loaded[key] = result
  return result
end

-- At most LOG_LINES_PER_RUN lines per handler run reach the log; one more line says so.
local function log_line(level, template, text)
  local run = current
  if run then
    run.lines = (run.lines or 0) + 1
    if run.lines > LOG_LINES_PER_RUN then
      if run.lines == LOG_LINES_PER_RUN + 1 then
        py_log("warn", template, "log limit of " .. LOG_LINES_PER_RUN
          .. " lines per handler run reached; later lines of this run are dropped")
      end
      return
    end
  end
  py_log(level, template, text)
end

local function join_args(...)
  local n = real_select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = real_tostring((real_select(i, ...))) end
  return real_concat(parts, "\t")
end

local LOG_LEVELS = {debug = true, info = true, warn = true, error = true}

-- Each template gets its own globals; reads fall through to the shared read-only BASE.
local function new_env(template_name, files)
  local env = {}
  local modules = {}
  local LOADING = {}

  env._G = env
  env.print = function(...) log_line("info", template_name, to_text(join_args(...))) end
  env.load = function(chunk, chunkname, mode, chunk_env)
    if real_type(chunk) ~= "string" then
      return nil, "load: only text chunks (strings) can be loaded in templates"
    end
    if mode ~= nil and mode ~= "t" then
      return nil, "load: only text mode \"t\" is available; binary chunks are refused"
    end
    if real_byte(chunk, 1) == 27 then return nil, "load: binary chunks are refused" end
    local name = chunkname and ("=" .. real_tostring(chunkname)) or "=(load)"
    return real_load(chunk, name, "t", chunk_env or env)
  end
  env.require = function(modname)
    if real_type(modname) ~= "string" then
      real_error("bad argument #1 to 'require' (string expected, got " .. real_type(modname) .. ")", 2)
    end
    local lib = real_match(modname, "^@moonshard/(.+)$")
    if lib then
      local found = load_library(lib, modules)
      if not found then real_error("no built-in library '" .. modname .. "'", 2) end
      return found
    end
    local cached = modules[modname]
    if cached == LOADING then real_error("circular require of '" .. modname .. "'", 2) end
    if cached ~= nil then return cached end
    local path = real_gsub(modname, "%.", "/") .. ".lua"
    local source = files[path]
    if source == nil then
      real_error("module '" .. modname .. "' not found: this template has no file " .. path, 2)
    end
    local fn, err = real_load(source, "@" .. path, "t", env)
    if not fn then real_error(err, 0) end
    modules[modname] = LOADING
    local ok, result = real_pcall(fn, modname)
    if not ok then
      modules[modname] = nil
      real_error(result, 0)
    end
    if result == nil then result = true end
    modules[modname] = result
    return result
  end
  return real_setmetatable(env, {__index = BASE, __metatable = false})
end

---------------------------------------------------------------------------------------------
-- Host capabilities as templates see them. Every call leaves the VM as a host request.

local getinfo = debug.getinfo

-- "file:line: " of the nearest template frame (a tail call may have left none).
local function template_position()
  for level = 3, 20 do
    local info = getinfo(level, "Sl")
    if info == nil then break end
    local first = real_sub(info.source, 1, 1)
    if (first == "@" or first == "=") and info.currentline > 0 then
      return real_sub(info.source, 2) .. ":" .. info.currentline .. ": "
    end
  end
  return ""
end

local function host_call(family, op, ...)
  check_tripped()
  if not real_isyieldable() then
    real_error("ctx." .. family .. "." .. op .. " can only be called while a handler runs", 2)
  end
  local ok, value = real_yield(HOST, family, op, real_pack(...))
  check_tripped()
  if not ok then real_error(template_position() .. value, 0) end
  return value
end

local function capability(family, ops)
  local t = {}
  for _, op in ipairs(ops) do
    t[op] = function(...) return host_call(family, op, ...) end
  end
  return freeze(t, "ctx." .. family)
end

local KV = capability("kv", {
  "get", "record", "set", "delete", "incr", "expire", "find", "count", "batch",
})
local EVENTS = capability("events", {"emit", "schedule", "cancel"})
-- The Discord actions are named by the Discord integration; any name reaches the host,
-- which answers with a clear error for actions it does not have.
local DISCORD = real_setmetatable({}, {
  __index = function(_, op)
    if real_type(op) ~= "string" then return nil end
    return function(...) return host_call("discord", op, ...) end
  end,
  __newindex = function() real_error("ctx.discord is read-only", 2) end,
  __metatable = false,
})
frozen[DISCORD] = true

---------------------------------------------------------------------------------------------
-- The kernel: what Python calls.

local templates = {}   -- name -> {env = table, handlers = table}
local runs = {}        -- run id -> {co, args, deadline, tripped, started}
local next_run_id = 0

local kernel = {}

local function parse_error(message)
  local file, line, text = real_match(message, "^([^:]+%.lua):(%d+): (.*)$")
  if file then return file, tonumber(line), text end
  return nil, nil, message
end

-- Compiles every file without running it: nil, or the first {file, line, message}.
function kernel.compile(files)
  for path, source in next, files do
    local fn, err = real_load(source, "@" .. path, "t", {})
    if not fn then
      local file, line, text = parse_error(err)
      return {file = file or path, line = line, message = text}
    end
  end
  return nil
end

local function start_run(fn, ...)
  next_run_id = next_run_id + 1
  local run = {co = new_thread(fn), args = real_pack(...), deadline = huge, started = false}
  runs[next_run_id] = run
  return next_run_id
end

-- Runs init.lua as a run (with limits); its result is the sorted handler names.
function kernel.start_load(name, files)
  local env = new_env(name, files)
  local init = real_load(files["init.lua"], "@init.lua", "t", env)
  return start_run(function()
    local handlers = init("init")
    if real_type(handlers) ~= "table" then
      real_error("init.lua must return a table that maps event names to handler functions, "
        .. "got " .. real_type(handlers), 0)
    end
    local names = {}
    for key, value in next, handlers do
      if real_type(key) ~= "string" then
        real_error("init.lua returned a table with a " .. real_type(key)
          .. " key; keys must be event names", 0)
      end
      if real_type(value) ~= "function" then
        real_error("init.lua: handler for '" .. key .. "' is a " .. real_type(value)
          .. ", not a function", 0)
      end
      names[#names + 1] = key
    end
    table.sort(names)
    templates[name] = {env = env, handlers = handlers}
    return names
  end)
end

function kernel.drop_template(name)
  templates[name] = nil
end

-- Builds ctx and event afresh for every run, so no run can change what another sees.
function kernel.start_handler(name, version, event_name, event_id, at, author, data)
  local t = templates[name]
  local handler = t and rawget(t.handlers, event_name)
  if real_type(handler) ~= "function" then return nil end
  local ctx = {
    tenant = {kind = TENANT_KIND, id = TENANT_ID},
    template = {name = name, version = version},
    kv = KV,
    events = EVENTS,
    discord = DISCORD,
    log = function(level, ...)
      if not LOG_LEVELS[level] then
        real_error("ctx.log: level must be one of debug, info, warn, error", 2)
      end
      log_line(level, name, to_text(join_args(...)))
    end,
  }
  local event = {
    name = event_name, id = event_id, at = at, author = author, data = data,
    tenant = {kind = TENANT_KIND, id = TENANT_ID},
  }
  return start_run(handler, ctx, event)
end

-- Resumes a run until it finishes or needs the host. Returns a table:
--   {status = "done", value = v} | {status = "host", family, op, args}
--   {status = "error", message, traceback} | {status = "limit", kind, traceback}
function kernel.step(id, deadline, ok, answer)
  local run = runs[id]
  if run == nil then return {status = "error", message = "no such run"} end
  run.deadline = deadline
  current = run
  local r
  if run.started then
    r = real_pack(real_resume(run.co, ok, answer))
  else
    run.started = true
    r = real_pack(real_resume(run.co, real_unpack(run.args, 1, run.args.n)))
  end
  current = nil
  run.deadline = huge
  local co = run.co
  if real_status(co) == "dead" then
    runs[id] = nil
    if not r[1] and r[2] == MEMORY_ERROR then run.tripped = run.tripped or "memory" end
    if run.tripped then
      return {status = "limit", kind = run.tripped,
              traceback = traceback(co, LIMIT_MESSAGES[run.tripped])}
    end
    if r[1] then return {status = "done", value = r[2]} end
    local message = error_text(r[2])
    return {status = "error", message = message, traceback = traceback(co, message)}
  end
  if r[2] == HOST then
    return {status = "host", family = r[3], op = r[4], args = r[5]}
  end
  runs[id] = nil
  return {status = "error",
          message = "coroutine.yield was called outside a coroutine: a handler cannot yield",
          traceback = traceback(co)}
end

function kernel.cancel(id)
  runs[id] = nil
end

kernel.null = null
kernel.empty_kind = empty_kind
kernel.find_cycle = find_cycle
kernel.object = json_object

return kernel
