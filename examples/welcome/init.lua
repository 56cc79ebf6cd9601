-- A welcome template: greets new members, counts them, and remembers when they joined.
local greet = require("greet")

return {
  GUILD_MEMBER_ADD = function(ctx, event)
    local user = event.data.user
    local count = ctx.kv.incr("members:joined")
    ctx.kv.set("joined:" .. user.id, {at = event.at, name = user.username}, {ttl = 86400})
    print(greet(user, count))
    ctx.events.emit("WelcomeSent", {user_id = user.id, count = count})
    return {greeting = greet(user, count), member_number = count}
  end,

  WelcomeSent = function(ctx, event)
    ctx.log("debug", "welcome sent to", event.data.user_id)
    return ctx.kv.get("joined:" .. event.data.user_id)
  end,
}
