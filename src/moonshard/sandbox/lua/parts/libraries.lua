-- Kernel part: the loader of the built-in @moonshard/<name> libraries. Built in a VM the first
-- time a template requires one.

local K = ...
local BASE, frozen, part, LIBRARY_NAMES = K.BASE, K.frozen, K.part, K.LIBRARY_NAMES
local call_python, py_library_source = K.call_python, K.py_library_source
local real_error, real_tostring, real_type, real_pcall, real_load = error, tostring, type, pcall, load
local real_setmetatable, real_rawset, real_rawequal = setmetatable, rawset, rawequal
local real_match = string.match

local LOADING_LIBRARY = {}

-- A library runs in the template's own world: a read-only env on BASE whose require reaches
-- only other built-in libraries, so it is no new route out. `loaded` (the requiring template's
-- module cache) makes it once per template per VM, so templates cannot share its tables.
local function load_library(lib, loaded)
  local key = "@moonshard/" .. lib
  local found = lib == "json" and part("json") or loaded[key]
  if real_rawequal(found, LOADING_LIBRARY) then real_error("circular require of '" .. key .. "'", 3) end
  if found ~= nil or not LIBRARY_NAMES[lib] then return found end
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
  local source = call_python(py_library_source, "require", lib)
  if real_type(source) ~= "string" then return nil end
  local fn, err = real_load(source, "@" .. key .. ".lua", "t", lib_env)
  if not fn then real_error(err, 0) end
  loaded[key] = LOADING_LIBRARY
  local ok, result = real_pcall(fn, key)
  if not ok then loaded[key] = nil; real_error(result, 0) end
  loaded[key] = result
  return result
end

return load_library
