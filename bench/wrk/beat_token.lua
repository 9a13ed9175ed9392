-- bench/wrk/beat.lua's light beats with an access token (TOKEN from the
-- environment) in the Authorization header, as a client of a node with
-- --auth sends them (bench/auth_beat.sh).
local n = 0
local headers = { ["Authorization"] = "Bearer " .. os.getenv("TOKEN") }
request = function()
  local i = n % 1000
  n = n + 1
  local path = string.format("/nacos/v1/ns/instance/beat?serviceName=beat-%d&ip=10.0.%d.%d&port=8080", i % 100, math.floor(i / 100), i % 100)
  return wrk.format("PUT", path, headers)
end
