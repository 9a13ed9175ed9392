"""The real Rust crate nacos-sdk 0.8.3 (gRPC), in the program under
tests/rust_v2 (its own crate and lockfile, built by tests/run.sh, which
passes its path in NACOS_RS_CHECK): register, subscribe and receive a
push, deregister, against the real binary."""
import os
import subprocess

import pytest

from conftest import Node

CHECK = os.environ.get("NACOS_RS_CHECK")


@pytest.mark.skipif(not CHECK, reason="NACOS_RS_CHECK unset: tests/run.sh builds tests/rust_v2 and sets it")
def test_the_rust_client_registers_subscribes_is_pushed_and_deregisters():
    n = Node("--cores", "2", "--push-delay-ms", "50")
    try:
        r = subprocess.run([CHECK, n.addr, str(n.grpc_port)], capture_output=True, text=True, timeout=120)
        steps = [l for l in r.stdout.splitlines() if l.startswith("ok: ")]
        assert r.returncode == 0, f"{steps}\n{r.stderr[-3000:]}"
        assert steps == [
            "ok: register listed to HTTP clients",
            "ok: push of an HTTP register",
            "ok: push of the deregister",
            "ok: get_all_instances after deregister",
            "ok: all steps",
        ], r.stdout
    finally:
        n.stop()
