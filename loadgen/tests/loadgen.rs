//! distro-loadgen against in-process fake registries (std threads, real
//! loopback sockets): exact counts, error kinds, .hgrm and summary.json
//! output, open-loop pacing, and a convergence delay the fake injects.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use distro_loadgen::report::parse_hgrm;

#[derive(Clone, Copy)]
enum Mode {
    /// A registry; a registration becomes visible in lists after this long.
    Registry(Duration),
    /// Every answer is a 500.
    Fail,
    /// Every answer is 200 with a wrong body.
    WrongBody,
}

type Registry = Arc<Mutex<HashMap<String, Vec<(String, u16, Instant)>>>>;

struct Fake {
    addr: SocketAddr,
    registers: Arc<AtomicU64>,
}

fn query(path: &str) -> HashMap<String, String> {
    path.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn answer(
    mode: Mode,
    reg: &Registry,
    registers: &AtomicU64,
    method: &str,
    path: &str,
) -> (u16, String) {
    let delay = match mode {
        Mode::Fail => return (500, "boom".into()),
        Mode::WrongBody => return (200, "nope".into()),
        Mode::Registry(d) => d,
    };
    let q = query(path);
    let svc = q.get("serviceName").cloned().unwrap_or_default();
    let route = path.split('?').next().unwrap_or("");
    match (method, route) {
        ("POST", "/nacos/v1/ns/instance") => {
            registers.fetch_add(1, Relaxed);
            let port = q.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
            reg.lock().unwrap().entry(svc).or_default().push((
                q["ip"].clone(),
                port,
                Instant::now(),
            ));
            (200, "ok".into())
        }
        ("DELETE", "/nacos/v1/ns/instance") => {
            let port: u16 = q.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
            if let Some(v) = reg.lock().unwrap().get_mut(&svc) {
                v.retain(|(ip, p, _)| !(ip == &q["ip"] && *p == port));
            }
            (200, "ok".into())
        }
        ("PUT", "/nacos/v1/ns/instance/beat") => {
            (200, r#"{"clientBeatInterval":5000,"code":10200}"#.into())
        }
        ("GET", "/nacos/v1/ns/instance/list") => {
            let hosts: Vec<String> = reg
                .lock()
                .unwrap()
                .get(&svc)
                .map(|v| {
                    v.iter()
                        .filter(|(_, _, at)| at.elapsed() >= delay)
                        .map(|(ip, port, _)| format!(r#"{{"ip":"{ip}","port":{port}}}"#))
                        .collect()
                })
                .unwrap_or_default();
            (200, format!(r#"{{"hosts":[{}]}}"#, hosts.join(",")))
        }
        _ => (404, "not found".into()),
    }
}

fn serve(mut s: TcpStream, mode: Mode, reg: Registry, registers: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let (method, path) = (
                req.method.unwrap().to_string(),
                req.path.unwrap().to_string(),
            );
            buf.drain(..n);
            let (status, body) = answer(mode, &reg, &registers, &method, &path);
            let resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn fake_sharing(mode: Mode, reg: Registry) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let registers = Arc::new(AtomicU64::new(0));
    let r2 = registers.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (reg, r2) = (reg.clone(), r2.clone());
            std::thread::spawn(move || serve(s, mode, reg, r2));
        }
    });
    Fake { addr, registers }
}

fn fake(mode: Mode) -> Fake {
    fake_sharing(mode, Registry::default())
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lg-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run(args: &[&str]) -> distro_loadgen::report::Summary {
    let mut all = vec!["distro-loadgen".to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    distro_loadgen::cli::run(all)
        .unwrap_or_else(|e| panic!("{e}"))
        .summary
}

fn op<'a>(
    s: &'a distro_loadgen::report::Summary,
    t: usize,
    name: &str,
) -> &'a distro_loadgen::report::OpSummary {
    s.targets[t]
        .ops
        .iter()
        .find(|o| o.op == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn burst_counts_are_exact_and_lists_are_checked() {
    let f = fake(Mode::Registry(Duration::ZERO));
    let url = format!("http://{}", f.addr);
    let dir = out_dir("burst");
    let s = run(&[
        "--target",
        &url,
        "--label",
        "fake",
        "--scenario",
        "burst",
        "--instances",
        "500",
        "--services",
        "50",
        "--connections",
        "8",
        "--threads",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(
        f.registers.load(Relaxed),
        500,
        "the server saw exactly N registrations"
    );
    for (name, n) in [("register", 500), ("list", 50), ("deregister", 500)] {
        let o = op(&s, 0, name);
        assert_eq!(
            (o.count, o.errors),
            (n, 0),
            "{name}: {:?}",
            o.errors_by_kind
        );
    }
    assert_eq!(s.targets[0].label, "fake");
    // .hgrm files parse back and agree with the counts.
    for name in ["register", "list", "deregister"] {
        let text = std::fs::read_to_string(dir.join(format!("fake-{name}.hgrm"))).unwrap();
        let rows = parse_hgrm(&text).unwrap();
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, op(&s, 0, name).count);
    }
    assert!(std::fs::read_to_string(dir.join("latency.svg"))
        .unwrap()
        .starts_with("<svg"));
}

#[test]
fn summary_json_matches_its_schema() {
    let f = fake(Mode::Registry(Duration::ZERO));
    let g = fake(Mode::Registry(Duration::ZERO));
    let dir = out_dir("schema");
    run(&[
        "--target",
        &format!("http://{}", f.addr),
        "--label",
        "a",
        "--target",
        &format!("http://{}", g.addr),
        "--label",
        "b",
        "--scenario",
        "burst",
        "--instances",
        "100",
        "--services",
        "10",
        "--connections",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(v["schema"], "distro-loadgen/summary/v2");
    assert_eq!(v["scenario"], "burst");
    assert!(v["settings"]["connections"].is_u64());
    // burst runs by count: no duration among its settings.
    assert!(
        v["settings"].get("duration_s").is_none(),
        "{}",
        v["settings"]
    );
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert!(t["label"].is_string() && t["url"].is_string());
        for o in t["ops"].as_array().unwrap() {
            for k in ["op", "phase"] {
                assert!(o[k].is_string(), "{k}");
            }
            for k in ["count", "ok", "errors"] {
                assert!(o[k].is_u64(), "{k}");
            }
            for k in ["throughput_rps", "duration_s"] {
                assert!(o[k].is_f64(), "{k}");
            }
            assert!(o["errors_by_kind"].is_object());
            for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
                assert!(o["latency_ms"][k].is_f64(), "latency_ms.{k}");
            }
            assert!(o["server_cpu_us_per_op"].is_null(), "no --server-pid given");
        }
    }
    let cmp = v["comparison"].as_array().unwrap();
    assert_eq!(cmp.len(), 3, "one ratio per op of the second target");
    assert!(cmp
        .iter()
        .all(|r| r["baseline"] == "a" && r["label"] == "b" && r["throughput_ratio"].is_f64()));
}

#[test]
fn failing_servers_produce_errors_of_the_right_kind() {
    let f = fake(Mode::Fail);
    let s = run(&[
        "--target",
        &format!("http://{}", f.addr),
        "--scenario",
        "burst",
        "--instances",
        "40",
        "--services",
        "4",
        "--connections",
        "4",
        "--out",
        out_dir("fail").to_str().unwrap(),
    ]);
    let r = op(&s, 0, "register");
    assert_eq!(r.count, 40);
    assert_eq!(r.errors_by_kind.get("http_500"), Some(&40));
    let w = fake(Mode::WrongBody);
    let s = run(&[
        "--target",
        &format!("http://{}", w.addr),
        "--scenario",
        "burst",
        "--instances",
        "40",
        "--services",
        "4",
        "--connections",
        "4",
        "--out",
        out_dir("wrong").to_str().unwrap(),
    ]);
    assert_eq!(
        op(&s, 0, "register").errors_by_kind.get("bad_body"),
        Some(&40)
    );
    assert_eq!(op(&s, 0, "list").errors_by_kind.get("bad_json"), Some(&4));
    // Nothing listens: connection errors, and the run still ends.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = run(&[
        "--target",
        &format!("http://{dead}"),
        "--scenario",
        "burst",
        "--instances",
        "10",
        "--services",
        "2",
        "--connections",
        "2",
        "--out",
        out_dir("dead").to_str().unwrap(),
    ]);
    let r = op(&s, 0, "register");
    assert_eq!(r.errors_by_kind.get("connect"), Some(&10));
    // Failed connects are neither served requests nor latencies.
    assert_eq!((r.ok, r.throughput_rps), (0, 0.0));
    assert!(r.latency_ms.is_none(), "{:?}", r.latency_ms);
    let table = distro_loadgen::report::table(&s.targets, &s.comparison);
    let line = table.lines().find(|l| l.contains("register")).unwrap();
    assert!(
        !line.contains("0.000"),
        "no latency shown for failures: {line}"
    );
}

/// The binary, run to completion: (exit code, stdout, stderr).
fn loadgen_bin(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distro-loadgen"))
        .args(args)
        .output()
        .expect("run distro-loadgen");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_go_to_stdout_with_exit_zero() {
    let (code, out, err) = loadgen_bin(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("--scenario") && out.contains("--services"),
        "{out}"
    );
    assert!(out.contains("--max-error-ratio"), "{out}");
    let (code, out, _) = loadgen_bin(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("distro-loadgen "), "{out}");
    // A bad command line is still an error on stderr with status 2.
    let (code, out, err) = loadgen_bin(&["--scenario", "burst"]);
    assert_eq!(code, 2);
    assert!(out.is_empty() && err.contains("--target"), "{err}");
}

#[test]
fn the_exit_status_fails_a_run_with_failed_requests() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = out_dir("exit-dead");
    let args = [
        "--target",
        &format!("http://{dead}"),
        "--scenario",
        "burst",
        "--instances",
        "10",
        "--services",
        "2",
        "--connections",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ];
    let (code, _, err) = loadgen_bin(&args);
    assert_eq!(code, 1, "every request failed: {err}");
    assert!(err.contains("requests failed"), "{err}");
    let mut tolerant = args.to_vec();
    tolerant.extend(["--max-error-ratio", "1"]);
    let (code, _, err) = loadgen_bin(&tolerant);
    assert_eq!(code, 0, "--max-error-ratio 1 tolerates them: {err}");
    // A healthy run exits 0.
    let f = fake(Mode::Registry(Duration::ZERO));
    let url = format!("http://{}", f.addr);
    let dir = out_dir("exit-ok");
    let (code, _, err) = loadgen_bin(&[
        "--target",
        &url,
        "--scenario",
        "burst",
        "--instances",
        "20",
        "--services",
        "2",
        "--connections",
        "2",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn converge_measures_the_injected_delay() {
    let shared = Registry::default();
    let writer = fake_sharing(Mode::Registry(Duration::ZERO), shared.clone());
    let lagging = fake_sharing(Mode::Registry(Duration::from_millis(300)), shared);
    let s = run(&[
        "--target",
        &format!("http://{}", writer.addr),
        "--target",
        &format!("http://{}", lagging.addr),
        "--scenario",
        "converge",
        "--instances",
        "20",
        "--services",
        "5",
        "--connections",
        "4",
        "--out",
        out_dir("converge").to_str().unwrap(),
    ]);
    let c = op(&s, 0, "converge");
    assert_eq!((c.count, c.errors), (20, 0));
    let l = c.latency_ms.as_ref().unwrap();
    assert!(l.p50 >= 300.0, "p50 {} ms", l.p50);
    assert!(l.max < 600.0, "max {} ms", l.max);
}

#[test]
fn open_loop_is_paced_from_intended_send_times() {
    let f = fake(Mode::Registry(Duration::ZERO));
    let started = Instant::now();
    let s = run(&[
        "--target",
        &format!("http://{}", f.addr),
        "--scenario",
        "burst",
        "--instances",
        "100",
        "--services",
        "10",
        "--connections",
        "4",
        "--rate",
        "200",
        "--out",
        out_dir("rate").to_str().unwrap(),
    ]);
    let r = op(&s, 0, "register");
    assert_eq!((r.count, r.errors), (100, 0));
    assert!(
        r.duration_s >= 0.45,
        "100 at 200/s take about 0.5 s, took {}",
        r.duration_s
    );
    assert!(r.throughput_rps <= 230.0, "{}", r.throughput_rps);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn beat_fleet_beats_each_instance_once_per_period() {
    let f = fake(Mode::Registry(Duration::ZERO));
    let s = run(&[
        "--target",
        &format!("http://{}", f.addr),
        "--scenario",
        "beat",
        "--instances",
        "50",
        "--services",
        "5",
        "--connections",
        "4",
        "--duration",
        "2",
        "--beat-period-ms",
        "500",
        "--out",
        out_dir("beat").to_str().unwrap(),
    ]);
    let b = op(&s, 0, "beat");
    assert_eq!((b.count, b.errors), (200, 0), "50 instances x 4 periods");
}

#[test]
fn remote_targets_are_refused_without_allow_remote() {
    let e = distro_loadgen::cli::run(
        [
            "distro-loadgen",
            "--target",
            "http://10.0.0.1:8848",
            "--scenario",
            "burst",
            "--out",
            "/tmp/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a loopback address"), "{e}");
    let e = distro_loadgen::cli::run(
        [
            "distro-loadgen",
            "--target",
            "http://127.0.0.1:1",
            "--scenario",
            "nope",
            "--out",
            "/tmp/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .err()
    .unwrap()
    .to_string();
    // An unknown scenario is refused with the valid ones listed.
    assert!(e.contains("'nope'"), "{e}");
    for s in distro_loadgen::scenario::SCENARIOS {
        assert!(e.contains(s), "{s} listed: {e}");
    }
}

#[test]
fn storm_mixes_registers_beats_and_lists() {
    let f = fake(Mode::Registry(Duration::ZERO));
    let s = run(&[
        "--target",
        &format!("http://{}", f.addr),
        "--scenario",
        "storm",
        "--instances",
        "300",
        "--services",
        "10",
        "--connections",
        "8",
        "--duration",
        "30",
        "--out",
        out_dir("storm").to_str().unwrap(),
    ]);
    for name in ["register", "beat", "list"] {
        let o = op(&s, 0, name);
        assert_eq!(
            (o.count, o.errors),
            (300, 0),
            "{name}: {:?}",
            o.errors_by_kind
        );
    }
    assert_eq!(f.registers.load(Relaxed), 300);
}

#[test]
fn paced_items_a_slow_server_never_got_are_counted_as_not_sent() {
    // One connection, and a server that takes 50 ms per answer: at 200/s
    // for 1 s, most of the 200 scheduled beats cannot go out in time.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    // Slow beats; setup and cleanup answer at once.
                    let beat = buf[..k].starts_with(b"PUT /nacos/v1/ns/instance/beat");
                    if beat {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let body = if beat { r#"{"code":10200}"# } else { "ok" };
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
            });
        }
    });
    let s = run(&[
        "--target",
        &format!("http://{addr}"),
        "--scenario",
        "beat",
        "--instances",
        "200",
        "--services",
        "1",
        "--connections",
        "1",
        "--duration",
        "1",
        "--beat-period-ms",
        "1000",
        "--timeout-ms",
        "2000",
        "--out",
        out_dir("slow").to_str().unwrap(),
    ]);
    let b = op(&s, 0, "beat");
    let not_sent = b.errors_by_kind.get("not_sent").copied().unwrap_or(0);
    assert!(not_sent > 100, "{:?}", b.errors_by_kind);
    assert_eq!(b.count, 200, "sent + not sent = scheduled: {b:?}");
}

#[test]
fn spread_drives_every_target_of_a_cluster_in_one_run() {
    // Two "nodes" sharing one registry, like a converged cluster.
    let reg = Registry::default();
    let a = fake_sharing(Mode::Registry(Duration::ZERO), reg.clone());
    let b = fake_sharing(Mode::Registry(Duration::ZERO), reg);
    let (ua, ub) = (format!("http://{}", a.addr), format!("http://{}", b.addr));
    let dir = out_dir("spread");
    let s = run(&[
        "--target",
        &ua,
        "--target",
        &ub,
        "--spread",
        "--scenario",
        "burst",
        "--instances",
        "600",
        "--services",
        "30",
        "--connections",
        "4",
        "--threads",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(s.targets.len(), 1, "one report for the whole cluster");
    assert_eq!(a.registers.load(Relaxed), 300);
    assert_eq!(b.registers.load(Relaxed), 300);
    let o = op(&s, 0, "register");
    assert_eq!((o.count, o.errors), (600, 0), "{:?}", o.errors_by_kind);
    assert_eq!(op(&s, 0, "list").errors, 0);
}
