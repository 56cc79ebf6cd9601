-- @moonshard/embed: builds Discord embeds and checks Discord's limits while you build them.
--
-- A built-in library: it runs in the requiring template's sandbox with only what a template
-- has. Lengths count characters (UTF-8 code points), as Discord does.

local embed = {}

embed.LIMITS = {
  title = 256, description = 4096, fields = 25, field_name = 256, field_value = 1024,
  footer = 2048, author = 256, total = 6000,
}
local LIMITS = embed.LIMITS

local Builder = {}
Builder.__index = Builder

local function length(text)
  return utf8.len(text) or #text
end

-- Checks one text argument of `what` and returns it as a string.
local function text_of(what, value, limit, level)
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" then
    error("embed." .. what .. ": expected a string, got " .. type(value), level + 1)
  end
  if utf8.len(value) == nil then
    error("embed." .. what .. ": the text is not valid UTF-8", level + 1)
  end
  if value == "" then error("embed." .. what .. ": the text is empty", level + 1) end
  if limit and length(value) > limit then
    error(string.format("embed.%s: %d characters, Discord allows at most %d (embed.truncate "
      .. "shortens a text)", what, length(value), limit), level + 1)
  end
  return value
end

local function url_of(what, value, level)
  if type(value) ~= "string" or not value:find("^%a[%w+.-]*://") then
    error("embed." .. what .. ": expected a URL such as \"https://...\", got "
      .. (type(value) == "string" and ("\"" .. value:sub(1, 40) .. "\"") or type(value)),
      level + 1)
  end
  return value
end

local function color_of(value, level)
  if type(value) == "string" then
    local hex = value:match("^#?(%x%x%x%x%x%x)$")
    if hex == nil then
      error("embed.color: expected \"#RRGGBB\" or a number, got \"" .. value:sub(1, 20) .. "\"",
        level + 1)
    end
    return tonumber(hex, 16)
  end
  if math.type(value) ~= "integer" or value < 0 or value > 0xFFFFFF then
    error("embed.color: expected a whole number from 0 to 0xFFFFFF, got " .. tostring(value),
      level + 1)
  end
  return value
end

-- Discord wants an ISO 8601 timestamp; templates have unix seconds (event.at, os.time()).
local function timestamp_of(value, level)
  if type(value) == "string" then return value end
  if type(value) ~= "number" then
    error("embed.timestamp: expected unix seconds, got " .. type(value), level + 1)
  end
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(value))
end

--- The characters this embed counts towards Discord's limit of 6,000 per message.
function embed.length(e)
  if getmetatable(e) == Builder then e = e.data end
  local n = 0
  if e.title then n = n + length(e.title) end
  if e.description then n = n + length(e.description) end
  if e.footer and e.footer.text then n = n + length(e.footer.text) end
  if e.author and e.author.name then n = n + length(e.author.name) end
  for _, field in ipairs(e.fields or {}) do
    n = n + length(field.name) + length(field.value)
  end
  return n
end

--- Cuts `text` to at most `limit` characters, ending it with "…" when it was cut.
function embed.truncate(text, limit)
  text = tostring(text)
  if length(text) <= limit then return text end
  local cut = utf8.offset(text, limit) or (#text + 1)
  return text:sub(1, cut - 1) .. "…"
end

function Builder:title(text)
  self.data.title = text_of("title", text, LIMITS.title, 2)
  return self
end

function Builder:description(text)
  self.data.description = text_of("description", text, LIMITS.description, 2)
  return self
end

function Builder:url(url)
  self.data.url = url_of("url", url, 2)
  return self
end

function Builder:color(color)
  self.data.color = color_of(color, 2)
  return self
end

function Builder:timestamp(at)
  self.data.timestamp = timestamp_of(at or os.time(), 2)
  return self
end

function Builder:footer(text, icon_url)
  self.data.footer = {text = text_of("footer", text, LIMITS.footer, 2),
                      icon_url = icon_url and url_of("footer icon_url", icon_url, 2)}
  return self
end

function Builder:author(name, url, icon_url)
  self.data.author = {name = text_of("author", name, LIMITS.author, 2),
                      url = url and url_of("author url", url, 2),
                      icon_url = icon_url and url_of("author icon_url", icon_url, 2)}
  return self
end

function Builder:image(url)
  self.data.image = {url = url_of("image", url, 2)}
  return self
end

function Builder:thumbnail(url)
  self.data.thumbnail = {url = url_of("thumbnail", url, 2)}
  return self
end

function Builder:field(name, value, inline)
  local fields = self.data.fields
  if #fields >= LIMITS.fields then
    error("embed.field: an embed has at most " .. LIMITS.fields .. " fields", 2)
  end
  fields[#fields + 1] = {name = text_of("field name", name, LIMITS.field_name, 2),
                         value = text_of("field value", value, LIMITS.field_value, 2),
                         inline = inline and true or false}
  return self
end

--- The embed as a plain table for `embeds = {...}`; checks the 6,000-character total.
function Builder:build()
  local total = embed.length(self.data)
  if total > LIMITS.total then
    error(string.format("embed.build: %d characters in all, Discord allows at most %d",
      total, LIMITS.total), 2)
  end
  local out = {}
  for key, value in pairs(self.data) do
    if key ~= "fields" then out[key] = value end
  end
  if #self.data.fields > 0 then
    out.fields = {}
    for i, field in ipairs(self.data.fields) do
      out.fields[i] = {name = field.name, value = field.value, inline = field.inline}
    end
  end
  return out
end

local SETTERS = {
  title = true, description = true, url = true, color = true, timestamp = true,
  image = true, thumbnail = true,
}

--- A new builder, optionally filled from a table {title=, description=, color=, fields=, ...}.
function embed.new(initial)
  local self = setmetatable({data = {fields = {}}}, Builder)
  if initial == nil then return self end
  if type(initial) ~= "table" then
    error("embed.new: expected a table or nothing, got " .. type(initial), 2)
  end
  for key, value in pairs(initial) do
    if SETTERS[key] then
      local ok, problem = pcall(Builder[key], self, value)
      if not ok then error(problem, 2) end
    elseif key == "footer" or key == "author" then
      local args = type(value) == "table" and value or {value}
      local ok, problem
      if key == "footer" then
        ok, problem = pcall(Builder.footer, self, args.text or args[1], args.icon_url)
      else
        ok, problem = pcall(Builder.author, self, args.name or args[1], args.url, args.icon_url)
      end
      if not ok then error(problem, 2) end
    elseif key == "fields" then
      if type(value) ~= "table" then
        error("embed.new: fields must be a list of {name, value, inline}, got " .. type(value), 2)
      end
      for _, field in ipairs(value) do
        if type(field) ~= "table" then
          error("embed.new: each field must be a table {name, value, inline}", 2)
        end
        local ok, problem = pcall(Builder.field, self, field.name or field[1],
          field.value or field[2], field.inline or field[3])
        if not ok then error(problem, 2) end
      end
    else
      error("embed.new: unknown embed part '" .. tostring(key) .. "'", 2)
    end
  end
  return self
end

return embed
