//! Heartbeat expiry (shortened with `preserved.*` metadata) and UDP push
//! received by a real UDP socket.

mod common;
use common::*;
use std::io::Read;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn hosts(n: &Node, svc: &str) -> Vec<serde_json::Value> {
    n.json(&format!("{NS}/instance/list?serviceName={svc}"))["hosts"]
        .as_array()
        .unwrap()
        .clone()
}

const SHORT: &str = "preserved.heart.beat.timeout%3D600%2Cpreserved.ip.delete.timeout%3D1200%2Cpreserved.heart.beat.interval%3D200";

#[test]
fn silent_instances_turn_unhealthy_then_disappear_while_beating_ones_stay() {
    let n = Node::start(&["--cores", "2"]);
    for ip in ["10.0.0.1", "10.0.0.2"] {
        let r = n.req(
            "POST",
            &format!("{NS}/instance?serviceName=e&ip={ip}&port=1&metadata={SHORT}"),
            "",
        );
        assert_eq!(r.status, 200);
    }
    let start = Instant::now();
    let mut saw_unhealthy = false;
    // 10.0.0.2 beats every 200 ms; 10.0.0.1 is silent.
    while start.elapsed() < Duration::from_millis(2500) {
        let r = n.req(
            "PUT",
            &format!("{NS}/instance/beat?serviceName=e&ip=10.0.0.2&port=1"),
            "",
        );
        assert_eq!(
            r.json()["code"],
            10200,
            "the beating instance must never be lost"
        );
        let h = hosts(&n, "e");
        if h.len() == 2 && h[0]["healthy"] == false {
            saw_unhealthy = true;
            assert!(
                start.elapsed() >= Duration::from_millis(550),
                "unhealthy too early"
            );
        }
        assert!(h
            .iter()
            .any(|x| x["ip"] == "10.0.0.2" && x["healthy"] == true));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        saw_unhealthy,
        "the silent instance should have been unhealthy for a while"
    );
    let h = hosts(&n, "e");
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["ip"], "10.0.0.2");
    // The silent one is gone: a light beat now gets 20404.
    let r = n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=e&ip=10.0.0.1&port=1"),
        "",
    );
    assert_eq!(r.json()["code"], 20404);
}

#[test]
fn node_wide_timeouts_apply_and_persistent_instances_stay() {
    let n = Node::start(&[
        "--unhealthy-timeout-ms",
        "300",
        "--delete-timeout-ms",
        "600",
    ]);
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=p&ip=10.0.0.1&port=1"),
        "",
    );
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=p&ip=10.0.0.2&port=1&ephemeral=false"),
        "",
    );
    assert!(eventually(Duration::from_secs(3), || hosts(&n, "p").len() == 1));
    std::thread::sleep(Duration::from_millis(700));
    let h = hosts(&n, "p");
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["ip"], "10.0.0.2");
    assert_eq!(h[0]["ephemeral"], false);
}

fn recv_push(sock: &UdpSocket) -> (serde_json::Value, Vec<u8>) {
    let mut buf = vec![0u8; 65536];
    let (k, _) = sock.recv_from(&mut buf).expect("a push datagram");
    let raw = buf[..k].to_vec();
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut s)
            .unwrap();
        s
    } else {
        String::from_utf8(raw.clone()).unwrap()
    };
    (serde_json::from_str(&text).unwrap(), raw)
}

#[test]
fn udp_push_shape_gzip_ack_and_retry() {
    let n = Node::start(&[
        "--cores",
        "2",
        "--push-delay-ms",
        "50",
        "--push-ack-timeout-ms",
        "400",
    ]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let l = n.json(&format!(
        "{NS}/instance/list?serviceName=u&udpPort={port}&clientIP=127.0.0.1"
    ));
    assert_eq!(l["cacheMillis"], 10000, "subscribed callers get 10 s");
    // A change: one push, shaped as Nacos does.
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=u&ip=10.0.0.1&port=1"),
        "",
    );
    let (push, raw) = recv_push(&sock);
    assert!(!raw.starts_with(&[0x1f, 0x8b]), "small pushes are plain");
    assert_eq!(push["type"], "dom");
    let data: serde_json::Value = serde_json::from_str(push["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["hosts"][0]["ip"], "10.0.0.1");
    assert_eq!(data["name"], "DEFAULT_GROUP@@u");
    let id = push["lastRefTime"].as_u64().unwrap();
    // No ack: the same push comes once more after the ack timeout.
    let (again, _) = recv_push(&sock);
    assert_eq!(again["lastRefTime"].as_u64().unwrap(), id);
    sock.set_read_timeout(Some(Duration::from_millis(1200)))
        .unwrap();
    let mut buf = [0u8; 65536];
    assert!(sock.recv_from(&mut buf).is_err(), "only one retry");

    // Many instances: the push is gzip-compressed; acked, it is not resent.
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    n.get(&format!(
        "{NS}/instance/list?serviceName=u&udpPort={port}&clientIP=127.0.0.1"
    ));
    for i in 2..40 {
        n.req(
            "POST",
            &format!("{NS}/instance?serviceName=u&ip=10.0.1.{i}&port=1"),
            "",
        );
    }
    let mut last = serde_json::Value::Null;
    let mut saw_gzip = false;
    // Drain every push for the burst, acking each.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    while let Ok((k, from)) = sock.recv_from(&mut buf) {
        let raw = &buf[..k];
        saw_gzip |= raw.starts_with(&[0x1f, 0x8b]);
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            flate2::read::GzDecoder::new(raw)
                .read_to_string(&mut s)
                .unwrap();
            s
        } else {
            String::from_utf8_lossy(raw).into_owned()
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ack = format!(
            r#"{{"type":"push-ack","lastRefTime":"{}","data":""}}"#,
            v["lastRefTime"]
        );
        sock.send_to(ack.as_bytes(), from).unwrap();
        last = v;
    }
    assert!(saw_gzip, "a push of 39 instances is over 1 KiB");
    let data: serde_json::Value = serde_json::from_str(last["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        data["hosts"].as_array().unwrap().len(),
        39,
        "coalesced pushes end at the final state"
    );
    // Acked: nothing is resent after the ack timeout.
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "acked pushes are not resent"
    );
    let m = n.get("/metrics").body;
    assert!(m.contains("registry_push_acks_total"), "{m}");
}

#[test]
fn subscribers_expire_without_queries() {
    let n = Node::start(&["--push-delay-ms", "50", "--subscriber-ttl-ms", "300"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    n.get(&format!(
        "{NS}/instance/list?serviceName=x&udpPort={port}&clientIP=127.0.0.1"
    ));
    std::thread::sleep(Duration::from_millis(500));
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=x&ip=10.0.0.1&port=1"),
        "",
    );
    sock.set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut buf = [0u8; 65536];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "expired subscriber got a push"
    );
}

#[test]
fn expiry_is_pushed() {
    let n = Node::start(&["--push-delay-ms", "50"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let port = sock.local_addr().unwrap().port();
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=ex&ip=10.0.0.1&port=1&metadata={SHORT}"),
        "",
    );
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=ex&ip=10.0.0.2&port=1"),
        "",
    );
    n.get(&format!(
        "{NS}/instance/list?serviceName=ex&udpPort={port}&clientIP=127.0.0.1"
    ));
    // First push: 10.0.0.1 unhealthy (after 600 ms).
    let (p, _) = recv_push(&sock);
    let data: serde_json::Value = serde_json::from_str(p["data"].as_str().unwrap()).unwrap();
    let h = data["hosts"].as_array().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0]["healthy"], false);
    let (p, _) = recv_push(&sock);
    // Either the retry of the first or the deletion; wait for the deletion.
    let mut data: serde_json::Value = serde_json::from_str(p["data"].as_str().unwrap()).unwrap();
    if data["hosts"].as_array().unwrap().len() == 2 {
        let (p, _) = recv_push(&sock);
        data = serde_json::from_str(p["data"].as_str().unwrap()).unwrap();
    }
    assert_eq!(data["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(data["hosts"][0]["ip"], "10.0.0.2");
}
