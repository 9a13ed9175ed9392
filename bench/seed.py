"""Registers the fixtures the wrk scenarios need, over one keep-alive
connection: beat-0..99 with 10 instances each (1,000 beaters),
list-0..99 with 10 instances each, and `big` with 8,500 instances.
The listed fixtures are persistent (ephemeral=false): a run longer than the
delete timeout would otherwise measure lists of expired services."""
import http.client
import sys

host, port = sys.argv[1].split(":")
# A node with --auth: the access token to send (bench/auth_beat.sh).
TOKEN = f"&accessToken={sys.argv[2]}" if len(sys.argv) > 2 else ""
c = http.client.HTTPConnection(host, int(port))
for prefix, ephemeral in (("beat", "true"), ("list", "false")):
    for i in range(1000):
        svc, ip = f"{prefix}-{i % 100}", f"10.0.{i // 100}.{i % 100}"
        c.request("POST", f"/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080&ephemeral={ephemeral}{TOKEN}")
        r = c.getresponse()
        body = r.read()
        assert r.status == 200 and body == b"ok", (r.status, body)
for i in range(8500):
    ip = f"10.1.{i // 250}.{i % 250}"
    c.request("POST", f"/nacos/v1/ns/instance?serviceName=big&ip={ip}&port=8080&ephemeral=false&metadata=zone%3Da,version%3D1.2.3{TOKEN}")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"ok"
