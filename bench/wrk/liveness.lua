-- The server's own floor: the cheapest request it serves.
request = function()
  return wrk.format("GET", "/nacos/v1/console/health/liveness")
end
