"""Loads N persistent instances (1,000 per service) into running cluster
nodes through the replication endpoint (PUT /nacos/v1/ns/distro/datum with
the cluster token), 100 services per request. Usage:

    python3 bench/cluster_fixture.py N TOKEN HOST:PORT [HOST:PORT ...]
"""
import http.client
import json
import sys

n, token, nodes = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
PER_SERVICE = 1000
BATCH = 100
services = (n + PER_SERVICE - 1) // PER_SERVICE


def datum(s):
    count = min(PER_SERVICE, n - s * PER_SERVICE)
    v = {"hlc": 1 << 20, "writer": 0}
    return {
        "namespace": "public",
        "group": "DEFAULT_GROUP",
        "name": f"snap-{s}",
        "fields": {"protect_threshold": 0.0, "metadata": {},
                   "selector": {"type": "none"}, "version": v},
        "deleted": None,
        # ip, port, cluster, weight, healthy, enabled, ephemeral, metadata,
        # version hlc, version writer, deleted (store/datum.rs WireRecord)
        "instances": [[
            f"10.{s // 250}.{s % 250}.{i % 250}", 8000 + i // 250, "DEFAULT",
            1.0, True, True, False, {"zone": "a"}, v["hlc"], v["writer"], False,
        ] for i in range(count)],
    }


for node in nodes:
    host, port = node.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    for start in range(0, services, BATCH):
        body = json.dumps([datum(s) for s in range(start, min(services, start + BATCH))])
        c.request("PUT", "/nacos/v1/ns/distro/datum", body=body,
                  headers={"X-Distro-Token": token, "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, (node, r.status)
    print(f"{node}: {n} instances in {services} services", file=sys.stderr)
