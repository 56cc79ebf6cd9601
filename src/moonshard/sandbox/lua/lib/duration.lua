-- @moonshard/duration: reads "10m", "2h30m", "1d 12h" as seconds and writes seconds back.
--
-- A built-in library: it runs in the requiring template's sandbox with only what a template
-- has, so it is ordinary template code that moonshard ships.

local duration = {}

-- Unit names (lower case) -> seconds. Months and years are left out: their length varies.
local UNITS = {
  s = 1, sec = 1, secs = 1, second = 1, seconds = 1,
  m = 60, min = 60, mins = 60, minute = 60, minutes = 60,
  h = 3600, hr = 3600, hrs = 3600, hour = 3600, hours = 3600,
  d = 86400, day = 86400, days = 86400,
  w = 604800, week = 604800, weeks = 604800,
}

local ORDER = {
  {604800, "w", "week"}, {86400, "d", "day"}, {3600, "h", "hour"},
  {60, "m", "minute"}, {1, "s", "second"},
}

local HINT = 'write a number and a unit, e.g. "90s", "10m", "2h30m", "1d" (units: s, m, h, d, w)'

local function quote(text)
  if #text > 40 then text = text:sub(1, 40) .. "..." end
  return '"' .. text .. '"'
end

--- Reads a duration; returns the number of seconds, or nil and a message saying what is wrong.
function duration.try_parse(text)
  if type(text) == "number" then
    if text ~= text or text < 0 or text == math.huge then
      return nil, "a duration must be a finite number of seconds, 0 or more"
    end
    return text
  end
  if type(text) ~= "string" then
    return nil, "a duration must be a string such as \"10m\", got " .. type(text)
  end
  local rest = text:lower():gsub("^%s+", ""):gsub("%s+$", "")
  if rest == "" then return nil, "the duration is empty: " .. HINT end
  if #rest > 100 then return nil, "the duration is too long (" .. #rest .. " characters)" end
  if rest:find("^%-") then return nil, quote(text) .. " is negative: a duration is 0 or more" end
  if rest:find("^%d+%.?%d*$") then
    return nil, quote(text) .. " has no unit: " .. HINT
  end
  local total, parts, position = 0, 0, 1
  while position <= #rest do
    local first, last, number, unit = rest:find("^(%d*%.?%d+)%s*(%a+)[%s,]*", position)
    if not first then
      local bad = rest:sub(position)
      if bad:find("^%d") then
        return nil, quote(text) .. ": " .. quote(bad) .. " has no unit: " .. HINT
      end
      return nil, quote(text) .. " is not a duration: " .. HINT
    end
    local seconds = UNITS[unit]
    if seconds == nil then
      return nil, quote(text) .. ": unknown unit " .. quote(unit) .. " (units: s, m, h, d, w)"
    end
    total = total + tonumber(number) * seconds
    parts = parts + 1
    position = last + 1
  end
  if parts == 0 then return nil, quote(text) .. " is not a duration: " .. HINT end
  return math.tointeger(total) or total
end

--- Reads a duration and returns its seconds; raises an error naming the problem.
function duration.parse(text)
  local seconds, problem = duration.try_parse(text)
  if seconds == nil then error("duration.parse: " .. problem, 2) end
  return seconds
end

--- Writes seconds as "2h30m" (or "2 hours 30 minutes" with {long = true}).
-- opts.units keeps at most that many units, largest first ("1d2h" for units = 2).
function duration.format(seconds, opts)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds == math.huge then
    error("duration.format: expected a number of seconds, got " .. tostring(seconds), 2)
  end
  if seconds >= 2^53 or seconds <= -2^53 then
    error("duration.format: " .. tostring(seconds) .. " seconds is too large to write", 2)
  end
  opts = opts or {}
  local sign = ""
  if seconds < 0 then sign, seconds = "-", -seconds end
  local left = math.floor(seconds + 0.5)
  local limit = opts.units or #ORDER
  local out = {}
  for _, unit in ipairs(ORDER) do
    if #out >= limit then break end
    local count = left // unit[1]
    if count > 0 then
      left = left - count * unit[1]
      if opts.long then
        out[#out + 1] = string.format("%d %s%s", count, unit[3], count == 1 and "" or "s")
      else
        out[#out + 1] = string.format("%d%s", count, unit[2])
      end
    end
  end
  if #out == 0 then return opts.long and "0 seconds" or "0s" end
  return sign .. table.concat(out, opts.long and " " or "")
end

return duration
