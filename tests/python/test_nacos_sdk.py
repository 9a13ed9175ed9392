"""The real nacos-sdk-python 1.0.0 client against distro-registry."""
import json
import threading
import time
import urllib.request

import nacos
import pytest


def client(node):
    return nacos.NacosClient(node.addr, namespace="public")


def ips(res):
    return sorted((h["ip"], h["port"]) for h in res["hosts"])


def wait_for(pred, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_register_list_with_cluster_filters_and_deregister(node):
    c = client(node)
    assert c.add_naming_instance("orders", "10.1.0.1", 8080, cluster_name="c1",
                                 metadata={"zone": "a"}, weight=2.0)
    assert c.add_naming_instance("orders", "10.1.0.2", 8080, cluster_name="c2")
    res = c.list_naming_instance("orders")
    assert res["name"] == "DEFAULT_GROUP@@orders"
    assert ips(res) == [("10.1.0.1", 8080), ("10.1.0.2", 8080)]
    h = [x for x in res["hosts"] if x["ip"] == "10.1.0.1"][0]
    assert h["metadata"] == {"zone": "a"}
    assert h["weight"] == 2.0
    assert h["clusterName"] == "c1"
    assert ips(c.list_naming_instance("orders", clusters="c2")) == [("10.1.0.2", 8080)]
    assert len(c.list_naming_instance("orders", clusters="c1,c2")["hosts"]) == 2
    assert c.list_naming_instance("orders", clusters="zz")["hosts"] == []
    got = c.get_naming_instance("orders", "10.1.0.1", 8080, cluster_name="c1")
    assert got["instanceId"] == "10.1.0.1#8080#c1#DEFAULT_GROUP@@orders"
    assert c.remove_naming_instance("orders", "10.1.0.2", 8080, cluster_name="c2")
    assert ips(c.list_naming_instance("orders")) == [("10.1.0.1", 8080)]


def test_sdk_beat_thread_keeps_instance_while_silent_one_expires(node):
    c = client(node)
    # heartbeat_interval starts the SDK's own beat thread (beat JSON with
    # the cluster inside it).
    assert c.add_naming_instance("pay", "10.2.0.1", 9000, cluster_name="c1", heartbeat_interval=0.5)
    assert c.add_naming_instance("pay", "10.2.0.2", 9000, cluster_name="c1")  # never beats
    saw_unhealthy = False
    end = time.time() + 6
    while time.time() < end:
        res = c.list_naming_instance("pay")
        by_ip = {h["ip"]: h for h in res["hosts"]}
        assert "10.2.0.1" in by_ip and by_ip["10.2.0.1"]["healthy"], res
        if "10.2.0.2" in by_ip and not by_ip["10.2.0.2"]["healthy"]:
            saw_unhealthy = True
        time.sleep(0.25)
    assert saw_unhealthy
    res = c.list_naming_instance("pay", healthy_only=True)
    assert ips(res) == [("10.2.0.1", 9000)]
    assert ips(c.list_naming_instance("pay")) == [("10.2.0.1", 9000)], "silent one deleted"
    # Deregister stops the beat thread; the instance stays gone.
    assert c.remove_naming_instance("pay", "10.2.0.1", 9000, cluster_name="c1")
    time.sleep(1.5)
    assert c.list_naming_instance("pay")["hosts"] == []


def test_send_heartbeat_registers_unknown_instance_from_beat(node):
    c = client(node)
    r = c.send_heartbeat("beaty", "10.3.0.1", 7000, cluster_name="c9", weight=3.0, metadata={"k": "v"})
    assert r["code"] == 10200
    assert r["clientBeatInterval"] == 5000
    res = c.list_naming_instance("beaty")
    assert ips(res) == [("10.3.0.1", 7000)]
    h = res["hosts"][0]
    assert h["clusterName"] == "c9"
    assert h["weight"] == 3.0
    assert h["metadata"] == {"k": "v"}
    # A later beat with another weight does not change the instance.
    c.send_heartbeat("beaty", "10.3.0.1", 7000, cluster_name="c9", weight=5.0, metadata={})
    h = c.list_naming_instance("beaty")["hosts"][0]
    assert h["weight"] == 3.0 and h["metadata"] == {"k": "v"}


def test_modify_instance(node):
    c = client(node)
    assert c.add_naming_instance("mod", "10.4.0.1", 80, cluster_name="c1", metadata={"a": "1"})
    assert c.modify_naming_instance("mod", "10.4.0.1", 80, cluster_name="c1", weight=4.5,
                                    metadata={"a": "2", "b": "3"})
    h = c.list_naming_instance("mod")["hosts"][0]
    assert h["weight"] == 4.5
    assert h["metadata"] == {"a": "2", "b": "3"}
    # enable=False (the SDK's spelling) hides it from lists.
    assert c.modify_naming_instance("mod", "10.4.0.1", 80, cluster_name="c1", enable=False)
    assert c.list_naming_instance("mod")["hosts"] == []
    assert c.modify_naming_instance("mod", "10.4.0.1", 80, cluster_name="c1", enable=True)
    assert len(c.list_naming_instance("mod")["hosts"]) == 1


def test_groups_and_namespaces(node):
    c = client(node)
    assert c.add_naming_instance("gsvc", "10.5.0.1", 80, cluster_name="c1", group_name="g1")
    assert ips(c.list_naming_instance("gsvc", group_name="g1")) == [("10.5.0.1", 80)]
    assert c.list_naming_instance("gsvc")["hosts"] == []
    other = nacos.NacosClient(node.addr, namespace="dev")
    assert other.add_naming_instance("gsvc", "10.5.0.2", 80, cluster_name="c1", group_name="g1")
    assert ips(other.list_naming_instance("gsvc", group_name="g1")) == [("10.5.0.2", 80)]
    assert ips(c.list_naming_instance("gsvc", group_name="g1")) == [("10.5.0.1", 80)]


def test_subscribe_sees_added_and_deleted(node):
    c = client(node)
    events = []
    lock = threading.Lock()

    def on_change(event, instance):
        with lock:
            events.append((event, instance.instance["ip"]))

    listener = nacos.listener.SubscribeListener(on_change, "test-listener")

    assert c.add_naming_instance("sub", "10.6.0.1", 80, cluster_name="c1")
    c.subscribe(listener, 1, service_name="sub")
    try:
        time.sleep(1.5)  # first poll fills the SDK's cache
        assert c.add_naming_instance("sub", "10.6.0.2", 80, cluster_name="c1")
        assert wait_for(lambda: ("ADDED", "10.6.0.2") in events), events
        assert c.remove_naming_instance("sub", "10.6.0.1", 80, cluster_name="c1")
        assert wait_for(lambda: ("DELETED", "10.6.0.1") in events), events
    finally:
        c.stop_subscribe()


def test_bad_input_raises_and_changes_nothing(node):
    c = client(node)
    with pytest.raises(nacos.exception.NacosException):
        c.add_naming_instance("bad", "not-an-ip", 80, cluster_name="c1")
    with pytest.raises(nacos.exception.NacosException):
        c.add_naming_instance("bad", "10.7.0.1", 70000, cluster_name="c1")
    with pytest.raises(nacos.exception.NacosException):
        c.add_naming_instance("bad", "10.7.0.1", 80, cluster_name="c1", weight=-1)
    assert c.list_naming_instance("bad")["hosts"] == []
    body = urllib.request.urlopen(f"http://{node.addr}/nacos/v1/ns/operator/metrics").read()
    assert json.loads(body)["instanceCount"] == 0
