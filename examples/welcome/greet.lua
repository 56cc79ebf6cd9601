-- Builds the greeting line; a separate file to show require().
return function(user, count)
  return string.format("Welcome, %s! You are member #%d.", user.username, count)
end
