---@meta @moonshard/duration
-- Type definitions of the built-in library require("@moonshard/duration").

---@class moonshard.duration
local duration = {}

---Reads "10m", "2h30m", "1d 12h", "1.5h" (units s, m, h, d, w) as seconds; raises an error
---naming the problem for anything else. A number is taken as seconds.
---@param text string|number
---@return number seconds
function duration.parse(text) end

---Like `parse`, but returns nil and the reason instead of raising (for user input).
---@param text string|number
---@return number? seconds
---@return string? problem
function duration.try_parse(text) end

---@class moonshard.DurationFormat
---@field long boolean? "2 hours 30 minutes" instead of "2h30m".
---@field units integer? Keep at most this many units, largest first.

---Writes seconds as "2h30m" (which `parse` reads back).
---@param seconds number
---@param opts moonshard.DurationFormat?
---@return string
function duration.format(seconds, opts) end

return duration
