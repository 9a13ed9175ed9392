"""Registers the fixtures the wrk scenarios need, over one keep-alive
connection: beat-0..99 with 10 instances each (1,000 beaters) and
list-0..99 with 10 instances each."""
import http.client
import sys

host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port))
for prefix in ("beat", "list"):
    for i in range(1000):
        svc, ip = f"{prefix}-{i % 100}", f"10.0.{i // 100}.{i % 100}"
        c.request("POST", f"/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080")
        r = c.getresponse()
        body = r.read()
        assert r.status == 200 and body == b"ok", (r.status, body)
