-- Instance lists cycling over 100 services of 10 instances each.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", string.format("/nacos/v1/ns/instance/list?serviceName=list-%d", n % 100))
end
