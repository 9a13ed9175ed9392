//! Seeded random hostile requests against every endpoint: the node must
//! answer each with a status (or close the connection) and stay up. A
//! panic anywhere aborts the node, so this would catch one.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::Duration;

/// xorshift64*: deterministic, so a failing seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "",
];
const PATHS: &[&str] = &[
    "/nacos/v1/ns/instance",
    "/nacos/v1/ns/instance/beat",
    "/nacos/v1/ns/instance/list",
    "/nacos/v1/ns/service",
    "/nacos/v1/ns/service/list",
    "/nacos/v1/ns/operator/metrics",
    "/nacos/v1/ns/operator/distro/server",
    "/metrics",
    "/nacos/v1/ns/instance/",
    "//..//%00",
    "*",
];
const KEYS: &[&str] = &[
    "serviceName",
    "ip",
    "port",
    "groupName",
    "namespaceId",
    "clusterName",
    "weight",
    "healthy",
    "enabled",
    "enable",
    "ephemeral",
    "metadata",
    "beat",
    "clusters",
    "healthyOnly",
    "udpPort",
    "clientIP",
    "pageNo",
    "pageSize",
    "protectThreshold",
    "selector",
    "cluster",
];
const VALUES: &[&str] = &[
    "",
    "svc",
    "g%40%40s",
    "%40%40",
    "a%40%40b%40%40c",
    "10.0.0.1",
    "::1",
    "999.1.1.1",
    "0",
    "1",
    "65535",
    "65536",
    "-1",
    "1e308",
    "NaN",
    "inf",
    "18446744073709551616",
    "True",
    "FALSE",
    "maybe",
    "%7B%7D",
    "%7B%22a%22%3A%5B1%5D%7D",
    "%7B%22ip%22%3A%2210.0.0.1%22%2C%22port%22%3A%22x%22%7D",
    "%7B%22ip%22%3A1%2C%22port%22%3A-5%2C%22weight%22%3A1e400%7D",
    "%7B%22port%22%3A99999999999999999999%7D",
    "k%3Dv%2C%3D%2C%2C",
    "%E6%9C%8D%E5%8A%A1",
    "%FF%FE",
    "%",
    "%zz",
    "+++",
    "a%00b",
    "%7B%22type%22%3A%22label%22%7D",
    "0.5",
    "2",
];

fn random_request(r: &mut Rng) -> Vec<u8> {
    let mut q = String::new();
    for _ in 0..(r.next() % 8) {
        q.push_str(&format!("{}={}&", r.pick(KEYS), r.pick(VALUES)));
    }
    let method = r.pick(METHODS);
    let path = r.pick(PATHS);
    let mut req = format!("{method} {path}?{q} HTTP/1.1\r\nHost: x\r\n").into_bytes();
    match r.next() % 6 {
        0 => {
            // A form body.
            let body = format!("{}={}", r.pick(KEYS), r.pick(VALUES));
            req.extend_from_slice(format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
        }
        1 => {
            // Random bytes anywhere in the head.
            req.extend_from_slice(b"\r\n");
            let at = (r.next() as usize) % req.len();
            let junk: Vec<u8> = (0..(r.next() % 16)).map(|_| r.next() as u8).collect();
            req.splice(at..at, junk);
        }
        2 => req.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n5\r\nab=c&\r\n0\r\n\r\n"),
        _ => req.extend_from_slice(b"\r\n"),
    }
    req
}

#[test]
fn random_hostile_requests_never_take_the_node_down() {
    let n = Node::start(&["--cores", "2", "--idle-timeout-ms", "2000"]);
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut r = Rng(seed);
    for i in 0..1500 {
        let req = random_request(&mut r);
        let mut s = n.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(&req);
        // Half-close so a request waiting for more bytes is answered 400/408
        // or the connection closes, rather than waiting for the idle timeout.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1.1 "),
                "seed {seed} request {i}: {:?}",
                String::from_utf8_lossy(&answer)
            );
        }
        if i % 100 == 0 {
            assert_eq!(
                n.get("/nacos/v1/console/health/liveness").status,
                200,
                "seed {seed}: node died by request {i}: {:?}",
                String::from_utf8_lossy(&req)
            );
        }
    }
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
}
