"""Starts the real distro-registry binary for the SDK tests."""
import os
import re
import socket
import subprocess
import threading

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
        self.addr = None
        for line in self.proc.stderr:
            m = re.search(r"listening on (\S+)", line)
            if m:
                self.addr = m.group(1)
                break
        assert self.addr, "node did not start"
        # Keep draining the log so the node never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def cluster():
    """Three clustered nodes with short timeouts; yields the Node list."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [
        Node("--peers", ",".join(addrs), "--cluster-token", "py-token", "--cores", "1", "--grpc-port", "0",
             "--report-interval-ms", "300", "--verify-interval-ms", "1000",
             "--unhealthy-timeout-ms", "2000", "--delete-timeout-ms", "4000",
             "--expiry-tick-ms", "50", bind=a)
        for a in addrs
    ]
    yield nodes
    for n in nodes:
        if n.proc.poll() is None:
            n.stop()


@pytest.fixture
def node():
    # Short timeouts so that expiry shows within seconds.
    n = Node("--unhealthy-timeout-ms", "2000", "--delete-timeout-ms", "4000", "--expiry-tick-ms", "50")
    yield n
    n.stop()
