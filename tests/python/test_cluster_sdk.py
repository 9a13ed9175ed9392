"""The real nacos-sdk-python 1.0.0 client against a 3-node cluster: it is
given every node's address, as users configure it."""
import json
import time
import urllib.request

import nacos

from test_nacos_sdk import ips, wait_for


def members_up(node):
    with urllib.request.urlopen(f"http://{node.addr}/nacos/v1/core/cluster/nodes") as r:
        return sum(1 for m in json.load(r)["data"] if m["state"] == "UP")


def test_sdk_registers_through_the_cluster_and_survives_a_dead_node(cluster):
    assert wait_for(lambda: all(members_up(n) == 3 for n in cluster), timeout=15)
    servers = ",".join(n.addr for n in cluster)
    c = nacos.NacosClient(servers, namespace="public")
    services = [f"py-cluster-{k}" for k in range(6)]
    for s in services:
        # The SDK's own beat thread keeps each instance alive. (Without a
        # cluster name this SDK beats with clusterName=None, which Nacos
        # too takes as a cluster named "None".)
        assert c.add_naming_instance(s, "10.7.0.1", 8080, cluster_name="c1", heartbeat_interval=0.5)
    # Every node lists every instance.
    per_node = [nacos.NacosClient(n.addr, namespace="public") for n in cluster]
    for s in services:
        for k, pc in enumerate(per_node):
            assert wait_for(lambda: ips(pc.list_naming_instance(s)) == [("10.7.0.1", 8080)], 2), (k, s)
    # One node dies; the SDK fails over; for longer than the delete timeout
    # every instance stays present and healthy on the other two.
    cluster[0].kill()
    end = time.time() + 6
    while time.time() < end:
        for s in services:
            for pc in per_node[1:]:
                res = pc.list_naming_instance(s)
                assert [(h["ip"], h["healthy"]) for h in res["hosts"]] == [("10.7.0.1", True)], (s, res)
        time.sleep(0.5)
    # This SDK stops a beat thread only after its DELETE has returned, so a
    # beat sent meanwhile can arrive after the deregister and, carrying its
    # beat JSON, register the instance again (Nacos does the same; such an
    # instance expires after the delete timeout). So the beat threads are
    # stopped and joined first: what is checked is the cluster's deregister.
    for s in services:
        task = c.heartbeats[f"{s}#10.7.0.1#8080"]
        task.stop()
        task.join(timeout=5)
        assert not task.is_alive(), s
    for s in services:
        assert c.remove_naming_instance(s, "10.7.0.1", 8080, cluster_name="c1")
    for s in services:
        for pc in per_node[1:]:
            assert wait_for(lambda: pc.list_naming_instance(s)["hosts"] == [], 2), s
