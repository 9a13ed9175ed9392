-- The floor server's static 200.
request = function()
  return wrk.format("GET", "/")
end
