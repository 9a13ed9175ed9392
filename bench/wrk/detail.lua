-- Instance details cycling over the 1,000 instances bench/seed.py registered
-- (beat-<i % 100>, 10.0.<i/100>.<i%100>:8080).
local n = 0
request = function()
  local i = n % 1000
  n = n + 1
  local path = string.format("/nacos/v1/ns/instance?serviceName=beat-%d&ip=10.0.%d.%d&port=8080", i % 100, math.floor(i / 100), i % 100)
  return wrk.format("GET", path)
end
