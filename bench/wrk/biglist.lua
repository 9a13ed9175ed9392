-- The list of one service with 8,500 instances (about 3 MB of JSON),
-- registered by bench/seed.py.
request = function()
  return wrk.format("GET", "/nacos/v1/ns/instance/list?serviceName=big")
end
