//! `--protocol grpc` against the real node (target/debug/distro-registry,
//! built by `cargo build --workspace` before the tests, as tests/run.sh
//! does): the burst's counts are exact and every list is checked; every
//! subscriber of the push scenario receives every change.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Node {
    child: Child,
    http: u16,
    grpc: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node() -> Node {
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/distro-registry");
    assert!(
        bin.exists(),
        "{} missing: run cargo build --workspace first",
        bin.display()
    );
    let mut child = Command::new(bin)
        .env("DISTRO_REGISTRY_DATA_DIR", "none")
        .args([
            "--bind",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--push-delay-ms",
            "20",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // "... listening on 127.0.0.1:PORT cores=1", "... clients on 127.0.0.1:PORT"
    let port = |l: &str| {
        let addr = l.split(" on ").nth(1)?.split_whitespace().next()?;
        addr.rsplit(':').next()?.parse::<u16>().ok()
    };
    let (mut http, mut grpc) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("listening on") {
            http = port(&line);
        }
        if line.contains("gRPC for Nacos") {
            grpc = port(&line);
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Node {
        child,
        http: http.expect("HTTP port"),
        grpc: grpc.expect("gRPC port"),
    }
}

fn run(n: &Node, extra: &[&str], out: &str) -> distro_loadgen::report::Summary {
    let dir = std::env::temp_dir().join(format!("lg-grpc-{out}-{}", std::process::id()));
    let target = format!("http://127.0.0.1:{}", n.http);
    let offset = (i32::from(n.grpc) - i32::from(n.http)).to_string();
    let mut args = vec![
        "distro-loadgen",
        "--target",
        &target,
        "--protocol",
        "grpc",
        "--grpc-port-offset",
        &offset,
        "--threads",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let outcome = distro_loadgen::cli::run(args.into_iter().map(String::from).collect())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        outcome.passed(),
        "{} of {} failed",
        outcome.failed,
        outcome.requests
    );
    outcome.summary
}

fn count(s: &distro_loadgen::report::Summary, op: &str) -> (u64, u64) {
    let o = s.targets[0]
        .ops
        .iter()
        .find(|o| o.op == op)
        .unwrap_or_else(|| panic!("no {op}"));
    (o.count, o.errors)
}

#[test]
fn a_grpc_burst_registers_lists_and_deregisters_exactly() {
    let n = node();
    let s = run(
        &n,
        &[
            "--scenario",
            "burst",
            "--instances",
            "300",
            "--services",
            "20",
            "--connections",
            "8",
        ],
        "burst",
    );
    assert_eq!(count(&s, "register"), (300, 0));
    // Each list answered with exactly the service's instances.
    assert_eq!(count(&s, "list"), (20, 0));
    // One deregister per (client, service) it published in.
    let (d, e) = count(&s, "deregister");
    assert!(e == 0 && (20..=160).contains(&d), "{d} deregisters");
    assert_eq!(s.settings["protocol"], "grpc");
}

#[test]
fn every_subscriber_is_pushed_every_change() {
    let n = node();
    let s = run(
        &n,
        &[
            "--scenario",
            "push",
            "--instances",
            "5",
            "--connections",
            "20",
        ],
        "push",
    );
    assert_eq!(count(&s, "push_all"), (5, 0));
    assert_eq!(count(&s, "push"), (100, 0), "5 changes x 20 subscribers");
}

#[test]
fn http_scenarios_are_refused_over_grpc_and_push_over_http() {
    let args = |extra: &[&str]| {
        let mut a = vec![
            "distro-loadgen",
            "--target",
            "http://127.0.0.1:1",
            "--out",
            "/tmp/x",
        ];
        a.extend_from_slice(extra);
        distro_loadgen::cli::run(a.into_iter().map(String::from).collect())
    };
    let e = args(&["--protocol", "grpc", "--scenario", "beat"])
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("--protocol grpc runs burst and push"), "{e}");
    let e = args(&["--scenario", "push"])
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("needs --protocol grpc"), "{e}");
}
