-- Kernel part: json.encode and json.decode (json.null, json.object and the door's helpers
-- stay in the kernel). Built in a VM the first time a template touches `json`.

local K = ...
local trip, check_tripped, call_python = K.trip, K.check_tripped, K.call_python
local template_position, freeze, py_json_decode = K.template_position, K.freeze, K.py_json_decode
local null, empty_kind, find_cycle, json_object = K.null, K.empty_kind, K.find_cycle, K.json_object
local MEMORY_ERROR, JSON_ENCODE_BYTES, JSON_MAX_DEPTH = K.MEMORY_ERROR, K.JSON_ENCODE_BYTES, K.JSON_MAX_DEPTH
local real_error, real_tostring, real_type, real_pcall = error, tostring, type, pcall
local real_rawequal, real_rawget, real_rawlen, real_next = rawequal, rawget, rawlen, next
local real_gsub, real_format, real_byte, real_concat = string.gsub, string.format, string.byte, table.concat
local math_type, math_floor, huge, tonumber = math.type, math.floor, math.huge, tonumber
local utf8_len = utf8.len

-- json.encode runs here, in Lua, inside the template's run: its CPU is hooked, its memory
-- limited, and no table of the template is handed to Python (lupa's reference to one would
-- allocate inside its own C code, where running out of memory cannot be caught). Tables are
-- read raw; the output is at most JSON_ENCODE_BYTES long.
local JSON_ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
  ["\r"] = "\\r", ["\t"] = "\\t",
}
local function json_escape(c)
  return JSON_ESCAPES[c] or real_format("\\u%04x", real_byte(c))
end

local function encode_number(x)
  if x ~= x or x == huge or x == -huge then
    real_error("numbers must be finite (no NaN or infinity)", 0)
  end
  if math_type(x) == "integer" then return real_format("%d", x) end
  if x == math_floor(x) and x >= -2^53 and x <= 2^53 then return real_format("%.1f", x) end
  local text = real_format("%.15g", x)
  if tonumber(text) ~= x then text = real_format("%.17g", x) end
  return text
end

local function key_error(key)
  local t = real_type(key)
  if t == "string" or t == "number" then
    real_error("a table mixes array items and string keys (key " .. real_tostring(key)
      .. "); use one or the other", 0)
  end
  real_error("table keys must be strings, got a " .. t .. " key", 0)
end

local function json_encode_value(value, budget)
  local parts, n, size = {}, 0, 0
  local function emit(text)
    n = n + 1
    parts[n] = text
    size = size + #text
    if size > budget then
      real_error("value too large: the encoded text would be longer than " .. budget
        .. " bytes", 0)
    end
  end
  local function encode(v, depth)
    local t = real_type(v)
    if t == "string" then
      if utf8_len(v) == nil then real_error("a string is not valid UTF-8", 0) end
      emit('"' .. real_gsub(v, '[%c"\\]', json_escape) .. '"')
    elseif t == "number" then emit(encode_number(v))
    elseif t == "boolean" then emit(v and "true" or "false")
    elseif t == "nil" then emit("null")
    elseif t ~= "table" then
      real_error("a " .. t .. " cannot be converted to JSON", 0)
    elseif depth >= JSON_MAX_DEPTH then
      if find_cycle(value) then real_error("the table contains a cycle (it refers to itself)", 0) end
      real_error("tables nest deeper than " .. JSON_MAX_DEPTH .. " levels", 0)
    else
      local first = real_next(v)
      if first == nil then
        local kind = empty_kind(v)
        emit(kind == "null" and "null" or kind == "object" and "{}" or "[]")
      elseif real_type(first) == "string" then
        emit("{")
        local comma = false
        for key, item in real_next, v do
          if real_type(key) ~= "string" then key_error(key) end
          if comma then emit(",") end
          comma = true
          encode(key, depth + 1)
          emit(":")
          encode(item, depth + 1)
        end
        emit("}")
      else
        local count = 0
        for key in real_next, v do
          if math_type(key) ~= "integer" then key_error(key) end
          count = count + 1
        end
        if real_rawlen(v) ~= count or real_rawget(v, count) == nil then
          real_error("an array table must have keys 1..n with no holes (is there a nil "
            .. "inside? use json.null)", 0)
        end
        emit("[")
        for i = 1, count do
          if i > 1 then emit(",") end
          encode(real_rawget(v, i), depth + 1)
        end
        emit("]")
      end
    end
  end
  encode(value, 0)
  return real_concat(parts)
end

local function json_encode(value)
  local ok, result = real_pcall(json_encode_value, value, JSON_ENCODE_BYTES)
  if not ok then
    if real_rawequal(result, MEMORY_ERROR) then trip("memory") end
    check_tripped()
    real_error(template_position(2) .. "json.encode: " .. real_tostring(result), 0)
  end
  return result
end

local function json_decode(text)
  if real_type(text) ~= "string" then
    real_error("json.decode: expected a string, got " .. real_type(text), 2)
  end
  if utf8_len(text) == nil then real_error("json.decode: text is not valid UTF-8", 2) end
  return call_python(py_json_decode, "json.decode", text)
end

return freeze({
  encode = json_encode,
  decode = json_decode,
  null = null,
  object = json_object,
  array = function(t) return t or {} end,
}, "json")
