//! The real Rust crate `nacos-sdk` 0.8.3 (gRPC) against a running
//! distro-registry node: register, subscribe and receive a push of a
//! change made through the 1.x HTTP API, deregister. Exits 0 when every
//! step held, 1 with the failed step on stderr.
//!
//! `nacos-rust-v2-check HTTP_ADDR GRPC_PORT` (run by
//! `tests/python_v2/test_rust_sdk.py`, built by `tests/run.sh`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;

const SERVICE: &str = "rust-sdk";
const GROUP: &str = "DEFAULT_GROUP";
/// How long each step may take.
const STEP: Duration = Duration::from_secs(10);

/// Every push the subscription received: the instances' ip:port, sorted.
#[derive(Default)]
struct Pushes(Mutex<Vec<Vec<String>>>);

impl NamingEventListener for Pushes {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let mut got: Vec<String> = event
            .instances
            .iter()
            .flatten()
            .map(|i| format!("{}:{}", i.ip, i.port))
            .collect();
        got.sort();
        self.0.lock().unwrap().push(got);
    }
}

fn fail(step: &str, why: impl std::fmt::Debug) -> ! {
    eprintln!("FAILED: {step}: {why:?}");
    std::process::exit(1);
}

/// One HTTP/1.1 request to the node; the status code and body.
fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| fail("connect over HTTP", e));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| fail("HTTP write", e));
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| fail("HTTP read", e));
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

async fn until(step: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > STEP {
            fail(step, "timed out");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ok: {step}");
}

async fn instances(ns: &NamingService) -> Vec<String> {
    let got = ns
        .get_all_instances(SERVICE.into(), Some(GROUP.into()), vec![], false)
        .await
        .unwrap_or_else(|e| fail("get_all_instances", e));
    let mut v: Vec<String> = got.iter().map(|i| format!("{}:{}", i.ip, i.port)).collect();
    v.sort();
    v
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(grpc_port)) = (args.get(1), args.get(2).and_then(|p| p.parse().ok()))
    else {
        eprintln!("usage: nacos-rust-v2-check HTTP_ADDR GRPC_PORT");
        std::process::exit(2);
    };
    let cache = std::env::temp_dir().join(format!("nacos-rust-v2-check-{}", std::process::id()));
    let props = ClientProps::new()
        .server_addr(addr.clone())
        .remote_grpc_port(grpc_port)
        .namespace("")
        .app_name("nacos-rust-v2-check")
        .env_first(false)
        .cache_dir(cache);
    let ns = NamingServiceBuilder::new(props)
        .build()
        .await
        .unwrap_or_else(|e| fail("connect", e));

    let mine = ServiceInstance {
        ip: "10.6.0.1".into(),
        port: 7001,
        weight: 2.0,
        metadata: [("lang".to_string(), "rust".to_string())].into(),
        ..Default::default()
    };
    ns.register_instance(SERVICE.into(), Some(GROUP.into()), mine.clone())
        .await
        .unwrap_or_else(|e| fail("register", e));
    let (_, body) = http(
        addr,
        "GET",
        &format!("/nacos/v1/ns/instance/list?serviceName={SERVICE}"),
    );
    if !body.contains("\"10.6.0.1\"") || !body.contains("\"lang\":\"rust\"") {
        fail("register listed to HTTP clients", body);
    }
    println!("ok: register listed to HTTP clients");

    let pushes = Arc::new(Pushes::default());
    ns.subscribe(SERVICE.into(), Some(GROUP.into()), vec![], pushes.clone())
        .await
        .unwrap_or_else(|e| fail("subscribe", e));
    let (status, body) = http(
        addr,
        "POST",
        &format!(
            "/nacos/v1/ns/instance?serviceName={SERVICE}&ip=10.6.0.2&port=7002&ephemeral=false"
        ),
    );
    if status != 200 {
        fail("HTTP register", body);
    }
    let both = vec!["10.6.0.1:7001".to_string(), "10.6.0.2:7002".to_string()];
    until("push of an HTTP register", || {
        pushes.0.lock().unwrap().iter().any(|p| *p == both)
    })
    .await;

    ns.deregister_instance(SERVICE.into(), Some(GROUP.into()), mine)
        .await
        .unwrap_or_else(|e| fail("deregister", e));
    let only_http = vec!["10.6.0.2:7002".to_string()];
    until("push of the deregister", || {
        pushes.0.lock().unwrap().last() == Some(&only_http)
    })
    .await;
    if instances(&ns).await != only_http {
        fail("get_all_instances after deregister", instances(&ns).await);
    }
    println!("ok: get_all_instances after deregister");
    let (_, body) = http(
        addr,
        "GET",
        &format!("/nacos/v1/ns/instance/list?serviceName={SERVICE}"),
    );
    if body.contains("\"10.6.0.1\"") {
        fail("deregister seen by HTTP clients", body);
    }
    println!("ok: all steps");
    std::process::exit(0);
}
