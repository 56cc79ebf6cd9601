---@meta @moonshard/embed
-- Type definitions of the built-in library require("@moonshard/embed").

---@class moonshard.embed
---@field LIMITS {title: integer, description: integer, fields: integer, field_name: integer, field_value: integer, footer: integer, author: integer, total: integer}
local embed = {}

---@class moonshard.EmbedParts
---@field title string?
---@field description string?
---@field url string?
---@field color integer|string?
---@field timestamp number|string?
---@field footer string|{text: string, icon_url: string?}?
---@field author string|{name: string, url: string?, icon_url: string?}?
---@field image string?
---@field thumbnail string?
---@field fields ({name: string, value: string, inline: boolean?}|string[])[]?

---A builder; every setter checks Discord's limit at once and returns the builder.
---@class moonshard.EmbedBuilder
local Builder = {}

---At most 256 characters.
---@param text string
---@return moonshard.EmbedBuilder
function Builder:title(text) end

---At most 4,096 characters.
---@param text string
---@return moonshard.EmbedBuilder
function Builder:description(text) end

---@param url string
---@return moonshard.EmbedBuilder
function Builder:url(url) end

---A number (0x5865F2) or "#5865F2".
---@param color integer|string
---@return moonshard.EmbedBuilder
function Builder:color(color) end

---Unix seconds (default now), shown in the user's time zone.
---@param at number?
---@return moonshard.EmbedBuilder
function Builder:timestamp(at) end

---At most 2,048 characters.
---@param text string
---@param icon_url string?
---@return moonshard.EmbedBuilder
function Builder:footer(text, icon_url) end

---At most 256 characters.
---@param name string
---@param url string?
---@param icon_url string?
---@return moonshard.EmbedBuilder
function Builder:author(name, url, icon_url) end

---@param url string
---@return moonshard.EmbedBuilder
function Builder:image(url) end

---@param url string
---@return moonshard.EmbedBuilder
function Builder:thumbnail(url) end

---At most 25 fields; name at most 256 characters, value at most 1,024.
---@param name string
---@param value string|number
---@param inline boolean?
---@return moonshard.EmbedBuilder
function Builder:field(name, value, inline) end

---The embed as a plain table for `embeds = {...}`; checks the 6,000-character total.
---@return discord.Embed
function Builder:build() end

---@param parts moonshard.EmbedParts?
---@return moonshard.EmbedBuilder
function embed.new(parts) end

---The characters an embed counts towards Discord's 6,000 per message.
---@param e moonshard.EmbedBuilder|discord.Embed
---@return integer
function embed.length(e) end

---Cuts `text` to at most `limit` characters, ending with "…" when it was cut.
---@param text string
---@param limit integer
---@return string
function embed.truncate(text, limit) end

return embed
