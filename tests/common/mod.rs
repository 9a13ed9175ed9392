//! Test harness: starts the real `distro-registry` binary on a free
//! loopback port and talks HTTP to it over plain `std` sockets.
#![allow(dead_code)]

pub mod auth;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The variable of `--data-dir`: "none" for every test node unless the
/// test gives `--data-dir` (the flag wins over the variable).
pub const DATA_DIR_ENV: &str = "DISTRO_REGISTRY_DATA_DIR";

/// A running node; killed when dropped.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
    /// Lines the node logged after it started listening.
    pub log: mpsc::Receiver<String>,
    /// Lines logged up to and including the "listening" line.
    pub early_log: Vec<String>,
}

impl Node {
    /// Starts a node on 127.0.0.1 with an OS-chosen port and `args`.
    pub fn start(args: &[&str]) -> Node {
        Self::start_with_env(args, &[])
    }

    /// Starts a node with exactly `args` (no `--bind` added).
    pub fn start_raw(args: &[String]) -> Node {
        let child = Command::new(env!("CARGO_BIN_EXE_distro-registry"))
            .env(DATA_DIR_ENV, "none")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start distro-registry");
        Self::attach(child)
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_distro-registry"));
        // Test nodes keep nothing unless a test gives --data-dir.
        cmd.env(DATA_DIR_ENV, "none");
        cmd.args(["--bind", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start distro-registry");
        Self::attach(child)
    }

    /// Waits for the "listening on ADDR" line of a started child.
    pub fn attach(mut child: Child) -> Node {
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        let echo = std::env::var_os("DR_TEST_LOG").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[node] {line}");
                }
                // Keep draining (so the node never blocks on a full pipe)
                // even when nobody reads the channel any more.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut early_log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => {
                    // Say why: what the node logged and how it ended.
                    let status = match e {
                        mpsc::RecvTimeoutError::Disconnected => child.wait().map(Some),
                        mpsc::RecvTimeoutError::Timeout => child.try_wait(),
                    };
                    panic!(
                        "node did not say it was listening ({e}); exit: {status:?}; it logged:\n{}",
                        early_log.join("\n")
                    );
                }
            };
            early_log.push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                return Node {
                    child,
                    addr,
                    log: rx,
                    early_log,
                };
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// One request on a fresh connection.
    pub fn req(&self, method: &str, path_and_query: &str, body: &str) -> Resp {
        let mut s = self.connect();
        send(&mut s, method, path_and_query, body, &[]);
        read_response(&mut s).expect("response")
    }

    /// One request with extra headers on a fresh connection.
    pub fn req_h(
        &self,
        method: &str,
        path_and_query: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut s = self.connect();
        send(&mut s, method, path_and_query, body, headers);
        read_response(&mut s).expect("response")
    }

    pub fn get(&self, path_and_query: &str) -> Resp {
        self.req("GET", path_and_query, "")
    }

    /// The value of an unlabelled `/metrics` family.
    pub fn metric(&self, name: &str) -> f64 {
        let page = self.get("/metrics").body;
        page.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// The IPs a service lists on this node (1.x list API, default group).
    pub fn ips(&self, svc: &str) -> std::collections::BTreeSet<String> {
        self.json(&format!("/nacos/v1/ns/instance/list?serviceName={svc}"))["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["ip"].as_str().unwrap().to_string())
            .collect()
    }

    /// The member this node names as a service's owner.
    pub fn owner(&self, svc: &str) -> String {
        self.json(&format!(
            "/nacos/v1/ns/operator/distro/server?serviceName={svc}"
        ))["responsibleServer"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn json(&self, path_and_query: &str) -> serde_json::Value {
        let r = self.get(path_and_query);
        assert_eq!(r.status, 200, "GET {path_and_query}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "node did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIG pid` through the kill command (no libc in the tests).
pub fn unsafe_kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn send(s: &mut TcpStream, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("write request");
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Reads one response (Content-Length framed). None on EOF before a head.
pub fn read_response(s: &mut TcpStream) -> Option<Resp> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) => return None,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("read: {e}"),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// True when the peer closed the connection (read returns 0 or reset).
pub fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub const NS: &str = "/nacos/v1/ns";

/// Percent-encodes everything but unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// `n` free ports, each held by a socket bound with SO_REUSEADDR and
/// SO_REUSEPORT that never listens: a node binds beside it, and while the
/// cluster lives no connect() anywhere takes the port as its source port
/// (a node killed and started again found its port in use, CI 2026-12-03).
pub fn reserved_ports(n: usize) -> Vec<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    (0..n)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_reuse_port(true).unwrap();
            let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
            s.bind(&any.into()).unwrap();
            s
        })
        .collect()
}

pub fn port_of(s: &socket2::Socket) -> u16 {
    s.local_addr().unwrap().as_socket().unwrap().port()
}
