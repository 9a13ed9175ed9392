//! The data directory (issue 12): what a node saves and reads back after
//! a restart, a kill -9 or a damaged file, through the real binary.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Node};

const NS: &str = "/nacos/v1/ns";

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("dr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(dir: &str, extra: &[&str]) -> Node {
    let mut args = vec!["--data-dir", dir, "--grpc-port", "0"];
    args.extend_from_slice(extra);
    Node::start(&args)
}

fn kill9(mut n: Node) {
    n.child.kill().unwrap();
    n.child.wait().unwrap();
}

fn hosts(n: &Node, svc: &str) -> Vec<serde_json::Value> {
    n.json(&format!("{NS}/instance/list?serviceName={svc}"))["hosts"]
        .as_array()
        .unwrap()
        .clone()
}

fn ips(n: &Node, svc: &str) -> BTreeSet<String> {
    hosts(n, svc)
        .iter()
        .map(|h| h["ip"].as_str().unwrap().to_string())
        .collect()
}

fn ok(n: &Node, method: &str, path: &str) {
    let r = n.req(method, path, "");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{method} {path}");
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn metric(n: &Node, name: &str) -> f64 {
    n.metric(name)
}

/// Persistent and ephemeral instances, service fields and a deregister
/// survive a kill -9 and a clean stop; restored ephemeral instances get a
/// full timeout from the restart and go one delete timeout later when no
/// one beats them.
#[test]
fn a_restarted_node_serves_what_it_acknowledged_at_once() {
    let dir = TempDir::new("restart");
    let timeouts = [
        "--unhealthy-timeout-ms",
        "2000",
        "--delete-timeout-ms",
        "4000",
    ];
    let n = start(dir.path(), &timeouts);
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        ok(
            &n,
            "POST",
            &format!("{NS}/instance?serviceName=db&ip={ip}&port=5432&ephemeral=false&weight=2"),
        );
    }
    ok(
        &n,
        "DELETE",
        &format!("{NS}/instance?serviceName=db&ip=10.0.0.2&port=5432&ephemeral=false"),
    );
    ok(
        &n,
        "PATCH",
        &format!("{NS}/instance?serviceName=db&ip=10.0.0.3&port=5432&ephemeral=false&weight=7&metadata=zone%3Da"),
    );
    ok(
        &n,
        "PUT",
        &format!("{NS}/service?serviceName=db&protectThreshold=0.5&metadata=team%3Dcore"),
    );
    ok(
        &n,
        "POST",
        &format!("{NS}/service?serviceName=empty&protectThreshold=0.25"),
    );
    ok(&n, "DELETE", &format!("{NS}/service?serviceName=empty"));
    for ip in ["10.1.0.1", "10.1.0.2"] {
        ok(
            &n,
            "POST",
            &format!("{NS}/instance?serviceName=web&ip={ip}&port=80"),
        );
    }
    ok(
        &n,
        "DELETE",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.2&port=80"),
    );
    // Ephemeral changes are saved behind: within a tick (100 ms here).
    std::thread::sleep(Duration::from_millis(400));
    kill9(n);

    let started = Instant::now();
    let n = start(dir.path(), &timeouts);
    assert_eq!(ips(&n, "db"), set(&["10.0.0.1", "10.0.0.3"]));
    let db = hosts(&n, "db");
    let three = db.iter().find(|h| h["ip"] == "10.0.0.3").unwrap();
    assert_eq!(three["weight"], 7.0);
    assert_eq!(three["metadata"]["zone"], "a");
    assert_eq!(three["ephemeral"], false);
    let svc = n.json(&format!("{NS}/service?serviceName=db"));
    assert_eq!(svc["protectThreshold"], 0.5);
    assert_eq!(svc["metadata"]["team"], "core");
    assert_eq!(
        n.get(&format!("{NS}/service?serviceName=empty")).status,
        404
    );
    assert_eq!(ips(&n, "web"), set(&["10.1.0.1"]), "listed at once");
    assert_eq!(hosts(&n, "web")[0]["healthy"], true);
    assert_eq!(metric(&n, "registry_instances"), 3.0);

    // No one beats 10.1.0.1: unhealthy after 2 s, gone after 4 s, both
    // counted from the restart.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(hosts(&n, "web")[0]["healthy"], true, "a full timeout");
    assert!(
        eventually(Duration::from_secs(8), || ips(&n, "web").is_empty()),
        "an unbeaten restored instance expires"
    );
    assert!(started.elapsed() >= Duration::from_millis(3500));

    // A clean stop (SIGTERM) saves what it holds; a new write after the
    // restart outranks the saved versions.
    ok(
        &n,
        "POST",
        &format!("{NS}/instance?serviceName=web&ip=10.1.0.9&port=80"),
    );
    let status = n.terminate();
    assert!(status.success(), "{status:?}");
    let n = start(dir.path(), &timeouts);
    assert_eq!(ips(&n, "web"), set(&["10.1.0.9"]));
    ok(
        &n,
        "DELETE",
        &format!("{NS}/instance?serviceName=db&ip=10.0.0.1&port=5432&ephemeral=false"),
    );
    kill9(n);
    let n = start(dir.path(), &timeouts);
    assert_eq!(
        ips(&n, "db"),
        set(&["10.0.0.3"]),
        "the delete after a restart stays"
    );
}

/// kill -9 in the middle of a storm of persistent registrations: every
/// registration answered `ok` is there after the restart.
#[test]
fn kill_9_during_persistent_registrations_loses_no_acknowledged_one() {
    let dir = TempDir::new("storm");
    let n = start(dir.path(), &[]);
    let addr = n.addr;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                    return;
                };
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let ip = format!("10.{w}.{}.{}", i / 250, i % 250);
                    let path = format!(
                        "{NS}/instance?serviceName=storm{}&ip={ip}&port=1&ephemeral=false",
                        i % 7
                    );
                    common::send(&mut s, "POST", &path, "", &[]);
                    match read_ok(&mut s) {
                        Some(true) => acked.lock().unwrap().push(format!("{}|{ip}", i % 7)),
                        _ => return, // the node is gone
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || acked
        .lock()
        .unwrap()
        .len()
        >= 500));
    kill9(n);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let n = start(dir.path(), &[]);
    let mut present = BTreeSet::new();
    for s in 0..7 {
        for ip in ips(&n, &format!("storm{s}")) {
            present.insert(format!("{s}|{ip}"));
        }
    }
    let lost: Vec<&String> = acked.iter().filter(|a| !present.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(present.len() >= acked.len());
}

/// Reads one response: Some(whether it was `200 ok`), None when the
/// connection broke first (the node was killed).
fn read_ok(s: &mut std::net::TcpStream) -> Option<bool> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let body = &buf[end + 4..end + 4 + len];
                return Some(head.starts_with("http/1.1 200") && body == b"ok");
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn run_to_exit(dir: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .args(["--bind", "127.0.0.1:0", "--grpc-port", "0", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A damaged store file stops the node with an error naming the file and
/// how to start empty; it is left as it was.
#[test]
fn a_damaged_store_file_is_refused_by_name() {
    let dir = TempDir::new("corrupt");
    let file = dir.0.join("registry.redb");
    let garbage: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &garbage).unwrap();
    let (code, err) = run_to_exit(&dir.0);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&*file.to_string_lossy()), "{err}");
    assert!(err.contains("move it away"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "left untouched");

    // A real store cut short.
    std::fs::remove_file(&file).unwrap();
    let n = start(dir.path(), &[]);
    for i in 0..200 {
        ok(
            &n,
            "POST",
            &format!(
                "{NS}/instance?serviceName=cut&ip=10.9.0.{}&port={}&ephemeral=false",
                i % 250,
                i + 1
            ),
        );
    }
    assert!(n.terminate().success());
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() / 3]).unwrap();
    let (code, err) = run_to_exit(&dir.0);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&*file.to_string_lossy()), "{err}");

    // A store of a row format this node does not read.
    std::fs::remove_file(&file).unwrap();
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            txn.open_table(meta).unwrap().insert("format", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let (code, err) = run_to_exit(&dir.0);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("row format is 99"), "{err}");
    assert!(err.contains(&*file.to_string_lossy()), "{err}");

    // Moved away, as the message says: the node starts empty.
    std::fs::rename(&file, dir.0.join("registry.redb.bad")).unwrap();
    let n = start(dir.path(), &[]);
    assert!(ips(&n, "cut").is_empty());
}

/// One node per data directory; `--data-dir none` keeps nothing; an empty
/// `--data-dir` is refused.
#[test]
fn data_dir_none_keeps_nothing_and_a_directory_has_one_node() {
    let dir = TempDir::new("one");
    let n = start(dir.path(), &[]);
    let (code, err) = run_to_exit(&dir.0);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    drop(n);

    let none = TempDir::new("none");
    std::fs::remove_dir(&none.0).unwrap();
    let n = Node::start(&["--data-dir", "none", "--grpc-port", "0"]);
    ok(
        &n,
        "POST",
        &format!("{NS}/instance?serviceName=mem&ip=10.2.0.1&port=1&ephemeral=false"),
    );
    kill9(n);
    let n = Node::start(&["--data-dir", "none", "--grpc-port", "0"]);
    assert!(ips(&n, "mem").is_empty());
    assert!(!none.0.exists());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .args(["--bind", "127.0.0.1:0", "--data-dir", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("data-dir"));
}

/// A full disk (here: the file-size limit, RLIMIT_FSIZE, which makes
/// writes fail as a full disk does): persistent writes get 503 with the
/// reason, ephemeral ones go on, nothing crashes; once there is room again
/// the store catches up and persistent writes succeed.
#[test]
fn a_full_disk_refuses_persistent_writes_and_recovers() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs prlimit (util-linux)");
        return;
    }
    let dir = TempDir::new("full");
    let child = std::process::Command::new("prlimit")
        .arg("--fsize=1000000:unlimited")
        .arg(env!("CARGO_BIN_EXE_distro-registry"))
        .args(["--bind", "127.0.0.1:0", "--grpc-port", "0", "--data-dir"])
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let n = Node::attach(child);
    let pad = "x".repeat(300);
    let mut refused = None;
    for i in 0..20_000 {
        let r = n.req(
            "POST",
            &format!(
                "{NS}/instance?serviceName=big&ip=10.5.{}.{}&port=1&ephemeral=false&metadata=k%3D{pad}",
                i / 250,
                i % 250
            ),
            "",
        );
        if r.status != 200 {
            refused = Some((i, r));
            break;
        }
    }
    let (at, r) = refused.expect("the 1 MB limit is reached");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("data directory cannot be written"),
        "{}",
        r.body
    );
    assert!(r.body.contains("File too large"), "{}", r.body);
    assert_eq!(metric(&n, "registry_store_failing"), 1.0);
    // Refused up front while failing, before anything changes.
    let before = ips(&n, "big").len();
    let r = n.req(
        "POST",
        &format!("{NS}/instance?serviceName=big&ip=10.6.0.1&port=1&ephemeral=false"),
        "",
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        ips(&n, "big").len(),
        before,
        "a refused write changes nothing"
    );
    ok(
        &n,
        "POST",
        &format!("{NS}/instance?serviceName=eph&ip=10.6.0.2&port=1"),
    );
    assert_eq!(ips(&n, "eph"), set(&["10.6.0.2"]));
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);

    // Room again.
    let pid = n.child.id().to_string();
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--fsize=unlimited:unlimited"])
        .status()
        .unwrap();
    assert!(raised.success());
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &n,
            "registry_store_failing"
        ) == 0.0),
        "the store recovers"
    );
    ok(
        &n,
        "POST",
        &format!("{NS}/instance?serviceName=big&ip=10.6.0.3&port=1&ephemeral=false"),
    );
    kill9(n);
    let n = start(dir.path(), &[]);
    let back = ips(&n, "big");
    assert!(back.len() >= at, "{} of {at} acknowledged", back.len());
    assert!(back.contains("10.6.0.3"));
    assert!(
        !back.contains("10.6.0.1"),
        "refused up front, never applied"
    );
}

/// Stores of older row formats are rewritten at start and serve what they
/// held, then and after another restart.
#[test]
fn a_format_1_store_is_rewritten_and_keeps_its_instances() {
    older_format_store_is_rewritten(1);
}

#[test]
fn a_format_2_store_is_rewritten_and_keeps_its_instances() {
    older_format_store_is_rewritten(2);
}

/// Writes a store file of row format `format` (1: rows keyed by service
/// and instance; 2: by version, JSON records) with redb: one persistent
/// instance per (service, ip), all saved a minute ago.
fn write_old_store(file: &Path, format: u64, rows: &[(String, String)]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hlc = distro_registry::distro::hlc::pack(now - 60_000, 0);
    let db = redb::Database::create(file).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        let mut m = txn.open_table(meta).unwrap();
        m.insert("format", format).unwrap();
        m.insert("clock", hlc).unwrap();
        let v1: redb::TableDefinition<(&str, &str), &[u8]> =
            redb::TableDefinition::new("instances");
        let v2: redb::TableDefinition<(u64, u64, &str, &str), &[u8]> =
            redb::TableDefinition::new("instance_rows");
        let mut t1 = txn.open_table(v1).unwrap();
        let mut t2 = txn.open_table(v2).unwrap();
        for (svc, ip) in rows {
            let svc = format!("public##DEFAULT_GROUP@@{svc}");
            let row =
                format!(r#"["{ip}",8080,"DEFAULT",1.0,true,true,false,{{}},{hlc},256,false]"#);
            let inst = format!("{ip}#8080#DEFAULT");
            if format == 1 {
                t1.insert((svc.as_str(), inst.as_str()), row.as_bytes())
                    .unwrap();
            } else {
                t2.insert((hlc, 256, svc.as_str(), inst.as_str()), row.as_bytes())
                    .unwrap();
            }
        }
        let services: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("services");
        txn.open_table(services).unwrap();
    }
    txn.commit().unwrap();
}

/// A store file of an older row format, two persistent instances in it:
/// a node reads it, rewrites it, and keeps what later writes do to it.
fn older_format_store_is_rewritten(format: u64) {
    let dir = TempDir::new(&format!("format{format}"));
    let rows: Vec<(String, String)> = ["10.14.0.1", "10.14.0.2"]
        .iter()
        .map(|ip| ("old-format".to_string(), ip.to_string()))
        .collect();
    write_old_store(&dir.0.join("registry.redb"), format, &rows);
    let both = set(&["10.14.0.1", "10.14.0.2"]);
    let n = start(dir.path(), &[]);
    assert_eq!(ips(&n, "old-format"), both);
    ok(
        &n,
        "DELETE",
        &format!("{NS}/instance?serviceName=old-format&ip=10.14.0.2&port=8080&ephemeral=false"),
    );
    assert!(n.terminate().success());
    let n = start(dir.path(), &[]);
    assert_eq!(ips(&n, "old-format"), set(&["10.14.0.1"]));
}

/// A node with a store over two cores answers no one, not even readiness,
/// before every shard holds its services: the first ready answer comes
/// with every saved instance counted and listed. (A shard done first used
/// to answer readiness while the other still read its half back: bench
/// restart.sh saw 499,400 of 1,000,000 instances once ready.)
#[test]
fn a_restarting_node_is_ready_only_with_every_shard_restored() {
    const SERVICES: usize = 1000;
    const PER_SERVICE: usize = 100;
    let dir = TempDir::new("ready-restored");
    // Every big service on shard 1 and one small one on shard 0: shard 0
    // is done long before shard 1.
    let on = |shard: usize| {
        (0..).map(|s| format!("svc-{s}")).filter(move |n| {
            let key = format!("public##DEFAULT_GROUP@@{n}");
            distro_registry::shard::router::shard_of(&key, 2) == shard
        })
    };
    let big: Vec<String> = on(1).take(SERVICES).collect();
    let small = on(0).next().unwrap();
    let mut rows = vec![(small.clone(), "10.200.0.1".to_string())];
    for (s, name) in big.iter().enumerate() {
        for i in 0..PER_SERVICE {
            rows.push((name.clone(), format!("10.{}.{}.{}", s / 256, s % 256, i)));
        }
    }
    write_old_store(&dir.0.join("registry.redb"), 2, &rows);
    let held = common::reserved_ports(1);
    let port = common::port_of(&held[0]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let args: Vec<String> = [
        "--bind",
        &addr.to_string(),
        "--cores",
        "2",
        "--grpc-port",
        "0",
        "--data-dir",
        dir.path(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut n = Node {
        child,
        addr,
        log: std::sync::mpsc::channel().1,
        early_log: Vec::new(),
    };
    // Poll readiness from the moment the process runs, as an orchestrator
    // does, not from the "listening on" line; several connections a round,
    // so that some land on each shard (a busy shard answers none in time).
    let deadline = Instant::now() + Duration::from_secs(60);
    let answered_ready = |s: &mut std::net::TcpStream| {
        use std::io::Read;
        let mut buf = [0u8; 12];
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s.read_exact(&mut buf).is_ok() && &buf == b"HTTP/1.1 200"
    };
    // The metrics on the connection that answered ready first, then on
    // fresh ones.
    let mut first = 'poll: loop {
        assert!(Instant::now() < deadline, "never ready");
        let mut round = Vec::new();
        for _ in 0..8 {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                common::send(&mut s, "GET", "/nacos/v1/console/health/readiness", "", &[]);
                round.push(s);
            }
        }
        for mut s in round {
            if answered_ready(&mut s) {
                break 'poll s;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    common::send(&mut first, "GET", "/metrics", "", &[]);
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut page = Vec::new();
    let counted = loop {
        let mut buf = [0u8; 4096];
        use std::io::Read;
        let got = first.read(&mut buf).unwrap();
        assert!(got > 0, "closed before the metrics");
        page.extend_from_slice(&buf[..got]);
        let text = String::from_utf8_lossy(&page);
        if let Some(v) = text
            .split("\nregistry_instances ")
            .nth(1)
            .and_then(|r| r.split_once('\n'))
        {
            break v.0.trim().parse::<f64>().unwrap();
        }
    };
    assert_eq!(
        counted,
        (SERVICES * PER_SERVICE + 1) as f64,
        "at the first ready answer"
    );
    // Several fresh connections: each may land on either shard.
    for _ in 0..8 {
        assert_eq!(
            metric(&n, "registry_instances"),
            (SERVICES * PER_SERVICE + 1) as f64
        );
    }
    for name in [&big[0], &big[SERVICES - 1]] {
        assert_eq!(ips(&n, name).len(), PER_SERVICE, "{name}");
    }
    assert_eq!(ips(&n, &small).len(), 1);
    let _ = n.child.kill();
    let _ = n.child.wait();
}
