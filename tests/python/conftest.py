"""Starts the real distro-registry binary for the SDK tests."""
import os
import re
import subprocess
import threading

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("DR_BIN", os.path.join(ROOT, "target", "debug", "distro-registry"))


class Node:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [BIN, "--bind", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
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


@pytest.fixture
def node():
    # Short timeouts so that expiry shows within seconds.
    n = Node("--unhealthy-timeout-ms", "2000", "--delete-timeout-ms", "4000", "--expiry-tick-ms", "50")
    yield n
    n.stop()
