-- Kernel part: the table library templates see, its C loops charged. Built in a VM the
-- first time a template touches `table`.

local K = ...
local charge, copy, freeze, SECONDS_PER_ELEMENT = K.charge, K.copy, K.freeze, K.SECONDS_PER_ELEMENT
local real_error, real_type, real_select = error, type, select
local real_rawget, real_rawlen, debug_getmetatable = rawget, rawlen, K.debug_getmetatable
local real_insert, real_remove, real_move = table.insert, table.remove, table.move
local math_type, maxinteger = math.type, math.maxinteger

-- table.move, insert and remove loop in C over a range the template chooses (a __len can
-- claim any length): the loop's length is charged before it runs.
local function length_as_seen(t)
  local mt = debug_getmetatable(t)
  if mt and real_rawget(mt, "__len") ~= nil then return #t end
  return real_rawlen(t)
end

local function is_integer(v) return math_type(v) == "integer" end

local safe_table = copy(table, {"concat", "pack", "sort", "unpack"})
function safe_table.move(a1, f, e, t, a2)
  if is_integer(f) and is_integer(e) and e >= f then
    if f <= 0 and e >= maxinteger + f then
      real_error("bad argument #3 to 'move' (too many elements to move)", 2)
    end
    charge((e - f + 1) * SECONDS_PER_ELEMENT)
  end
  return real_move(a1, f, e, t, a2)
end
function safe_table.insert(t, ...)
  local n = real_select("#", ...)
  if n == 2 and real_type(t) == "table" then
    local pos = ...
    if is_integer(pos) then charge((length_as_seen(t) - pos) * SECONDS_PER_ELEMENT) end
  end
  return real_insert(t, ...)
end
function safe_table.remove(t, ...)
  if real_type(t) == "table" then
    local size = length_as_seen(t)
    local pos = ...
    if pos == nil then pos = size end
    if is_integer(size) and is_integer(pos) then
      charge((size - pos) * SECONDS_PER_ELEMENT)
    end
  end
  return real_remove(t, ...)
end

return freeze(safe_table, "table")
