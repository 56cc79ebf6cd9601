-- The trusted kernel of one tenant VM.
--
-- Runs once in a fresh Lua 5.4 state with the full standard library, builds the restricted
-- environment that templates see, and returns the kernel table that Python drives. Nothing in
-- here is reachable from a template: templates only ever see the tables built below.
--
-- Arguments from Python (each hidden in a closure, never handed to a template):
--   bridge.clock()                 CPU seconds of the calling OS thread
--   bridge.json_decode(s)          -> answer
--   bridge.log(level, template, message)
--   bridge.running(state)          a run's step starts: `state` is its coroutine's address
--                                  (config.lazy_hook only; see new_run_thread)
--   bridge.answer_now(family, op, args) -> {ok, value, limit} (a host answer) or nil
-- answer_now is the host answering a host call at once, inside the step (no yield); nil
-- means the call leaves as a host request. It never raises either.
--   bridge.library_source(name)    -> answer: the source of @moonshard/<name>
--   bridge.kernel_part(name)       -> answer: the compiled kernel part <name> (see part())
-- Every bridge function except the clock and running answers (true, {value}), (false, {message}) or
-- (nil, limit kind) and never raises; call_python turns anything else into a plain message.
-- Values come boxed in a table the host built with the memory limit lifted: handing over a
-- table allocates nothing, so running out of memory can never happen inside lupa's C code.
--   config.tenant_kind, config.tenant_id, config.hook_count, config.pattern_steps,
--   config.log_line_bytes, config.log_lines_per_run, config.load_bytes,
--   config.json_encode_bytes, config.json_max_depth, config.lazy_hook
--   config.libraries               the names of the @moonshard/<name> libraries

local bridge, config = ...

local real_load = load
local real_pcall, real_xpcall, real_error = pcall, xpcall, error
local real_setmetatable, real_getmetatable, real_rawset = setmetatable, getmetatable, rawset
local real_type, real_tostring, real_select = type, tostring, select
local real_rawequal, real_rawget, real_rawlen, real_next = rawequal, rawget, rawlen, next
local math_type, math_huge, maxinteger = math.type, math.huge, math.maxinteger
local real_create, real_resume, real_yield = coroutine.create, coroutine.resume, coroutine.yield
local real_status, real_close = coroutine.status, coroutine.close
local real_running, real_isyieldable = coroutine.running, coroutine.isyieldable
local sethook = debug.sethook
local debug_getmetatable = debug.getmetatable
local real_find, real_match, real_gmatch, real_gsub = string.find, string.match, string.gmatch, string.gsub
local real_sub, real_byte, real_char, real_format = string.sub, string.byte, string.char, string.format
local real_concat, real_unpack, real_pack = table.concat, table.unpack, table.pack
local real_insert, real_remove, real_move = table.insert, table.remove, table.move
local real_rep = string.rep
local utf8_len = utf8.len
local huge = math_huge
local getinfo = debug.getinfo
local clock = bridge.clock
local py_json_decode, py_log = bridge.json_decode, bridge.log
local py_answer_now = bridge.answer_now
local py_library_source, py_kernel_part = bridge.library_source, bridge.kernel_part

local TENANT_KIND, TENANT_ID = config.tenant_kind, config.tenant_id
local HOOK_COUNT = config.hook_count
local LAZY_HOOK = config.lazy_hook
local py_running = bridge.running
local PATTERN_STEPS = config.pattern_steps
local LOG_LINE_BYTES = config.log_line_bytes
local LOG_LINES_PER_RUN = config.log_lines_per_run
local MEMORY_ERROR = "not enough memory"
local LIMIT_MESSAGES = {
  cpu = "cpu time limit exceeded",
  memory = "memory limit exceeded",
}

-- A host request travels up through any user coroutines tagged with this private table.
-- It is compared with rawequal only: no template value, metamethod or not, can pass for it.
local HOST = {}

-- Python functions are lupa userdata sharing one metatable. None is ever handed to a
-- template; if one ever were, this keeps its metatable out of reach (defence in depth).
do
  local python_meta = debug_getmetatable(clock)
  if python_meta then python_meta.__metatable = "locked" end
end

-- Estimated cost of one unit of work that C code does where no hook fires.
local SECONDS_PER_BYTE = 2e-9
local SECONDS_PER_ELEMENT = 1e-8
-- Work below this many seconds is not worth reading the clock for.
local CHARGE_THRESHOLD = 1e-4
-- load() compiles at most this much text at once (the size of a template's source).
local LOAD_BYTES = config.load_bytes
local JSON_ENCODE_BYTES = config.json_encode_bytes
local JSON_MAX_DEPTH = config.json_max_depth

---------------------------------------------------------------------------------------------
-- The current handler run: one at a time per VM (a tenant's events run one after another).

local current = nil      -- {deadline = number, tripped = nil | "cpu" | "memory", ...}

-- A frame of the template's own code (its files, or text it load()ed); not the kernel, not C.
local function is_template_frame(info)
  local first = real_sub(info.source, 1, 1)
  return (first == "@" or first == "=") and info.currentline > 0
end

-- "file:line: " of the innermost template frame at or above `level` of `co` (or of the
-- running thread), skipping the kernel's own frames; "" when there is none.
local function template_position(level, co)
  for depth = level, level + 40 do
    local info
    if co then info = getinfo(co, depth, "Sl") else info = getinfo(depth, "Sl") end
    if info == nil then break end
    if is_template_frame(info) then
      return real_sub(info.source, 2) .. ":" .. info.currentline .. ": "
    end
  end
  return ""
end

-- A traceback of the template's own frames: the kernel's frames and C functions are left out.
local function template_traceback(co, message)
  local lines = {message, "stack traceback:"}
  for depth = 0, 60 do
    local info = getinfo(co, depth, "Sln")
    if info == nil then break end
    if is_template_frame(info) then
      local where = real_sub(info.source, 2) .. ":" .. info.currentline .. ": in "
      if info.name then
        where = where .. "function '" .. info.name .. "'"
      elseif info.what == "main" then
        where = where .. "the file's main chunk"
      else
        where = where .. "a function"
      end
      lines[#lines + 1] = "\t" .. where
    end
  end
  return real_concat(lines, "\n")
end

local hook_ref = {}  -- {hook}: trip is defined before the hook it sets

local function limit_message(run)
  return (run.position or "") .. LIMIT_MESSAGES[run.tripped]
end

-- Marks the current run as over a limit, remembering the template line that was running.
local function trip(kind)
  local run = current
  if run then
    if not run.tripped then
      run.tripped = kind
      run.position = template_position(3)
      -- From now on every tick raises again (see hook), so pcall cannot swallow the limit.
      if LAZY_HOOK then sethook(run.co, hook_ref[1], "", HOOK_COUNT) end
    end
    real_error(limit_message(run), 0)
  end
  real_error(LIMIT_MESSAGES[kind], 0)
end

-- Once a limit has tripped, every later tick raises again, so pcall cannot swallow it.
local function hook()
  local run = current
  if run == nil then return end
  if run.tripped then real_error(limit_message(run), 0) end
  if clock() > run.deadline then trip("cpu") end
end
hook_ref[1] = hook

local function check_tripped()
  local run = current
  if run and run.tripped then real_error(limit_message(run), 0) end
end

-- Checks, before a C function runs, that its estimated work fits in the run's CPU budget.
local function charge(seconds)
  local run = current
  if run and seconds > CHARGE_THRESHOLD and clock() + seconds > run.deadline then
    trip("cpu")
  end
end

-- Calls a bridge function. Its answer (see the header) becomes a value, a plain error at
-- the caller's level, or a broken limit; an error raised around the call (lupa failing to
-- convert an argument, memory running out while it returns) never passes on as it is.
local function python_answer(what, called, ok, value)
  if not called then
    if real_rawequal(ok, MEMORY_ERROR) then trip("memory") end
    check_tripped()
    real_error(template_position(2) .. what .. ": the host could not take this value", 0)
  end
  if ok == nil then trip(value) end
  if not ok then real_error(template_position(2) .. what .. ": " .. real_tostring(value[1]), 0) end
  return value and value[1]
end

local function call_python(fn, what, ...)
  return python_answer(what, real_pcall(fn, ...))
end

-- A caught error that is really a broken limit is raised again.
local function rethrow_limits(ok, ...)
  if not ok then
    local err = ...
    if real_rawequal(err, MEMORY_ERROR) then trip("memory") end
    check_tripped()
  end
  return ok, ...
end

local function new_thread(fn)
  local co = real_create(fn)
  sethook(co, hook, "", HOOK_COUNT)
  return co
end

-- A run's own coroutine. With config.lazy_hook its hook is registered but not set: a count
-- hook slows every instruction while set, so the host's CPU alarm sets it (from a signal
-- handler on the Lua thread) only when the step's budget is close to spent, and trip sets it
-- at once. Coroutines a template makes (new_thread) always carry the hook: the alarm arms only
-- the run's own. Without lazy_hook, the hook is set from the start.
local function new_run_thread(fn)
  local co = real_create(fn)
  if LAZY_HOOK then
    sethook(co, hook, "", 0)
    return co, real_format("%p", co)
  end
  sethook(co, hook, "", HOOK_COUNT)
  return co, nil
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
    -- The iterator hides `contents`: pairs(proxy) gives (iterator, proxy, nil) only.
    __pairs = function(self)
      return function(_, key) return real_next(contents, key) end, self, nil
    end,
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
-- string, table and json are kernel parts (sandbox/lua/parts/), built in a VM the first time
-- a template touches them: see "Kernel parts" below.

-- Method calls on strings ("x"):upper() go through the shared string metatable.
local string_meta = debug_getmetatable("")
string_meta.__metatable = false

---------------------------------------------------------------------------------------------
-- Text helpers for logs and errors.

-- Always valid UTF-8 (a cut never splits a character), at most LOG_LINE_BYTES long.
local function to_text(s)
  s = real_tostring(s)
  if #s > LOG_LINE_BYTES then
    s = real_sub(s, 1, LOG_LINE_BYTES)
    -- At most three bytes of a cut character remain at the end.
    for _ = 1, 3 do
      if utf8_len(s) ~= nil then break end
      s = real_sub(s, 1, -2)
    end
    s = s .. "... (truncated)"
  end
  if utf8_len(s) == nil then s = real_gsub(s, "[\128-\255]", "?") end
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
-- The metatable that marks an empty table as a JSON object. Guarded: getmetatable gives the
-- string "json.object", so no template can change it (a __gc on it would mark every object).
local object_marker = {__metatable = "json.object"}

-- Raw comparisons only: Python calls it outside any run, where no template code may run.
local function empty_kind(t)
  if real_rawequal(t, null) then return "null" end
  if real_rawequal(debug_getmetatable(t), object_marker) then return "object" end
  return "array"
end

-- Linear: each table is walked once, so tables that share children cost nothing extra.
local function find_cycle(root)
  local on_path, done = {}, {}
  local function walk(t)
    if on_path[t] then return true end
    if done[t] then return false end
    on_path[t] = true
    for _, v in real_next, t do
      if real_type(v) == "table" and walk(v) then return true end
    end
    on_path[t] = nil
    done[t] = true
    return false
  end
  return walk(root)
end

-- An empty table encodes as [] unless marked as an object.
local function json_object(t)
  if t == nil then t = {} end
  if real_type(t) ~= "table" then
    real_error("json.object: expected a table, got " .. real_type(t), 2)
  end
  if real_getmetatable(t) == nil then real_setmetatable(t, object_marker) end
  return t
end


-- How Python tells an empty object from an empty array and from json.null.

---------------------------------------------------------------------------------------------
-- Coroutines: each gets the hook, and host requests pass through them to the driver.

local function pass_host_requests(co, ...)
  local r = real_pack(real_resume(co, ...))
  while r[1] and real_rawequal(r[2], HOST) and real_status(co) == "suspended" do
    r = real_pack(real_resume(co, real_yield(HOST, r[3], r[4], r[5])))
  end
  if not r[1] and real_rawequal(r[2], MEMORY_ERROR) then trip("memory") end
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
    if real_rawequal(err, MEMORY_ERROR) or (current and current.tripped) then return err end
    return handler(err)
  end
  return rethrow_limits(real_xpcall(fn, guarded_handler, ...))
end

local function safe_collectgarbage(opt)
  if opt == "count" then return collectgarbage("count") end
  real_error("collectgarbage: only collectgarbage(\"count\") is available in templates", 2)
end

---------------------------------------------------------------------------------------------
-- Kernel parts: string, table and json are built the first time a template touches them.
-- Their code stays in the host until then, so a VM holds only what its templates use. A part
-- is trusted kernel code: a binary chunk the host compiled from the package's own source,
-- loaded in binary here only (templates' load stays text-only). Building one allocates and
-- runs inside the touching template's run, under its limits; a part whose build broke a
-- limit is not kept, and the next touch builds it again. Templates see no difference: the
-- shared BASE (never handed to a template) gains the table; their own globals never do.

local built_parts = {}   -- part name -> its frozen table (the library loader: a function)
local BASE   -- the shared read-only globals, made below
-- The @moonshard/<name> libraries; their sources stay in the host until one is required.
local LIBRARY_NAMES = {}
for _, name in ipairs(config.libraries or {}) do LIBRARY_NAMES[name] = true end

local function part(name)
  local value = built_parts[name]
  if value ~= nil then return value end
  local chunk = call_python(py_kernel_part, "the sandbox", name)
  local fn, err = real_load(chunk, "=kernel", "b")
  if not fn then
    if real_rawequal(err, MEMORY_ERROR) then trip("memory") end
    real_error(err, 0)
  end
  value = fn({
    charge = charge, copy = copy, freeze = freeze, trip = trip, check_tripped = check_tripped,
    debug_getmetatable = debug_getmetatable,
    call_python = call_python, template_position = template_position,
    py_json_decode = py_json_decode, null = null, empty_kind = empty_kind,
    find_cycle = find_cycle, json_object = json_object, MEMORY_ERROR = MEMORY_ERROR,
    PATTERN_STEPS = PATTERN_STEPS, SECONDS_PER_BYTE = SECONDS_PER_BYTE,
    SECONDS_PER_ELEMENT = SECONDS_PER_ELEMENT, JSON_ENCODE_BYTES = JSON_ENCODE_BYTES,
    JSON_MAX_DEPTH = JSON_MAX_DEPTH, BASE = BASE, frozen = frozen, part = part,
    LIBRARY_NAMES = LIBRARY_NAMES, py_library_source = py_library_source,
  })
  built_parts[name] = value
  if name == "string" then string_meta.__index = value end
  return value
end

-- Until the string part exists, a string method builds it.
string_meta.__index = function(_, key) return part("string")[key] end

local PARTS = {string = true, table = true, json = true}

local base = {
  assert = assert, error = real_error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = safe_pcall, xpcall = safe_xpcall, rawequal = rawequal, rawget = rawget,
  rawlen = rawlen, rawset = safe_rawset, select = real_select,
  setmetatable = safe_setmetatable, getmetatable = real_getmetatable,
  tonumber = tonumber, tostring = real_tostring, type = real_type, _VERSION = _VERSION,
  collectgarbage = safe_collectgarbage,
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
}
BASE = real_setmetatable(base, {
  __index = function(_, key)
    if PARTS[key] then
      local value = part(key)
      real_rawset(base, key, value)
      return value
    end
    local why = FORBIDDEN[key]
    if why then real_error(real_tostring(key) .. " is not available in templates: " .. why, 2) end
  end,
  __newindex = function() real_error("the shared globals are read-only", 2) end,
  __metatable = false,
})
frozen[BASE] = true


-- At most LOG_LINES_PER_RUN lines per handler run reach the log; one more line says so.
local function log_line(level, template, text)
  local run = current
  if run then
    run.lines = (run.lines or 0) + 1
    if run.lines > LOG_LINES_PER_RUN then
      if run.lines == LOG_LINES_PER_RUN + 1 then
        call_python(py_log, "print", "warn", template, "log limit of " .. LOG_LINES_PER_RUN
          .. " lines per handler run reached; later lines of this run are dropped")
      end
      return
    end
  end
  call_python(py_log, "print", level, template, text)
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
    if #chunk > LOAD_BYTES then
      return nil, "load: the text is larger than " .. LOAD_BYTES .. " bytes"
    end
    -- The parser runs in C: its work is charged before it starts.
    charge(#chunk * 50 * SECONDS_PER_BYTE)
    local name = chunkname and ("=" .. real_tostring(chunkname)) or "=(load)"
    return real_load(chunk, name, "t", chunk_env or env)
  end
  env.require = function(modname)
    if real_type(modname) ~= "string" then
      real_error("bad argument #1 to 'require' (string expected, got " .. real_type(modname) .. ")", 2)
    end
    local lib = real_match(modname, "^@moonshard/(.+)$")
    if lib then
      local found
      if lib == "json" then
        found = part("json")
      elseif LIBRARY_NAMES[lib] then
        found = part("libraries")(lib, modules)
      end
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

-- The host answers (true, value), (false, message), or (false, nil, limit kind) when the
-- answer could not be given within a limit (a value too big for the VM's memory, say).
local function host_call(family, op, ...)
  check_tripped()
  if not real_isyieldable() then
    real_error("ctx." .. family .. "." .. op .. " can only be called while a handler runs", 2)
  end
  local args = real_pack(...)
  local ok, value, limit
  -- The host may answer at once, on this thread; otherwise the request goes up to the driver.
  local called, answer = real_pcall(py_answer_now, family, op, args)
  if called and answer ~= nil then
    ok, value, limit = answer[1], answer[2], answer[3]
  else
    if not called and real_rawequal(answer, MEMORY_ERROR) then trip("memory") end
    ok, value, limit = real_yield(HOST, family, op, args)
  end
  if limit then trip(limit) end
  check_tripped()
  if not ok then real_error(template_position(3) .. real_tostring(value), 0) end
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
  "get", "record", "set", "delete", "incr", "expire", "find", "count", "top", "rank", "batch",
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
      return text, file or path, line
    end
  end
  return nil
end

local function start_run(fn, ...)
  next_run_id = next_run_id + 1
  local co, address = new_run_thread(fn)
  local run = {co = co, address = address, args = real_pack(...), deadline = huge,
               started = false}
  runs[next_run_id] = run
  return next_run_id
end

-- Runs init.lua as a run (with limits); its result is the sorted handler names.
function kernel.start_load(box)
  local name, files = box[1], box[2]
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
        real_error("the handler for '" .. key .. "' is a " .. real_type(value)
          .. ", not a function", 0)
      end
      names[#names + 1] = key
    end
    table.sort(names)
    templates[name] = {env = env, handlers = handlers}
    return names
  end)
end

function kernel.drop_template(box)
  templates[box[1]] = nil
end

-- Builds ctx and event afresh for every run, so no run can change what another sees.
-- box: {template name, version, event name, event id, at, author, data (nil: none)}
function kernel.start_handler(box)
  local name, version, event_name, event_id = box[1], box[2], box[3], box[4]
  local at, author, data = box[5], box[6], box[7]
  local t = templates[name]
  local handler = t and rawget(t.handlers, event_name)
  if real_type(handler) ~= "function" then return nil end
  -- An event without data gets an empty object (made here: one call into Lua fewer).
  if data == nil then data = json_object() end
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

-- Resumes a run until it finishes or needs the host. Returns the status and, when the run
-- finished with a number, a boolean or nil, that value ("value" status: nothing to fetch).
-- Otherwise the outcome is:
--   {status = "done", value = v} | {status = "host", family, op, args}
--   {status = "error", message, traceback} | {status = "limit", kind, message, traceback}
-- `answer` (nil for the first step) is the host's {ok, value, limit}; see host_call.
-- The outcome of the last step; Python fetches it with kernel.outcome, with the limit lifted
-- (lupa's reference to a returned table is an allocation outside any protected call; a
-- number or a boolean is not, so those come back at once).
local last_outcome = nil
local last_stepped = nil
local function finish_step(status, outcome)
  last_outcome = outcome
  return status, nil
end

local function finish_done(value)
  local kind = real_type(value)
  if kind == "number" or kind == "boolean" or kind == "nil" then
    last_outcome = nil
    return "value", value
  end
  return finish_step("done", {status = "done", value = value})
end

function kernel.step(id, deadline, answer)
  local run = runs[id]
  if run == nil then return finish_step("error", {status = "error", message = "no such run"}) end
  run.deadline = deadline
  current = run
  if LAZY_HOOK then
    -- Not watched by the alarm (it could not take the step): the hook is set now.
    if not py_running(run.address) then sethook(run.co, hook, "", HOOK_COUNT) end
    -- Kept until the next step of this VM: the host's alarm may still name this coroutine
    -- until Python hears the step ended, so it must not be collected before.
    last_stepped = run.co
  end
  local r
  if run.started then
    r = real_pack(real_resume(run.co, answer[1], answer[2], answer[3]))
  else
    run.started = true
    r = real_pack(real_resume(run.co, real_unpack(run.args, 1, run.args.n)))
  end
  current = nil
  run.deadline = huge
  local co = run.co
  if real_status(co) == "dead" then
    runs[id] = nil
    if not r[1] and real_rawequal(r[2], MEMORY_ERROR) and not run.tripped then
      run.tripped = "memory"
      run.position = template_position(0, co)
    end
    if run.tripped then
      local message = limit_message(run)
      return finish_step("limit", {status = "limit", kind = run.tripped, message = message,
              traceback = template_traceback(co, message)})
    end
    if r[1] then return finish_done(r[2]) end
    local message = error_text(r[2])
    return finish_step("error", {status = "error", message = message,
                                 traceback = template_traceback(co, message)})
  end
  if r[1] and real_rawequal(r[2], HOST) then
    return finish_step("host", {status = "host", family = r[3], op = r[4], args = r[5]})
  end
  runs[id] = nil
  return finish_step("error", {status = "error",
          message = "coroutine.yield was called outside a coroutine: a handler cannot yield",
          traceback = template_traceback(co, "coroutine.yield outside a coroutine")})
end

-- Starts a handler run and takes its first step: one call into Lua for the common case.
-- Returns "missing" when the template has no such handler, else the run id and the step's
-- status and value (see kernel.step).
function kernel.begin_handler(box, deadline)
  local id = kernel.start_handler(box)
  if id == nil then return nil, "missing", nil end
  return id, kernel.step(id, deadline, nil)
end

function kernel.outcome()
  local outcome = last_outcome
  last_outcome = nil
  return outcome
end

function kernel.cancel(id)
  runs[id] = nil
end

function kernel.collect()
  collectgarbage()
end

kernel.null = null
kernel.empty_kind = empty_kind
kernel.find_cycle = find_cycle
kernel.object = json_object

-- The kernel holds what it uses of these as locals: dropped from the state's globals and its
-- module cache, an idle VM does not keep them (nor could anything reach them later).
do
  local loaded = debug.getregistry()._LOADED
  for _, name in ipairs({"io", "package", "debug", "python"}) do
    loaded[name] = nil
    _G[name] = nil
  end
  dofile, loadfile, require, print, warn = nil, nil, nil, nil, nil
end

return kernel
