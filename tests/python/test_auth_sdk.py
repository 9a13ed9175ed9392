"""nacos-sdk-python 1.0.0 with username/password against a node with --auth."""
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import nacos
import pytest

from conftest import BIN, Node

# Base64 of 32 bytes.
SECRET = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def bcrypt_hash(password):
    out = subprocess.run([BIN, "hash-password"], input=password + "\n", capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.fixture
def auth_node():
    users = f"""
[[users]]
username = "nacos"
password_hash = "{bcrypt_hash('nacos-pw')}"
roles = ["ROLE_ADMIN"]

[[users]]
username = "reader"
password_hash = "{bcrypt_hash('reader-pw')}"
roles = ["read-all"]

[[roles]]
name = "read-all"
permissions = [{{ resource = "*:*:naming/*", action = "r" }}]
"""
    fd, path = tempfile.mkstemp(suffix=".toml", prefix="dr-users-py-")
    with os.fdopen(fd, "w") as f:
        f.write(users)
    n = Node("--auth", "--auth-secret", SECRET, "--auth-users", path, "--grpc-port", "0",
             "--unhealthy-timeout-ms", "2000", "--delete-timeout-ms", "4000", "--expiry-tick-ms", "50")
    yield n
    n.stop()
    os.unlink(path)


def http_status(url):
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ips(res):
    return sorted((h["ip"], h["port"]) for h in res["hosts"])


def test_sdk_logs_in_registers_beats_lists_and_deregisters(auth_node):
    # Auth is really on: the same list without a token is refused.
    status, body = http_status(f"http://{auth_node.addr}/nacos/v1/ns/instance/list?serviceName=pay")
    assert status == 403 and "user not found!" in body, (status, body)

    c = nacos.NacosClient(auth_node.addr, namespace="public", username="nacos", password="nacos-pw")
    assert c.token and c.token_ttl == 18000
    assert c.add_naming_instance("pay", "10.2.0.1", 9000, cluster_name="c1", heartbeat_interval=0.5)
    assert c.add_naming_instance("pay", "10.2.0.2", 9000, cluster_name="c1")  # never beats
    # Past the delete timeout the beating one stays healthy, the silent one is gone.
    time.sleep(5)
    res = c.list_naming_instance("pay")
    assert ips(res) == [("10.2.0.1", 9000)], res
    assert res["hosts"][0]["healthy"]
    assert c.remove_naming_instance("pay", "10.2.0.1", 9000, cluster_name="c1")
    time.sleep(1.5)
    assert c.list_naming_instance("pay")["hosts"] == []


def test_reader_lists_but_may_not_register(auth_node):
    admin = nacos.NacosClient(auth_node.addr, namespace="public", username="nacos", password="nacos-pw")
    assert admin.add_naming_instance("orders", "10.1.0.1", 8080)
    reader = nacos.NacosClient(auth_node.addr, namespace="public", username="reader", password="reader-pw")
    assert ips(reader.list_naming_instance("orders")) == [("10.1.0.1", 8080)]
    with pytest.raises(Exception) as e:
        reader.add_naming_instance("orders", "10.1.0.2", 8080)
    # The SDK's word for a 403 on a naming request.
    assert "Insufficient privilege" in str(e.value), e.value
    assert ips(admin.list_naming_instance("orders")) == [("10.1.0.1", 8080)]


def test_wrong_password_is_refused(auth_node):
    with pytest.raises(Exception) as e:
        nacos.NacosClient(auth_node.addr, namespace="public", username="nacos", password="wrong")
    assert "403" in str(e.value) or "Forbidden" in str(e.value), e.value
    # Nothing was let in under that name.
    admin = nacos.NacosClient(auth_node.addr, namespace="public", username="nacos", password="nacos-pw")
    assert admin.list_naming_instance("anything")["hosts"] == []


NODE_CHECK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "node", "naming_check.js")


def npm_client(addr, username, password, service, ip):
    return subprocess.run(["node", NODE_CHECK, addr, username, password, service, ip],
                          capture_output=True, text=True, timeout=60)


def test_npm_nacos_client_with_username_and_password(auth_node):
    # The npm client sends username and password on every request.
    r = npm_client(auth_node.addr, "nacos", "nacos-pw", "npm-svc", "10.7.0.1")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen == {"listed": ["10.7.0.1:8080"]}, seen
    admin = nacos.NacosClient(auth_node.addr, namespace="public", username="nacos", password="nacos-pw")
    assert admin.list_naming_instance("npm-svc")["hosts"] == [], "the npm client deregistered it"
    # A wrong password: the register is refused and nothing is listed.
    r = npm_client(auth_node.addr, "nacos", "wrong", "npm-svc", "10.7.0.2")
    assert r.returncode == 1, r.stdout
    assert "code: 403" in r.stderr and "unknown user!" in r.stderr, r.stderr
    assert admin.list_naming_instance("npm-svc")["hosts"] == []
