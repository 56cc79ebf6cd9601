-- Kernel part: the string library templates see, with the pattern guard and charged
-- searches. Built in a VM the first time a template touches `string` (or a string method).

local K = ...
local charge, copy, freeze = K.charge, K.copy, K.freeze
local PATTERN_STEPS, SECONDS_PER_BYTE = K.PATTERN_STEPS, K.SECONDS_PER_BYTE
local real_error, real_tostring, real_type, ipairs = error, tostring, type, ipairs
local real_find, real_match, real_gmatch, real_gsub = string.find, string.match, string.gmatch, string.gsub
local real_sub, real_char, real_format, real_rep = string.sub, string.char, string.format, string.rep
local math_type = math.type

-- Patterns longer than this are not analysed item by item (see overlap_depth).
local LONG_PATTERN = 256

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

-- The largest number of quantified items that can all consume the same byte in a row, the
-- number of items, and whether a repetition is followed by an item that can make it back off.
local function overlap_depth(p)
  if #p > LONG_PATTERN then
    -- Too long to analyse byte by byte: assume every repetition overlaps the others.
    local _, repetitions = real_gsub(p, "[%*%+%-]", "")
    return {depth = repetitions, items = #p, backtracks = repetitions > 0}
  end
  local items = pattern_items(p)
  local deepest = 0
  local backtracks = false
  for index, item in ipairs(items) do
    if (item.q ~= "" and item.q ~= "?" or item.kind == "balanced") and index < #items then
      backtracks = true
    end
  end
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
  return {depth = deepest, items = #items, backtracks = backtracks}
end

local pattern_cache, pattern_cache_size = {}, 0


-- Subject length from `init` on, as Lua's string functions count it.
local function subject_length(s, init)
  local length = #real_tostring(s)
  if real_type(init) == "number" then
    if init < 0 then init = length + init + 1 end
    if init < 1 then init = 1 end
    length = length - init + 1
  end
  return length
end

-- Strings and numbers are what Lua's string functions take; anything else fails in C at once.
local function stringlike(v)
  local t = real_type(v)
  return t == "string" or t == "number"
end

local function check_pattern(fname, s, p, init)
  if not stringlike(s) or not stringlike(p) then return end
  p = real_tostring(p)
  local shape = pattern_cache[p]
  if shape == nil then
    shape = overlap_depth(p)
    if pattern_cache_size > 512 then pattern_cache, pattern_cache_size = {}, 0 end
    pattern_cache[p], pattern_cache_size = shape, pattern_cache_size + 1
  end
  local length = subject_length(s, init)
  if length < 1 then return end
  local anchored = real_sub(p, 1, 1) == "^" and fname ~= "gmatch"
  local starts = anchored and 1 or length + 1
  local steps
  if shape.depth >= 2 or (shape.depth == 1 and shape.backtracks) then
    -- Each start can try every split of the subject among the overlapping repetitions.
    steps = (length + 1) ^ shape.depth * starts
  else
    -- Each start compares at most every item once against the subject.
    steps = starts * (shape.items + 1)
  end
  if steps > PATTERN_STEPS then
    real_error(real_format("string.%s: pattern %q is too costly for a subject of %d bytes "
      .. "(it could take about %.0e matching steps; the limit is %.0e)",
      fname, #p > 40 and real_sub(p, 1, 40) .. "..." or p, length, steps, PATTERN_STEPS), 3)
  end
  -- Linear matching is charged; backtracking is bounded by PATTERN_STEPS alone (its estimate
  -- is a worst case, far above what most subjects cost).
  if shape.depth == 0 or not shape.backtracks then charge(steps * SECONDS_PER_BYTE) end
end

local safe_string = copy(string, {
  "byte", "char", "format", "len", "lower", "upper", "reverse", "sub",
  "pack", "packsize", "unpack",
})

local function has_specials(p)
  return real_find(p, "[%^%$%*%+%?%.%(%)%[%]%%%-]") ~= nil
end

-- A plain search compares the needle at every start: up to (subject x needle) bytes.
local function charge_plain(s, p, init)
  if not stringlike(s) or not stringlike(p) then return end
  local needle = #real_tostring(p)
  local starts = subject_length(s, init) - needle + 1
  if starts > 0 then charge(starts * needle * SECONDS_PER_BYTE) end
end

function safe_string.find(s, p, init, plain)
  if plain or (stringlike(p) and not has_specials(real_tostring(p))) then
    charge_plain(s, p, init)
  else
    check_pattern("find", s, p, init)
  end
  return real_find(s, p, init, plain)
end

-- Lua's rep loops n times even when every piece is empty; the copying it does is charged.
function safe_string.rep(s, n, sep)
  if stringlike(s) and real_type(n) == "number" and n >= 1
      and (sep == nil or stringlike(sep)) then
    local piece = #real_tostring(s) + (sep and #real_tostring(sep) or 0)
    if piece == 0 and math_type(n) == "integer" then return "" end
    charge(n * piece * SECONDS_PER_BYTE)
  end
  return real_rep(s, n, sep)
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
return freeze(safe_string, "string", {
  dump = "templates cannot produce bytecode",
})
