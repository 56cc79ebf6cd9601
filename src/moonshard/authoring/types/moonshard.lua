---@meta _
-- Type definitions of the moonshard template API for the Lua language server (LuaLS).
-- Definitions only: nothing here runs. `moonshard template init` copies this folder into a
-- new template as .types/ and points .luarc.json at it.

---------------------------------------------------------------------------------------------
-- Handlers and events

---A template's init.lua returns this: event names mapped to handlers.
---@alias moonshard.Template table<string, moonshard.Handler>

---@alias moonshard.Handler fun(ctx: moonshard.Context, event: moonshard.Event): any

---Who owns templates, state and limits: a Discord server or a user who installed the app.
---@class moonshard.Tenant
---@field kind "guild"|"user"|string
---@field id string A snowflake, as a decimal string.

---@class moonshard.Event
---@field name string `MESSAGE_CREATE`, `INTERACTION_CREATE`, `KeyExpiry`, a custom name, ...
---@field data table|any Decoded from JSON; JSON `null` is `json.null`; no data is `{}`.
---@field author string? The user snowflake the event is from, or nil.
---@field id string Stable across redeliveries of the same event: use it to de-duplicate.
---@field tenant moonshard.Tenant
---@field at number Unix seconds (a float) when the event arrived.

---`event.data` of `KeyExpiry`.
---@class moonshard.KeyExpiryData
---@field key string
---@field scope string
---@field value any
---@field expires_at number
---@field attempt integer 1 for the first delivery, more on retries.

---`event.data` of `KeyResume`.
---@class moonshard.KeyResumeData
---@field key string
---@field scope string
---@field value any

---`event.data` of `Startup`.
---@class moonshard.StartupData
---@field reason "worker_start"|"templates_changed"|"vm_rebuilt"

---------------------------------------------------------------------------------------------
-- Discord payload shapes (the parts templates use most; Discord sends more)

---@class discord.User
---@field id string
---@field username string
---@field global_name string|table? `json.null` when the user has none.
---@field discriminator string
---@field avatar string|table?
---@field bot boolean?

---@class discord.Member
---@field user discord.User? Absent in MESSAGE_CREATE's `member`, present elsewhere.
---@field nick string|table?
---@field roles string[]
---@field joined_at string
---@field permissions string? In interactions: the member's permissions in the channel.

---@class discord.Message
---@field id string
---@field channel_id string
---@field guild_id string?
---@field author discord.User
---@field member discord.Member?
---@field content string
---@field timestamp string
---@field mentions discord.User[]
---@field mention_roles string[]
---@field referenced_message discord.Message|table?

---@class discord.InteractionOption
---@field name string
---@field type integer 1 subcommand, 2 group, 3 string, 4 integer, 5 boolean, 6 user, 7 channel, 8 role, 9 mentionable, 10 number, 11 attachment
---@field value string|number|boolean?
---@field options discord.InteractionOption[]?
---@field focused boolean?

---@class discord.InteractionData
---@field id string
---@field name string The command's name (`remind`); subcommands are in `options`.
---@field type integer 1 chat input, 2 user, 3 message
---@field options discord.InteractionOption[]?
---@field resolved table? `users`, `members`, `roles`, `channels`, `attachments` by id.
---@field custom_id string? Components and modals.

---`event.data` of `INTERACTION_CREATE`.
---@class discord.Interaction
---@field id string
---@field application_id string
---@field type integer 1 ping, 2 application command, 3 component, 4 autocomplete, 5 modal
---@field data discord.InteractionData
---@field guild_id string? Absent in DMs.
---@field channel_id string
---@field member discord.Member? In a guild; the user is `member.user`.
---@field user discord.User? In DMs.
---@field token string
---@field locale string?

---------------------------------------------------------------------------------------------
-- ctx

---@class moonshard.Context
---@field tenant moonshard.Tenant
---@field template {name: string, version: integer}
---@field kv moonshard.Kv The tenant's durable, transactional key-value store.
---@field events moonshard.Events Custom events: emit now, schedule for later.
---@field discord moonshard.Discord Actions on Discord on behalf of the tenant.
local Context = {}

---Writes to the tenant's log stream at `level`.
---@param level "debug"|"info"|"warn"|"error"
---@param ... any
function Context.log(level, ...) end

---JSON-compatible values: nil, booleans, numbers, strings, arrays and string-keyed maps.
---@alias moonshard.Value nil|boolean|number|string|table

---@class moonshard.KvOptions
---@field scope string? Partitions keys; default `"default"`.

---@class moonshard.KvSetOptions: moonshard.KvOptions
---@field ttl number? Seconds until the key expires (and `KeyExpiry` fires).
---@field expires_at number? Unix seconds when the key expires.
---@field resume boolean? Dispatch `KeyResume` for this key whenever the VM is rebuilt.

---@class moonshard.KvPageOptions: moonshard.KvOptions
---@field limit integer? How many records.
---@field after string? A key: the page starts after it.

---@class moonshard.KvRecord
---@field key string
---@field scope string
---@field value any
---@field version integer
---@field created_at number
---@field updated_at number
---@field expires_at number?
---@field resume boolean

---@alias moonshard.KvOp
---| {[1]: "set", [2]: string, [3]: any, [4]: moonshard.KvSetOptions?}
---| {[1]: "delete", [2]: string, [3]: moonshard.KvOptions?}
---| {[1]: "incr", [2]: string, [3]: number?, [4]: moonshard.KvOptions?}

---@class moonshard.Kv
local Kv = {}

---The value of `key`, or nil (also nil once the key has expired).
---@param key string
---@param opts moonshard.KvOptions?
---@return any
function Kv.get(key, opts) end

---The whole record of `key`, or nil.
---@param key string
---@param opts moonshard.KvOptions?
---@return moonshard.KvRecord?
function Kv.record(key, opts) end

---Sets `key` to `value`; `opts.ttl` or `opts.expires_at` arm an expiry.
---@param key string
---@param value moonshard.Value
---@param opts moonshard.KvSetOptions?
---@return moonshard.KvRecord
function Kv.set(key, value, opts) end

---Deletes `key` (and cancels its expiry); true if it existed.
---@param key string
---@param opts moonshard.KvOptions?
---@return boolean
function Kv.delete(key, opts) end

---Adds `by` (default 1) to the number at `key`, atomically; returns the new number.
---@param key string
---@param by number?
---@param opts moonshard.KvOptions?
---@return number
function Kv.incr(key, by, opts) end

---Sets (or with nil clears) the expiry of an existing key.
---@param key string
---@param ttl number?
---@param opts moonshard.KvOptions?
---@return moonshard.KvRecord?
function Kv.expire(key, ttl, opts) end

---Records whose key starts with `prefix`, ordered by key (at most 100 a page).
---@param prefix string
---@param opts moonshard.KvPageOptions?
---@return moonshard.KvRecord[]
function Kv.find(prefix, opts) end

---The number of live keys in the scope.
---@param opts moonshard.KvOptions?
---@return integer
function Kv.count(opts) end

---The records of the scope whose values are numbers, highest first (a leaderboard):
---`opts.limit` (default 10, at most 100), `opts.after` (a key, for the next page).
---@param opts moonshard.KvPageOptions?
---@return moonshard.KvRecord[]
function Kv.top(opts) end

---The 1-based position of `key` in `top`'s order, or nil when its value is not a number.
---@param key string
---@param opts moonshard.KvOptions?
---@return integer?
function Kv.rank(key, opts) end

---Runs a list of operations atomically (all or nothing) and returns their results.
---@param ops moonshard.KvOp[]
---@return any[]
function Kv.batch(ops) end

---@class moonshard.ScheduleWhen
---@field delay number? Seconds from now.
---@field at number? Unix seconds.

---@class moonshard.Events
local Events = {}

---Queues a custom event for this tenant's templates, delivered after the current dispatch.
---@param name string
---@param data moonshard.Value?
function Events.emit(name, data) end

---A durable scheduled custom event; with `key`, replaces any pending one with that key.
---@param name string
---@param data moonshard.Value
---@param when moonshard.ScheduleWhen
---@param key string?
function Events.schedule(name, data, when, key) end

---Cancels a pending scheduled event; true if one was pending.
---@param key string
---@return boolean
function Events.cancel(key) end

---------------------------------------------------------------------------------------------
-- ctx.discord: every call takes one table of named arguments. Actions that change a guild
-- need a `reason` (1 to 512 characters) for the audit log. No call takes a guild_id: the
-- guild is always the tenant's own.

---@class discord.Embed
---@field title string?
---@field description string?
---@field url string?
---@field color integer?
---@field timestamp string?
---@field fields {name: string, value: string, inline: boolean?}[]?
---@field footer {text: string, icon_url: string?}?
---@field author {name: string, url: string?, icon_url: string?}?
---@field image {url: string}?
---@field thumbnail {url: string}?

---@class discord.MessageBody
---@field content string? At most 2,000 characters.
---@field embeds discord.Embed[]? At most 10, 6,000 embed characters in all.
---@field components table[]?

---@class discord.SendMessageArgs: discord.MessageBody
---@field channel_id string
---@field reply_to string? The id of the message to reply to.
---@field allowed_mentions table?

---@class discord.EditMessageArgs: discord.MessageBody
---@field channel_id string
---@field message_id string

---@class discord.DeleteMessageArgs
---@field channel_id string
---@field message_id string
---@field reason string

---@class discord.AddReactionArgs
---@field channel_id string
---@field message_id string
---@field emoji string Unicode, or `name:id` for a custom emoji.

---@class discord.BanArgs
---@field user_id string
---@field reason string
---@field delete_message_seconds integer? 0 to 604800.

---@class discord.UserReasonArgs
---@field user_id string
---@field reason string

---@class discord.TimeoutArgs
---@field user_id string
---@field seconds integer 0 clears the timeout; at most 28 days.
---@field reason string

---@class discord.RoleArgs
---@field user_id string
---@field role_id string
---@field reason string

---@class discord.RespondArgs: discord.MessageBody
---@field interaction discord.Interaction The INTERACTION_CREATE event's `data`.
---@field ephemeral boolean? Only the user who ran the command sees it.

---@class moonshard.Discord
local Discord = {}

---@param args discord.SendMessageArgs
---@return discord.Message
function Discord.send_message(args) end

---@param args discord.EditMessageArgs
---@return discord.Message
function Discord.edit_message(args) end

---@param args discord.DeleteMessageArgs
---@return true
function Discord.delete_message(args) end

---@param args discord.AddReactionArgs
---@return true
function Discord.add_reaction(args) end

---@param args discord.BanArgs
---@return true
function Discord.ban(args) end

---@param args discord.UserReasonArgs
---@return true
function Discord.unban(args) end

---@param args discord.UserReasonArgs
---@return true
function Discord.kick(args) end

---@param args discord.TimeoutArgs
---@return discord.Member
function Discord.timeout(args) end

---@param args discord.RoleArgs
---@return true
function Discord.add_role(args) end

---@param args discord.RoleArgs
---@return true
function Discord.remove_role(args) end

---@param args {user_id: string}
---@return discord.Member?
function Discord.get_member(args) end

---@param args {channel_id: string}
---@return table?
function Discord.get_channel(args) end

---@param args table?
---@return table
function Discord.get_guild(args) end

---@param args table?
---@return table[]
function Discord.get_roles(args) end

---Answers an interaction (within 3 s, or the host defers it for you).
---@param args discord.RespondArgs
---@return true
function Discord.respond(args) end

---Another message after `respond`.
---@param args discord.RespondArgs
---@return discord.Message
function Discord.followup(args) end

---------------------------------------------------------------------------------------------
-- Globals that differ from standard Lua

---@class moonshard.Json
---@field null table The JSON `null` (in `event.data` and for holes in arrays).
json = {}

---@param value moonshard.Value
---@return string
function json.encode(value) end

---@param text string
---@return any
function json.decode(text) end

---Marks `t` as an object, so that an empty one encodes as `{}`.
---@generic T: table
---@param t T?
---@return T
function json.object(t) end

---Marks `t` as an array (an empty table encodes as `[]` anyway).
---@generic T: table
---@param t T?
---@return T
function json.array(t) end

---Only these four of `os` exist in templates (.luarc.json turns the standard `os` off).
os = {}

---@param date table?
---@return integer
function os.time(date) end

---@return number
function os.clock() end

---@param format string?
---@param time integer?
---@return string|table
function os.date(format, time) end

---@param t2 integer
---@param t1 integer
---@return number
function os.difftime(t2, t1) end

-- The basic functions a template has (.luarc.json turns LuaLS's standard set off, so that
-- dofile, loadfile, loadstring and warn are flagged as undefined, as they are in templates).

---@type table
_G = {}

---@type string
_VERSION = "Lua 5.4"

---Writes its arguments, separated by tabs, to the tenant's log (level info).
---@param ... any
function print(...) end

---Compiles text (never binary chunks); `env` defaults to the template's own globals.
---@param chunk string
---@param chunkname string?
---@param mode "t"?
---@param env table?
---@return function?
---@return string? error_message
---@nodiscard
function load(chunk, chunkname, mode, env) end

---Loads another file of this template (`a.b` is `a/b.lua`) or a built-in library
---(`@moonshard/commands`, `@moonshard/duration`, `@moonshard/embed`), once per VM.
---@param modname string
---@return any
function require(modname) end

---@generic T
---@param v T
---@param message any?
---@return T
function assert(v, message, ...) end

---Only `collectgarbage("count")` (the VM's memory in KiB) is available.
---@param opt "count"
---@return number
function collectgarbage(opt) end

---@param message any
---@param level integer?
function error(message, level) end

---@param object any
---@return table|false|nil
---@nodiscard
function getmetatable(object) end

---@generic V
---@param t V[]
---@return fun(t: V[], i?: integer): integer, V
---@return V[]
---@return integer
function ipairs(t) end

---@generic K, V
---@param t table<K, V>
---@param index K?
---@return K?
---@return V?
---@nodiscard
function next(t, index) end

---@generic K, V
---@param t table<K, V>
---@return fun(t: table<K, V>, index?: K): K, V
---@return table<K, V>
function pairs(t) end

---Calls `f`; a broken limit (cpu, memory) is not caught.
---@param f function
---@param ... any
---@return boolean success
---@return any result
---@return ... any
function pcall(f, ...) end

---@param f function
---@param msgh function
---@param ... any
---@return boolean success
---@return any result
---@return ... any
function xpcall(f, msgh, ...) end

---@param v1 any
---@param v2 any
---@return boolean
---@nodiscard
function rawequal(v1, v2) end

---@param t table
---@param index any
---@return any
---@nodiscard
function rawget(t, index) end

---@param v table|string
---@return integer
---@nodiscard
function rawlen(v) end

---@generic T: table
---@param t T
---@param index any
---@param value any
---@return T
function rawset(t, index, value) end

---@param index integer|"#"
---@param ... any
---@return any
---@nodiscard
function select(index, ...) end

---`__gc` metamethods are refused in templates.
---@generic T: table
---@param t T
---@param metatable table?
---@return T
function setmetatable(t, metatable) end

---@param e any
---@param base integer?
---@return number?
---@nodiscard
function tonumber(e, base) end

---@param v any
---@return string
---@nodiscard
function tostring(v) end

---@param v any
---@return "nil"|"number"|"string"|"boolean"|"table"|"function"|"thread"|"userdata"
---@nodiscard
function type(v) end
