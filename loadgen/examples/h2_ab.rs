//! Which HTTP/2 implementation the node's gRPC front end uses, by
//! measurement: hyperium `h2` over monoio's poll-io stream (what
//! `src/grpc/server.rs` runs) against `monoio-http`'s port of h2, which
//! drives monoio's completion-based I/O directly. Each serves the same
//! unary gRPC call (a `HealthCheckRequest` answered with a
//! `HealthCheckResponse`, framed by the node's codec) on one pinned
//! thread; the generator's 2.x client (`distro_loadgen::grpc`) makes the
//! calls from another. Reported: calls/s and the server thread's CPU per
//! call (its schedstat), A B A B in one run.
//!
//! `cargo run --release -p distro-loadgen --example h2_ab -- [CALLS] [CONNECTIONS]`

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use distro_loadgen::grpc::GrpcConn;
use distro_registry::grpc::codec;
use monoio::net::TcpListener;
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Imp {
    Hyperium,
    MonoioHttp,
}

/// The answer to any unary call: its `*Request` type becomes `*Response`.
fn answer(req: &[u8]) -> Vec<u8> {
    let mut buf = req.to_vec();
    let kind = match codec::next_message(&mut buf, 1 << 20) {
        Ok(Some(m)) => codec::decode(&m).map(|p| p.kind).unwrap_or_default(),
        _ => String::new(),
    };
    let rtype = kind.replace("Request", "Response");
    let body = json!({"resultCode": 200, "errorCode": 0, "requestId": "1", "connectionId": "c"});
    codec::encode_framed(&rtype, &serde_json::to_vec(&body).unwrap())
}

fn headers() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap()
}

fn trailers() -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static("0"));
    t
}

async fn serve_hyperium(stream: monoio::net::TcpStream) {
    let Ok(io) = stream.try_into_poll_io() else {
        return;
    };
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        monoio::spawn(async move {
            let stream = req.uri().path() == "/BiRequestStream/requestBiStream";
            let mut body = req.into_body();
            let Ok(mut send) = respond.send_response(headers(), false) else {
                return;
            };
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
            }
            if !stream {
                let _ = send.send_data(Bytes::from(answer(&buf)), false);
                let _ = send.send_trailers(trailers());
            }
        });
    }
}

async fn serve_monoio_http(stream: monoio::net::TcpStream) {
    use monoio_http::h2::server;
    let Ok(mut conn) = server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        monoio::spawn(async move {
            let stream = req.uri().path() == "/BiRequestStream/requestBiStream";
            let mut body = req.into_body();
            let Ok(mut send) = respond.send_response(headers(), false) else {
                return;
            };
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
            }
            if !stream {
                let _ = send.send_data(Bytes::from(answer(&buf)), false);
                let _ = send.send_trailers(trailers());
            }
        });
    }
}

/// The server thread's CPU time so far (ns), from its schedstat.
fn cpu_ns(tid_path: &str) -> u64 {
    std::fs::read_to_string(format!("{tid_path}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Starts a server thread on CPU 0; its address and /proc task path.
fn server(imp: Imp) -> (SocketAddr, String) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = distro_registry::shard::runtime::pin_to_allowed_cpu_from_top(1);
        distro_registry::shard::runtime::block_on(
            async move {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let task = std::fs::read_link("/proc/thread-self").unwrap();
                tx.send((l.local_addr().unwrap(), format!("/proc/{}", task.display())))
                    .unwrap();
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = s.set_nodelay(true);
                    match imp {
                        Imp::Hyperium => monoio::spawn(serve_hyperium(s)),
                        Imp::MonoioHttp => monoio::spawn(serve_monoio_http(s)),
                    };
                }
            },
            |_| {},
            |_, _| {},
        )
        .unwrap();
    });
    rx.recv().unwrap()
}

fn measure(imp: Imp, calls: usize, conns: usize) -> (f64, f64) {
    let (addr, task) = server(imp);
    let out = std::thread::spawn(move || {
        let _ = distro_registry::shard::runtime::pin_to_allowed_cpu_from_top(0);
        distro_registry::shard::runtime::block_on(
            async move {
                let mut clients = Vec::new();
                for _ in 0..conns {
                    clients.push(
                        GrpcConn::connect(addr, Duration::from_secs(5), Box::new(|_| {}))
                            .await
                            .expect("connect"),
                    );
                }
                let before = cpu_ns(&task);
                let start = Instant::now();
                let tasks: Vec<_> = clients
                    .into_iter()
                    .map(|mut c| {
                        monoio::spawn(async move {
                            for _ in 0..calls / conns {
                                c.call("HealthCheckRequest", json!({}), "HealthCheckResponse")
                                    .await
                                    .expect("call");
                            }
                            c
                        })
                    })
                    .collect();
                let mut keep = Vec::new();
                for t in tasks {
                    keep.push(t.await);
                }
                let elapsed = start.elapsed().as_secs_f64();
                let cpu = (cpu_ns(&task) - before) as f64;
                for c in keep {
                    c.close().await;
                }
                let n = (calls / conns * conns) as f64;
                (n / elapsed, cpu / n / 1000.0)
            },
            |_| {},
            |_, _| {},
        )
        .unwrap()
    });
    out.join().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let conns: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    println!("{calls} unary calls on {conns} connections; server on one pinned thread");
    println!(
        "{:<28} {:>10} {:>16}",
        "implementation", "calls/s", "server us/call"
    );
    for imp in [
        Imp::Hyperium,
        Imp::MonoioHttp,
        Imp::Hyperium,
        Imp::MonoioHttp,
    ] {
        let (rate, us) = measure(imp, calls, conns);
        let name = match imp {
            Imp::Hyperium => "h2 0.4 over monoio poll-io",
            Imp::MonoioHttp => "monoio-http 0.3 h2",
        };
        println!("{name:<28} {rate:>10.0} {us:>16.2}");
    }
}
