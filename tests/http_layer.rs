//! The hand-written HTTP layer: keep-alive, pipelining, limits, malformed
//! input, half-written requests, chunked bodies, idle close, caps.

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;

#[test]
fn keep_alive_and_pipelining() {
    let n = Node::start(&[]);
    let mut s = n.connect();
    // Three requests in one write, including a register that the third reads.
    let mut raw = String::new();
    raw.push_str("POST /nacos/v1/ns/instance?serviceName=p&ip=10.0.0.1&port=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    raw.push_str("GET /nacos/v1/console/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n");
    raw.push_str("GET /nacos/v1/ns/instance/list?serviceName=p HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(raw.as_bytes()).unwrap();
    let a = read_response(&mut s).unwrap();
    let b = read_response(&mut s).unwrap();
    let c = read_response(&mut s).unwrap();
    assert_eq!((a.status, a.body.as_str()), (200, "ok"));
    assert_eq!((b.status, b.body.as_str()), (200, "OK"));
    assert_eq!(c.json()["hosts"][0]["ip"], "10.0.0.1");
    // Same connection, many more requests.
    for _ in 0..100 {
        send(&mut s, "GET", "/nacos/v1/console/health/liveness", "", &[]);
        assert_eq!(read_response(&mut s).unwrap().status, 200);
    }
    // A pipeline longer than the per-write batch.
    let many = "GET /nacos/v1/console/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n".repeat(300);
    s.write_all(many.as_bytes()).unwrap();
    for _ in 0..300 {
        assert_eq!(read_response(&mut s).unwrap().status, 200);
    }
}

#[test]
fn half_written_requests_are_completed_later() {
    let n = Node::start(&[]);
    let mut s = n.connect();
    let req = b"POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 41\r\n\r\nserviceName=h&ip=10.0.0.1&port=1&weight=2";
    for chunk in req.chunks(7) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let l = n.json(&format!("{NS}/instance/list?serviceName=h"));
    assert_eq!(l["hosts"][0]["weight"], 2.0);
}

#[test]
fn chunked_bodies_are_decoded() {
    let n = Node::start(&[]);
    let mut s = n.connect();
    let body = "serviceName=ch&ip=10.0.0.1&port=1";
    let (a, b) = body.split_at(10);
    let raw = format!(
        "POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(raw.as_bytes()).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(
        n.json(&format!("{NS}/instance/list?serviceName=ch"))["hosts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Another transfer coding: 411, close.
    let mut s = n.connect();
    s.write_all(b"POST /nacos/v1/ns/instance HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 411);
    assert!(closed(&mut s));
}

#[test]
fn limits_give_413_431_and_close() {
    let n = Node::start(&["--body-bytes-max", "1000"]);
    // Body over the limit: 413, before the body is even sent.
    let mut s = n.connect();
    s.write_all(b"POST /nacos/v1/ns/instance HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&mut s));
    // Headers over 8 KiB: 431.
    let mut s = n.connect();
    let big = format!(
        "GET /nacos/v1/console/health/liveness HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    s.write_all(big.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 431);
    assert!(closed(&mut s));
    // Too many headers: 431 as well.
    let mut s = n.connect();
    let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    s.write_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 431);
    // A large chunked body: 413.
    let mut s = n.connect();
    s.write_all(
        b"POST /nacos/v1/ns/instance HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 413);
    // The node still serves.
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
    assert_eq!(
        n.get(&format!("{NS}/service/list?pageNo=1&pageSize=10"))
            .json()["count"],
        0
    );
}

#[test]
fn malformed_requests_get_400_and_close() {
    let n = Node::start(&[]);
    let garbage: &[&[u8]] = &[
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for g in garbage {
        let mut s = n.connect();
        s.write_all(g).unwrap();
        let r = read_response(&mut s).unwrap_or_else(|| panic!("no answer to {g:?}"));
        assert_eq!(r.status, 400, "{g:?}");
        assert!(closed(&mut s), "{g:?}");
    }
    // Nothing the client sent crashed the node.
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
}

#[test]
fn idle_connections_are_closed_and_partial_ones_get_408() {
    let n = Node::start(&["--idle-timeout-ms", "300"]);
    let mut s = n.connect();
    std::thread::sleep(Duration::from_millis(600));
    assert!(closed(&mut s), "idle connection should be closed");
    let mut s = n.connect();
    s.write_all(b"GET /nacos/v1/console/health/liveness HTTP/1.1\r\nHost")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(r.status, 408);
    assert!(closed(&mut s));
}

#[test]
fn connection_cap_gives_503() {
    let n = Node::start(&["--max-connections", "3", "--cores", "1"]);
    let mut held: Vec<_> = (0..3).map(|_| n.connect()).collect();
    // Make sure the three are accepted (served) before the fourth arrives.
    for s in held.iter_mut() {
        send(s, "GET", "/nacos/v1/console/health/liveness", "", &[]);
        assert_eq!(read_response(s).unwrap().status, 200);
    }
    let mut extra = n.connect();
    let r = read_response(&mut extra).unwrap();
    assert_eq!(r.status, 503);
    drop(held);
    assert!(eventually(Duration::from_secs(5), || n
        .get("/nacos/v1/console/health/liveness")
        .status
        == 200));
}

#[test]
fn many_keep_alive_connections() {
    let n = Node::start(&["--cores", "2"]);
    let mut conns: Vec<_> = (0..200).map(|_| n.connect()).collect();
    for round in 0..3 {
        for (i, s) in conns.iter_mut().enumerate() {
            send(
                s,
                "POST",
                &format!(
                    "{NS}/instance?serviceName=k{}&ip=10.0.{round}.{}&port=1",
                    i % 7,
                    i % 250
                ),
                "",
                &[],
            );
        }
        for s in conns.iter_mut() {
            let r = read_response(s).unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        }
    }
    let m = n.json(&format!("{NS}/operator/metrics"));
    assert_eq!(m["serviceCount"], 7);
    assert_eq!(m["instanceCount"], 600);
}

#[test]
fn head_has_no_body_and_http10_closes() {
    let n = Node::start(&[]);
    let mut s = n.connect();
    s.write_all(b"GET /nacos/v1/console/health/liveness HTTP/1.0\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "OK"));
    assert!(closed(&mut s));
    let mut s = n.connect();
    s.write_all(b"HEAD /nacos/v1/console/health/liveness HTTP/1.1\r\n\r\nGET /nacos/v1/console/health/liveness HTTP/1.1\r\n\r\n").unwrap();
    // HEAD answer carries Content-Length 2 but no body, so the next bytes
    // are the second response's head.
    let mut all = Vec::new();
    std::thread::sleep(Duration::from_millis(200));
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(k) = std::io::Read::read(&mut s, &mut buf) {
        if k == 0 {
            break;
        }
        all.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.ends_with("\r\n\r\nOK"), "{text}");
}

#[test]
fn large_bodies_keep_pipeline_order() {
    let n = Node::start(&["--cores", "2"]);
    let mut s = n.connect();
    for i in 0..400 {
        send(
            &mut s,
            "POST",
            &format!(
                "{NS}/instance?serviceName=big&ip=10.9.{}.{}&port=1",
                i / 200,
                i % 200
            ),
            "",
            &[],
        );
        assert_eq!(read_response(&mut s).unwrap().status, 200);
    }
    // small, big (over 64 KiB: sent from the cached buffer), small, big.
    let mut raw = String::new();
    for _ in 0..2 {
        raw.push_str("GET /nacos/v1/console/health/liveness HTTP/1.1\r\nHost: x\r\n\r\n");
        raw.push_str("GET /nacos/v1/ns/instance/list?serviceName=big HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    s.write_all(raw.as_bytes()).unwrap();
    for _ in 0..2 {
        let small = read_response(&mut s).unwrap();
        assert_eq!(small.body, "OK");
        let big = read_response(&mut s).unwrap();
        assert!(big.body.len() > 64 * 1024, "{}", big.body.len());
        assert_eq!(big.json()["hosts"].as_array().unwrap().len(), 400);
    }
}

#[test]
fn metrics_page_is_prometheus_text_with_help_for_every_family() {
    let n = Node::start(&["--cores", "2"]);
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=m&ip=10.0.0.1&port=1"),
        "",
    );
    let r = n.get("/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let lines: Vec<&str> = r.body.lines().collect();
    let mut families = 0;
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap();
            families += 1;
            let help = format!("# HELP {name} ");
            assert!(
                i > 0 && lines[i - 1].starts_with(&help) && lines[i - 1].len() > help.len(),
                "no # HELP before {l}"
            );
        }
    }
    assert!(families >= 24, "{families} families");
    // Samples belong to a declared family.
    for l in lines.iter().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            r.body.contains(&format!("# TYPE {name} "))
                || r.body.contains(&format!("# TYPE {base} ")),
            "{l}"
        );
    }
}
