-- Each request registers a new instance: 1,000 services, distinct ip:port.
local n = 0
request = function()
  n = n + 1
  local ip = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  local path = string.format("/nacos/v1/ns/instance?serviceName=reg-%d&ip=%s&port=%d", n % 1000, ip, 1 + (n % 60000))
  return wrk.format("POST", path)
end
