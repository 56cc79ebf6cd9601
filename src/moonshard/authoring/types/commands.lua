---@meta @moonshard/commands
-- Type definitions of the built-in library require("@moonshard/commands").

---@class moonshard.commands
---@field COOLDOWN_SCOPE string The kv scope that holds cooldowns ("moonshard.cooldowns").
local commands = {}

---@alias moonshard.OptionType "string"|"integer"|"number"|"boolean"|"user"|"channel"|"role"|"mentionable"|"attachment"|"duration"

---@class moonshard.OptionSpec
---@field type moonshard.OptionType `duration` reads a string option such as "10m" as seconds.
---@field required boolean? Missing: the user gets an ephemeral "`name` is required".
---@field default any? Used when the user left the option out.
---@field min number|string? Numbers and durations: the least value; strings: the least length.
---@field max number|string? Numbers and durations: the most value; strings: the most length.

---@class moonshard.CommandSpec
---@field options table<string, moonshard.OptionType|moonshard.OptionSpec>?
---@field cooldown number|string? Per user, e.g. 30 or "1h"; kept in ctx.kv.
---@field ephemeral boolean? Answers only the user, unless a reply says otherwise.

---@class moonshard.Reply: discord.MessageBody
---@field ephemeral boolean?
---@field allowed_mentions table?

---One run of a command.
---@class moonshard.Command
---@field ctx moonshard.Context
---@field event moonshard.Event
---@field interaction discord.Interaction
---@field name string The routed path, e.g. "config set".
---@field path string The full path the user ran, e.g. "mod warn add".
---@field subcommand string? What the user ran below the routed path ("warn add" for a route "mod").
---@field args table<string, any> The options, typed as declared.
---@field user discord.User Who ran it (`member.user` in a guild, `user` in DMs).
---@field user_id string
---@field member discord.Member? nil in DMs.
---@field guild_id string? nil in DMs.
---@field channel_id string?
---@field locale string?
---@field resolved {users: table<string, discord.User>?, members: table<string, discord.Member>?, roles: table<string, table>?, channels: table<string, table>?}
---@field replied boolean
local Command = {}

---Answers the command: the first answer responds, later ones follow up.
---@param message string|moonshard.Reply
---@return any
function Command:reply(message) end

---Answers so that only the user who ran the command sees it.
---@param message string|moonshard.Reply
---@return any
function Command:reply_ephemeral(message) end

---Stops the command and answers the user (only them) with `message`.
---@param message string
---@return nil
function Command:fail(message) end

---@alias moonshard.CommandHandler fun(cmd: moonshard.Command): string|moonshard.Reply|nil

---@class moonshard.Router
local Router = {}

---Routes `/path` ("ping", "config set") to `handler`. Returning a string or a reply table
---answers with it.
---@param path string
---@param spec moonshard.CommandSpec|moonshard.CommandHandler
---@param handler moonshard.CommandHandler?
---@return moonshard.Router
function Router:command(path, spec, handler) end

---Runs the command of an INTERACTION_CREATE event; the routed path, or nil when the event is
---not a command of this router.
---@param ctx moonshard.Context
---@param event moonshard.Event
---@return string?
function Router:dispatch(ctx, event) end

---The handler for init.lua's table: `INTERACTION_CREATE = router:handler()`.
---@return moonshard.Handler
function Router:handler() end

---@class moonshard.RouterOptions
---@field send (fun(ctx: moonshard.Context, call: "respond"|"followup", args: discord.RespondArgs): any)? Default: ctx.discord[call](args).
---@field messages {cooldown: string?, error: string?}? With {command} and {wait} filled in.

---@param opts moonshard.RouterOptions?
---@return moonshard.Router
function commands.router(opts) end

---Stops the running command and answers the user (only them) with `message`.
---@param message string
---@return nil
function commands.fail(message) end

return commands
