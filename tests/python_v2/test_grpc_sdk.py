"""nacos-sdk-python 3.2.0 (`v2`, gRPC) against the real binary, and raw
gRPC calls (grpcio, which that client ships on) for bad input."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest

from conftest import Node, client_config, eventually, run


async def _service(node, namespace=""):
    from v2.nacos import NacosNamingService
    return await NacosNamingService.create_naming_service(client_config(node, namespace))


def test_register_is_listed_to_http_clients_and_deregister_removes_it(node):
    from v2.nacos import RegisterInstanceParam, DeregisterInstanceParam, ListServiceParam

    async def go():
        ns = await _service(node)
        assert await ns.register_instance(RegisterInstanceParam(
            service_name="orders", ip="10.0.0.5", port=8080, weight=2.5,
            cluster_name="c1", metadata={"zone": "a"}))
        v = node.http("/nacos/v1/ns/instance/list?serviceName=orders")
        assert [(h["ip"], h["port"], h["weight"], h["clusterName"], h["metadata"], h["healthy"])
                for h in v["hosts"]] == [("10.0.0.5", 8080, 2.5, "c1", {"zone": "a"}, True)]
        svcs = await ns.list_services(ListServiceParam(page_no=1, page_size=10))
        assert svcs.count == 1 and svcs.services == ["orders"]
        assert await ns.deregister_instance(DeregisterInstanceParam(
            service_name="orders", ip="10.0.0.5", port=8080, cluster_name="c1"))
        assert node.hosts("orders") == []
        await ns.shutdown()
    run(go())


def test_a_second_register_or_a_batch_replaces_the_connections_instances(node):
    from v2.nacos import RegisterInstanceParam, BatchRegisterInstanceParam

    async def go():
        ns = await _service(node)
        await ns.register_instance(RegisterInstanceParam(service_name="s", ip="10.0.0.1", port=1))
        await ns.register_instance(RegisterInstanceParam(service_name="s", ip="10.0.0.2", port=2))
        assert node.hosts("s") == [("10.0.0.2", 2)], "one publisher per (connection, service)"
        await ns.batch_register_instances(BatchRegisterInstanceParam(service_name="s", instances=[
            RegisterInstanceParam(service_name="s", ip="10.0.0.3", port=3),
            RegisterInstanceParam(service_name="s", ip="10.0.0.4", port=4)]))
        assert node.hosts("s") == [("10.0.0.3", 3), ("10.0.0.4", 4)]
        # An HTTP-registered instance of the same service is another client's.
        node.http("/nacos/v1/ns/instance?serviceName=s&ip=10.0.0.9&port=9", method="POST")
        await ns.batch_register_instances(BatchRegisterInstanceParam(service_name="s", instances=[
            RegisterInstanceParam(service_name="s", ip="10.0.0.5", port=5)]))
        assert node.hosts("s") == [("10.0.0.5", 5), ("10.0.0.9", 9)]
        await ns.shutdown()
    run(go())
    # (Checked outside the event loop: the client closes its channel there.)
    assert eventually(lambda: node.hosts("s") == [("10.0.0.9", 9)]), "shutdown releases"


def test_namespaces_and_groups_are_isolated(node):
    from v2.nacos import RegisterInstanceParam, ListServiceParam

    async def go():
        dev = await _service(node, "dev")
        pub = await _service(node, "")
        await dev.register_instance(RegisterInstanceParam(service_name="x", group_name="G1", ip="10.1.0.1", port=1))
        await pub.register_instance(RegisterInstanceParam(service_name="x", ip="10.2.0.1", port=1))
        assert node.hosts("x", group="G1", namespace="dev") == [("10.1.0.1", 1)]
        assert node.hosts("x") == [("10.2.0.1", 1)]
        assert node.hosts("x", namespace="dev") == []
        l = await dev.list_services(ListServiceParam(namespace_id="dev", group_name="G1", page_no=1, page_size=10))
        assert l.services == ["x"]
        await dev.shutdown()
        await pub.shutdown()
    run(go())


def test_service_list_pages(node):
    from v2.nacos import RegisterInstanceParam, ListServiceParam

    async def go():
        ns = await _service(node)
        for i in range(5):
            await ns.register_instance(RegisterInstanceParam(service_name=f"p{i}", ip="10.0.0.1", port=1))
        pages = [await ns.list_services(ListServiceParam(page_no=p, page_size=2)) for p in (1, 2, 3, 4)]
        assert [p.count for p in pages] == [5, 5, 5, 5]
        assert [p.services for p in pages] == [["p0", "p1"], ["p2", "p3"], ["p4"], []]
        await ns.shutdown()
    run(go())


CLIENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {here!r})
    from conftest import client_config
    from v2.nacos import NacosNamingService, RegisterInstanceParam

    class N: pass
    n = N(); n.port = {port}; n.grpc_port = {grpc}
    async def main():
        ns = await NacosNamingService.create_naming_service(client_config(n, servers={servers!r}))
        await ns.register_instance(RegisterInstanceParam(service_name={service!r}, ip={ip!r}, port=1))
        print("registered", flush=True)
        await asyncio.sleep(120)
    asyncio.run(main())
""")


def client_process(node, service, ip, servers=None):
    """A client in a process of its own: registers one instance, says so,
    and stays connected for two minutes."""
    code = CLIENT.format(here=os.path.dirname(__file__), port=node.port, grpc=node.grpc_port,
                         servers=servers, service=service, ip=ip)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "registered"
    return p


def test_a_killed_client_process_loses_its_instances_at_once(node):
    p = client_process(node, "killed", "10.9.0.1")
    try:
        assert node.hosts("killed") == [("10.9.0.1", 1)]
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        # The kernel closes the socket; the node releases the instance.
        assert eventually(lambda: node.hosts("killed") == [], timeout=5)
    finally:
        if p.poll() is None:
            p.kill()


# Raw calls: Payload built with the client's own generated protobuf code.
def _payload(kind, body):
    from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2 import Payload, Metadata
    from google.protobuf.any_pb2 import Any
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Payload(metadata=Metadata(type=kind, clientIp="127.0.0.1"), body=Any(value=raw)).SerializeToString()


def _parse(b):
    from v2.nacos.transport.grpcauto.nacos_grpc_service_pb2 import Payload
    p = Payload.FromString(b)
    return p.metadata.type, json.loads(p.body.value)


def test_raw_calls_unregistered_connections_and_bad_input(node):
    ch = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
    unary = ch.unary_unary("/Request/request")
    kind, v = _parse(unary(_payload("ServerCheckRequest", {}), timeout=5))
    assert kind == "ServerCheckResponse" and v["connectionId"] and v["errorCode"] == 0
    # Before ConnectionSetupRequest: 301 for anything but the server check.
    reg = {"type": "registerInstance", "serviceName": "raw", "instance": {"ip": "10.0.0.1", "port": 1}}
    kind, v = _parse(unary(_payload("InstanceRequest", reg), timeout=5))
    assert (kind, v["errorCode"], v["message"]) == ("ErrorResponse", 301, "Connection is unregistered.")
    # Set the connection up on the stream, then wait until it counts.
    import queue, threading
    q = queue.Queue()
    stream = ch.stream_stream("/BiRequestStream/requestBiStream")
    setup = _payload("ConnectionSetupRequest", {"labels": {"module": "naming"}, "tenant": ""})
    def gen():
        yield setup
        q.get()  # keep the stream open until the test ends
    resp = stream(gen())

    def drain():
        try:
            for _ in resp:
                pass
        except grpc.RpcError:
            pass  # cancelled when the channel closes at the end

    threading.Thread(target=drain, daemon=True).start()
    assert eventually(lambda: _parse(unary(_payload("HealthCheckRequest", {}), timeout=5))[0] == "HealthCheckResponse")
    bad = [
        (_payload("NoSuchRequest", {}), 302),
        (_payload("InstanceRequest", b"{not json"), 502),
        (_payload("InstanceRequest", {"type": "registerInstance", "serviceName": "raw", "instance": {"port": 1}}), 400),
        (_payload("InstanceRequest", {"type": "explode", "serviceName": "raw"}), 400),
        (b"\xff\xff\xff", 502),
    ]
    for payload, code in bad:
        kind, v = _parse(unary(payload, timeout=5))
        assert (kind, v["errorCode"]) == ("ErrorResponse", code), v
        assert isinstance(v["message"], str) and v["message"]
    assert node.hosts("raw") == [], "nothing changed"
    # Unknown method: UNIMPLEMENTED; the connection and the node survive.
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/No/such")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    kind, v = _parse(unary(_payload("InstanceRequest", reg), timeout=5))
    assert (kind, v["type"]) == ("InstanceResponse", "registerInstance")
    assert node.hosts("raw") == [("10.0.0.1", 1)]
    q.put(None)
    ch.close()
    assert eventually(lambda: node.hosts("raw") == []), "closing releases"


def test_oversized_messages_are_refused():
    n = Node("--cores", "1", "--grpc-message-bytes-max", "1000")
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{n.grpc_port}")
        unary = ch.unary_unary("/Request/request")
        with pytest.raises(grpc.RpcError) as e:
            unary(_payload("ServerCheckRequest", {"pad": "x" * 5000}), timeout=5)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # (grpcio sends small messages uncompressed even when asked to
        # compress; the compressed flag's refusal is tested in codec.rs.)
        kind, _ = _parse(unary(_payload("ServerCheckRequest", {}), timeout=5))
        assert kind == "ServerCheckResponse", "the node still answers"
        ch.close()
    finally:
        n.stop()


def test_subscribers_are_pushed_changes_from_grpc_and_http_clients(node):
    from v2.nacos import RegisterInstanceParam, SubscribeServiceParam
    import asyncio

    async def go():
        seen = []

        async def cb(instances):
            seen.append(sorted((i.ip, i.port, i.healthy) for i in instances))

        sub = await _service(node)
        pub = await _service(node)
        await sub.subscribe(SubscribeServiceParam(service_name="pushed", subscribe_callback=cb))
        await pub.register_instance(RegisterInstanceParam(service_name="pushed", ip="10.5.0.1", port=1))

        async def wait_for(want):
            for _ in range(100):
                if seen and seen[-1] == want:
                    return True
                await asyncio.sleep(0.05)
            return False

        assert await wait_for([("10.5.0.1", 1, True)]), seen
        # A change through the 1.x HTTP API reaches the 2.x subscriber too.
        await asyncio.to_thread(
            node.http, "/nacos/v1/ns/instance?serviceName=pushed&ip=10.5.0.2&port=2", "POST")
        assert await wait_for([("10.5.0.1", 1, True), ("10.5.0.2", 2, True)]), seen
        await asyncio.to_thread(
            node.http, "/nacos/v1/ns/instance?serviceName=pushed&ip=10.5.0.2&port=2&healthy=false", "PUT")
        assert await wait_for([("10.5.0.1", 1, True), ("10.5.0.2", 2, False)]), \
            f"unhealthy instances are pushed with healthy=false: {seen}"
        await pub.shutdown()
        # Alone and unhealthy, it is listed healthy: the protect threshold
        # (0.0, as Nacos) is reached.
        assert await wait_for([("10.5.0.2", 2, True)]), f"the publisher left: {seen}"
        await sub.shutdown()
    run(go())
    # The SDK answers every push: none was dropped.
    assert _metric(node, "registry_grpc_pushes_dropped_total") == 0


def _metric(node, name):
    for line in node.http("/metrics").splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {name}")


def test_pushes_to_a_client_that_never_answers_are_bounded():
    """A subscriber that never acks gets PUSHES_UNACKED_MAX (64) pushes,
    then nothing more is buffered for it; the drops are counted."""
    import queue
    import threading
    import time
    n = Node("--cores", "2", "--push-delay-ms", "10", "--expiry-tick-ms", "10")
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{n.grpc_port}")
        unary = ch.unary_unary("/Request/request")
        q = queue.Queue()
        setup = _payload("ConnectionSetupRequest", {"labels": {"module": "naming"}})

        def gen():
            yield setup
            q.get()  # never answers a push

        resp = ch.stream_stream("/BiRequestStream/requestBiStream")(gen())
        got = []

        def drain():
            try:
                for m in resp:
                    got.append(_parse(m)[0])
            except grpc.RpcError:
                pass

        threading.Thread(target=drain, daemon=True).start()
        assert eventually(lambda: _parse(unary(_payload("HealthCheckRequest", {}), timeout=5))[0]
                          == "HealthCheckResponse")
        kind, v = _parse(unary(_payload("SubscribeServiceRequest",
                                        {"serviceName": "bounded", "subscribe": True}), timeout=5))
        assert kind == "SubscribeServiceResponse", v
        for i in range(100):
            n.http(f"/nacos/v1/ns/instance?serviceName=bounded&ip=10.7.0.{i + 1}&port=1", method="POST")
            time.sleep(0.03)
        assert eventually(lambda: _metric(n, "registry_grpc_pushes_dropped_total") > 0), \
            f"{len(got)} pushes received"
        time.sleep(0.3)
        assert got.count("NotifySubscriberRequest") == 64, got[-3:]
        q.put(None)
        ch.close()
    finally:
        n.stop()


def test_a_frozen_client_is_probed_ejected_and_comes_back_when_thawed():
    """SIGSTOP: the connection stays open but nothing answers. With the
    probe shortened to 1 s idle + 1 s timeout, the node sends a
    ClientDetectionRequest, ejects the connection and removes its
    instance; a live client beside it answers its probes and stays. After
    SIGCONT the frozen client reconnects and its redo registers again."""
    n = Node("--cores", "2", "--grpc-probe-idle-ms", "1000", "--grpc-probe-timeout-ms", "1000")
    frozen = live = None
    try:
        frozen = client_process(n, "frozen", "10.8.0.1")
        live = client_process(n, "alive", "10.8.0.2")
        frozen.send_signal(signal.SIGSTOP)
        assert eventually(lambda: n.hosts("frozen") == [], timeout=10), "ejected"
        assert _metric(n, "registry_grpc_ejected_total") >= 1
        import time
        time.sleep(3)  # several probe rounds for the live client
        assert n.hosts("alive") == [("10.8.0.2", 1)], "a client that answers probes stays"
        frozen.send_signal(signal.SIGCONT)
        assert eventually(lambda: n.hosts("frozen") == [("10.8.0.1", 1)], timeout=30), "redo"
    finally:
        for p in (frozen, live):
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
        n.stop()


def test_a_stream_that_never_answers_a_probe_ends_with_a_non_ok_status():
    import queue
    import threading
    n = Node("--cores", "1", "--grpc-probe-idle-ms", "500", "--grpc-probe-timeout-ms", "500")
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{n.grpc_port}")
        q = queue.Queue()

        def gen():
            yield _payload("ConnectionSetupRequest", {"labels": {"module": "naming"}})
            q.get()

        got, status = [], []

        def drain():
            try:
                for m in ch.stream_stream("/BiRequestStream/requestBiStream")(gen()):
                    got.append(_parse(m))
            except grpc.RpcError as e:
                status.append(e.code())

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        t.join(timeout=10)
        assert status == [grpc.StatusCode.UNAVAILABLE], (status, got)
        assert got and {k for k, _ in got} == {"ClientDetectionRequest"}, got
        assert got[0][1]["module"] == "internal" and got[0][1]["requestId"]
        q.put(None)
        ch.close()
    finally:
        n.stop()


def test_with_auth_the_grpc_client_logs_in_and_its_token_is_checked():
    """--auth: the 2.x client logs in over HTTP and sends its token in each
    gRPC request's metadata; a reader may list but not register."""
    import tempfile
    from v2.nacos import ClientConfigBuilder, GRPCConfig, NacosNamingService, \
        RegisterInstanceParam, ListInstanceParam
    from conftest import BIN

    def bcrypt(pw):
        return subprocess.run([BIN, "hash-password"], input=pw + "\n", capture_output=True,
                              text=True, check=True).stdout.strip()
    fd, path = tempfile.mkstemp(suffix=".toml", prefix="dr-users-v2-")
    with os.fdopen(fd, "w") as f:
        f.write(f'[[users]]\nusername = "nacos"\npassword_hash = "{bcrypt("nacos-pw")}"\nroles = ["ROLE_ADMIN"]\n\n'
                f'[[users]]\nusername = "reader"\npassword_hash = "{bcrypt("reader-pw")}"\nroles = ["r"]\n\n'
                '[[roles]]\nname = "r"\npermissions = [{ resource = "*:*:naming/*", action = "r" }]\n')
    n = Node("--cores", "2", "--auth", "--auth-secret", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
             "--auth-users", path)

    def config(user, pw):
        return (ClientConfigBuilder().server_address(f"127.0.0.1:{n.port}").namespace_id("")
                .username(user).password(pw).log_level("WARNING")
                .grpc_config(GRPCConfig(grpc_timeout=5000, port_offset=n.grpc_port - n.port)).build())

    async def go():
        admin = await NacosNamingService.create_naming_service(config("nacos", "nacos-pw"))
        assert await admin.register_instance(RegisterInstanceParam(service_name="orders", ip="10.0.0.5", port=8080))
        reader = await NacosNamingService.create_naming_service(config("reader", "reader-pw"))
        listed = await reader.list_instances(ListInstanceParam(service_name="orders", healthy_only=None, subscribe=False))
        assert [(i.ip, i.port) for i in listed] == [("10.0.0.5", 8080)]
        with pytest.raises(Exception) as e:
            await reader.register_instance(RegisterInstanceParam(service_name="orders", ip="10.0.0.6", port=8080))
        await admin.shutdown()
        await reader.shutdown()
        return str(e.value)
    try:
        err = run(go())
        assert "403" in err or "authorization failed" in err, err
        refused = [line for line in n.http("/metrics").splitlines()
                   if line.startswith('registry_auth_refusals_total{reason="forbidden"}')]
        assert refused and int(refused[0].split()[1]) >= 1, refused
    finally:
        n.stop()
        os.unlink(path)
