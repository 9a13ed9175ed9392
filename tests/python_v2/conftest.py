"""Starts the real distro-registry binary for the Nacos 2.x (gRPC) client
tests: the PyPI nacos-sdk-python 3.2.0, package `v2`."""
import asyncio
import json
import os
import re
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DR_BIN", os.path.join(ROOT, "target", "debug", "distro-registry"))


class Node:
    def __init__(self, *args, bind="127.0.0.1:0"):
        self.proc = subprocess.Popen(
            [BIN, "--bind", bind, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # Every test node starts empty and saves nothing.
            env={**os.environ, "DISTRO_REGISTRY_DATA_DIR": "none"},
        )
        self.addr = self.grpc = None
        for line in self.proc.stderr:
            m = re.search(r"listening on (\S+)", line)
            if m:
                self.addr = m.group(1)
            m = re.search(r"gRPC for Nacos 2.x/3.x clients on (\S+)", line)
            if m:
                self.grpc = m.group(1)
                break
        assert self.addr and self.grpc, "node did not start"
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.grpc_port = int(self.grpc.rsplit(":", 1)[1])
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def http(self, path, method="GET"):
        req = urllib.request.Request(f"http://{self.addr}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read().decode()
        return json.loads(body) if body[:1] in "{[" else body

    def hosts(self, service, group="DEFAULT_GROUP", namespace="public"):
        v = self.http(f"/nacos/v1/ns/instance/list?serviceName={service}&groupName={group}&namespaceId={namespace}")
        return sorted((h["ip"], h["port"]) for h in v["hosts"])

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0

    def metric(self, name):
        for line in self.http("/metrics").splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
        raise AssertionError(f"no {name}")


def eventually(f, timeout=10.0, step=0.05):
    deadline = time.time() + timeout
    while True:
        v = f()
        if v or time.time() > deadline:
            return v
        time.sleep(step)


@pytest.fixture
def node():
    n = Node("--cores", "2")
    yield n
    n.stop()


def client_config(node, namespace="", servers=None):
    """`servers`: a comma-separated server list (all with the node's gRPC
    port offset) instead of the node alone."""
    from v2.nacos import ClientConfigBuilder, GRPCConfig
    return (ClientConfigBuilder()
            .server_address(servers or f"127.0.0.1:{node.port}")
            .namespace_id(namespace)
            .log_level("WARNING")
            .grpc_config(GRPCConfig(grpc_timeout=5000, port_offset=node.grpc_port - node.port))
            .build())


def run(coro):
    return asyncio.run(coro)
