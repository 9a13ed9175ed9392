"""nacos-sdk-python 3.2.0 (gRPC) against a real 3-node cluster on one host,
in the README's port layout: HTTP ports 10 apart, each node's gRPC port
the default HTTP + 1000 (no --grpc-port), so that the clients' fixed
offset of 1000 reaches every node."""
import random
import signal
import socket
import time

import pytest

from conftest import Node, eventually
from test_grpc_sdk import client_process

SPACING = 10


def _free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _layout():
    """A base port whose three nodes' HTTP and gRPC ports are all free."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        ports = [base + SPACING * i for i in range(3)]
        if all(_free(p) and _free(p + 1000) for p in ports):
            return ports
    pytest.skip("no free port layout")


@pytest.fixture
def cluster():
    ports = _layout()
    addrs = [f"127.0.0.1:{p}" for p in ports]
    nodes = [Node("--peers", ",".join(addrs), "--cluster-token", "v2-token", "--cores", "1",
                  "--report-interval-ms", "300", "--verify-interval-ms", "1000", bind=a)
             for a in addrs]
    assert [n.grpc_port for n in nodes] == [p + 1000 for p in ports], "the default layout"
    yield nodes
    for n in nodes:
        if n.proc.poll() is None:
            n.stop()


def test_instances_follow_their_client_across_a_node_crash(cluster):
    """Register through one node: listed on all. kill -9 the node the
    client is connected to: a client that knew only the dead node loses
    its instance on every node within the delete timeout (30 s); a client
    that knows the other nodes reconnects to one, its redo registers
    again, and its instance is listed everywhere and stays, after the dead
    node's leftovers are gone. (nacos-sdk-python runs its redo every 30 s:
    its instance can be missing meanwhile; the Java client redoes at
    once.)"""
    servers = ",".join(n.addr for n in cluster)
    roamer = client_process(cluster[0], "roams", "10.5.0.1", servers=servers)
    stuck = None
    try:
        listed = lambda svc, ip, nodes: all(n.hosts(svc) == [(ip, 1)] for n in nodes)
        assert eventually(lambda: listed("roams", "10.5.0.1", cluster), timeout=10)
        holder = next(n for n in cluster if n.metric("registry_grpc_connections") == 1)
        others = [n for n in cluster if n is not holder]
        stuck = client_process(holder, "stuck", "10.5.0.2", servers=holder.addr)
        assert eventually(lambda: listed("stuck", "10.5.0.2", cluster), timeout=10)
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(timeout=10)
        killed_at = time.time()
        assert eventually(lambda: sum(n.metric("registry_grpc_connections") for n in others) == 1,
                          timeout=20), "the roaming client reconnected"
        gone = eventually(lambda: all(n.hosts("stuck") == [] for n in others), timeout=40, step=0.2)
        took = time.time() - killed_at
        assert gone, "the dead node's leftovers stay"
        assert took <= 30, f"the dead node's leftovers went after {took:.1f} s"
        assert eventually(lambda: listed("roams", "10.5.0.1", others), timeout=40, step=0.2), "redo"
        time.sleep(3)
        assert listed("roams", "10.5.0.1", others), "the reconnected client's instance stays"
        assert all(n.hosts("stuck") == [] for n in others)
    finally:
        for p in (roamer, stuck):
            if p and p.poll() is None:
                p.kill()
