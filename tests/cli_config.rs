//! Configuration from flags, `DISTRO_REGISTRY_*` variables and a TOML
//! file; bad configuration refused; SIGTERM/SIGINT stop cleanly.

mod common;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn beat_interval(n: &Node) -> serde_json::Value {
    n.req(
        "POST",
        &format!("{NS}/instance?serviceName=c&ip=10.0.0.1&port=1"),
        "",
    );
    n.req(
        "PUT",
        &format!("{NS}/instance/beat?serviceName=c&ip=10.0.0.1&port=1"),
        "",
    )
    .json()["clientBeatInterval"]
        .clone()
}

#[test]
fn environment_and_file_and_flag_precedence() {
    let dir = std::env::temp_dir().join(format!("dr-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, "beat-interval-ms = 3000\ncores = 1\n").unwrap();
    let f = file.to_str().unwrap();
    // File alone.
    let n = Node::start(&["--config", f]);
    assert_eq!(beat_interval(&n), 3000);
    assert!(n
        .get("/metrics")
        .body
        .contains("registry_shard_services{shard=\"0\"}"));
    assert!(
        !n.get("/metrics").body.contains("shard=\"1\""),
        "cores = 1 from the file"
    );
    drop(n);
    // Environment beats the file.
    let n = Node::start_with_env(
        &["--config", f],
        &[("DISTRO_REGISTRY_BEAT_INTERVAL_MS", "4000")],
    );
    assert_eq!(beat_interval(&n), 4000);
    drop(n);
    // A flag beats both.
    let n = Node::start_with_env(
        &["--config", f, "--beat-interval-ms", "4500"],
        &[("DISTRO_REGISTRY_BEAT_INTERVAL_MS", "4000")],
    );
    assert_eq!(beat_interval(&n), 4500);
}

fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distro-registry"));
    cmd.env(common::DATA_DIR_ENV, "none");
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    assert!(refused(&["--cores", "0", "--bind", "127.0.0.1:0"], &[]).contains("cores"));
    assert!(refused(&["--bind", "nonsense"], &[]).contains("bind"));
    let e = refused(
        &["--bind", "127.0.0.1:0"],
        &[("DISTRO_REGISTRY_IDLE_TIMEOUT_MS", "soon")],
    );
    assert!(e.contains("DISTRO_REGISTRY_IDLE_TIMEOUT_MS"), "{e}");
    let path = std::env::temp_dir().join(format!("dr-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "no-such-setting = 1\n").unwrap();
    let e = refused(
        &["--config", path.to_str().unwrap(), "--bind", "127.0.0.1:0"],
        &[],
    );
    assert!(e.contains("no-such-setting"), "{e}");
    let e = refused(&["--config", "/nonexistent/x.toml"], &[]);
    assert!(e.contains("cannot read config file"), "{e}");
    // The port is taken: a clear error, exit non-zero.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let e = refused(&["--bind", &taken], &[]);
    assert!(e.contains("cannot listen"), "{e}");
}

#[test]
fn sigterm_finishes_requests_then_exits_zero() {
    let n = Node::start(&["--cores", "2"]);
    let mut s = n.connect();
    // A pipelined burst, then SIGTERM right away: every request is answered.
    // Services on both shards: some requests cross cores while the node
    // stops, and must still be answered.
    let burst: String = (0..50)
        .map(|i| {
            format!("POST /nacos/v1/ns/instance?serviceName=t{i}&ip=10.0.0.1&port=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        })
        .collect();
    s.write_all(burst.as_bytes()).unwrap();
    let first = read_response(&mut s).unwrap();
    assert_eq!(first.status, 200);
    let addr = n.addr;
    let status = n.terminate();
    assert!(status.success(), "exit status {status:?}");
    let mut answered = 1;
    while let Some(r) = read_response(&mut s) {
        assert_eq!(r.status, 200);
        answered += 1;
    }
    assert_eq!(answered, 50);
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "still accepting"
    );
}

#[test]
fn sigint_exits_zero() {
    let n = Node::start(&[]);
    unsafe_kill(n.child.id(), "INT");
    let mut n = n;
    assert!(eventually(
        Duration::from_secs(10),
        || matches!(n.child.try_wait(), Ok(Some(s)) if s.success())
    ));
}

#[test]
fn each_shard_logs_its_driver_and_it_matches_the_environment() {
    let n = Node::start(&["--cores", "2"]);
    let mut drivers: Vec<String> = n
        .early_log
        .iter()
        .filter(|l| l.contains("shard started"))
        .cloned()
        .collect();
    while drivers.len() < 2 {
        let line = n
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("every shard logs its driver");
        if line.contains("shard started") {
            drivers.push(line);
        }
    }
    let legacy = std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some();
    for line in &drivers {
        assert_eq!(line.contains("epoll"), legacy, "{line}");
        assert_eq!(line.contains("io_uring"), !legacy, "{line}");
    }
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
}

/// Regression: with stderr a closed pipe, a log line panicked the thread
/// that wrote it (tracing-subscriber reported the failed write with
/// `eprintln!`), so SIGTERM left nodes hanging with a dead shard.
#[test]
fn sigterm_stops_a_node_whose_stderr_reader_went_away() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .env(common::DATA_DIR_ENV, "none")
        .args([
            "--bind",
            "127.0.0.1:0",
            "--cores",
            "2",
            "--log-level",
            "debug",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr: std::net::SocketAddr = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "node exited early"
        );
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    drop(reader); // the read end closes: every later log line hits EPIPE
    std::thread::sleep(Duration::from_millis(300)); // shards log as they start
    for _ in 0..4 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        send(&mut s, "GET", "/nacos/v1/console/health/liveness", "", &[]);
        assert_eq!(
            read_response(&mut s).unwrap().status,
            200,
            "every shard still serves"
        );
    }
    unsafe_kill(child.id(), "TERM");
    let ok = eventually(
        Duration::from_secs(10),
        || matches!(child.try_wait(), Ok(Some(s)) if s.success()),
    );
    if !ok {
        let _ = child.kill();
    }
    assert!(ok, "node did not exit 0 after SIGTERM with a broken stderr");
}

/// Shards pin themselves within the CPUs the process may use: under
/// `taskset -c 1` the single shard runs on CPU 1, not on CPU 0.
#[test]
fn shards_pin_within_the_allowed_cpus() {
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        < 2
    {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let child = Command::new("taskset")
        .env(common::DATA_DIR_ENV, "none")
        .args([
            "-c",
            "1",
            env!("CARGO_BIN_EXE_distro-registry"),
            "--bind",
            "127.0.0.1:0",
            "--cores",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("taskset (util-linux) runs the node");
    let n = Node::attach(child);
    // The shard pins itself before it logs "shard started"; wait for that
    // line so that the affinity read below is the one it chose.
    if !n.early_log.iter().any(|l| l.contains("shard started")) {
        loop {
            let line = n
                .log
                .recv_timeout(Duration::from_secs(10))
                .expect("the shard logs its start");
            if line.contains("shard started") {
                break;
            }
        }
    }
    let mut shard_cpus = Vec::new();
    for task in shard_tasks(&n) {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let cpus = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .map(|l| l.split(':').nth(1).unwrap().trim().to_string())
            .unwrap();
        shard_cpus.push(cpus);
    }
    assert_eq!(shard_cpus, vec!["1".to_string()]);
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
}

/// Runs the binary with `args` and returns (exit status, stderr), or
/// panics when it is still running after `secs` (it was meant to refuse).
fn exits_within(args: &[&str], secs: u64) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .env(common::DATA_DIR_ENV, "none")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status, err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after {secs} s: it shared a busy port");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_node_on_a_busy_port_refuses_to_start() {
    // Defect: both nodes joined one SO_REUSEPORT group and split the data.
    let first = Node::start(&["--cores", "2"]);
    let addr = first.addr.to_string();
    for cores in ["1", "2"] {
        let (status, err) = exits_within(&["--bind", &addr, "--cores", cores], 10);
        assert!(!status.success(), "second node exited {status}");
        assert!(err.contains("address already in use"), "{err}");
        assert!(err.contains(&addr), "the error names the address: {err}");
    }
    // The first node still answers every connection: nobody shares its port.
    first.req(
        "POST",
        &format!("{NS}/instance?serviceName=busy&ip=10.0.0.1&port=1"),
        "",
    );
    for _ in 0..20 {
        let list = first.json(&format!("{NS}/instance/list?serviceName=busy"));
        assert_eq!(list["hosts"].as_array().unwrap().len(), 1, "{list}");
    }
    // The gRPC port too: a node on another HTTP port but the same gRPC
    // port refuses to start.
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let g = Node::start(&["--cores", "1", "--grpc-port", &grpc]);
    let (status, err) = exits_within(&["--bind", "127.0.0.1:0", "--grpc-port", &grpc], 10);
    assert!(
        !status.success() && err.contains("address already in use"),
        "{err}"
    );
    assert!(err.contains(&format!("127.0.0.1:{grpc}")), "{err}");
    drop(g);
    // A wildcard bind over the same port is refused as well.
    let port = first.addr.port().to_string();
    let (status, err) = exits_within(&["--bind", &format!("0.0.0.0:{port}")], 10);
    assert!(
        !status.success() && err.contains("address already in use"),
        "{err}"
    );
}

#[test]
fn help_shows_each_settings_default_and_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_distro-registry"))
        .env(common::DATA_DIR_ENV, "none")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env, default) in [
        (
            "--bind",
            "DISTRO_REGISTRY_BIND",
            "[default: 127.0.0.1:8848]",
        ),
        (
            "--beat-interval-ms",
            "DISTRO_REGISTRY_BEAT_INTERVAL_MS",
            "[default: 5000]",
        ),
        ("--peers", "DISTRO_REGISTRY_PEERS", "[default: none]"),
        (
            "--cores",
            "DISTRO_REGISTRY_CORES",
            "the CPUs this process may use",
        ),
    ] {
        let at = help
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag}: {help}"));
        let entry = &help[at..];
        let entry = &entry[..entry[2..].find("\n      --").map_or(entry.len(), |e| e + 2)];
        assert!(entry.contains(&format!("[env: {env}]")), "{entry}");
        assert!(entry.contains(default), "{entry}");
    }
    // The help says what the node does with --peers: this node in the list.
    assert!(!help.contains("included or not"), "{help}");
    assert!(help.contains("this node included"), "{help}");
}

#[test]
fn configuration_errors_say_what_is_wrong() {
    let e = refused(
        &["--bind", "127.0.0.1:0"],
        &[("DISTRO_REGISTRY_CORES", "abc")],
    );
    assert!(
        e.contains("DISTRO_REGISTRY_CORES=abc") && e.contains("not a whole number"),
        "{e}"
    );
    let e = refused(
        &["--peers", "127.0.0.1:9032,foo", "--cluster-token", "t"],
        &[],
    );
    assert!(e.contains("\"foo\"") && !e.contains("line"), "{e}");
    let e = refused(
        &["--peers", "127.0.0.1:9032", "--bind", "127.0.0.1:9032"],
        &[],
    );
    assert!(e.contains("--cluster-token") && !e.contains("SPEC"), "{e}");
    let e = refused(&["--bind", "no-such-host.invalid:9010"], &[]);
    assert!(e.contains("give an IP address"), "{e}");
}

#[test]
fn bind_accepts_a_host_name() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let n = Node::start_raw(&[
        "--bind".into(),
        format!("localhost:{port}"),
        "--cores".into(),
        "1".into(),
    ]);
    assert_eq!(n.addr.to_string(), format!("127.0.0.1:{port}"));
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
}

#[test]
fn toml_peers_may_be_an_array() {
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let dir = std::env::temp_dir().join(format!("dr-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        format!(
            "bind = \"127.0.0.1:{0}\"\ngrpc-port = 0\npeers = [\"127.0.0.1:{0}\", \"127.0.0.1:{1}\"]\ncluster-token = \"t\"\ncores = 1\n",
            ports[0], ports[1]
        ),
    )
    .unwrap();
    let n = Node::start_raw(&["--config".into(), file.to_str().unwrap().into()]);
    let v = n.json("/nacos/v1/core/cluster/nodes");
    let members: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(members.len(), 2, "{v}");
    // The string form still works, and a list of non-strings is refused.
    std::fs::write(&file, "peers = [1, 2]\n").unwrap();
    let e = refused(&["--config", file.to_str().unwrap()], &[]);
    assert!(e.contains("peers"), "{e}");
}

#[test]
fn more_shards_than_cpus_is_warned_about() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let n = Node::start(&["--cores", &(cpus + 1).to_string()]);
    assert!(
        n.early_log
            .iter()
            .any(|l| l.contains("more shards than CPUs")),
        "{:?}",
        n.early_log
    );
    let n = Node::start(&["--cores", &cpus.to_string()]);
    assert!(!n
        .early_log
        .iter()
        .any(|l| l.contains("more shards than CPUs")));
}

/// The scheduling policy (`/proc/PID/task/TID/stat` field 41) of each
/// shard thread of a node started with `args`, once every shard has
/// logged its start.
fn shard_policies(args: &[&str]) -> Vec<u32> {
    let mut all = vec!["--cores", "2"];
    all.extend_from_slice(args);
    let n = Node::start(&all);
    let mut started = n
        .early_log
        .iter()
        .filter(|l| l.contains("shard started"))
        .count();
    while started < 2 {
        let line = n
            .log
            .recv_timeout(Duration::from_secs(10))
            .expect("each shard logs its start");
        started += usize::from(line.contains("shard started"));
    }
    let mut policies = Vec::new();
    for task in shard_tasks(&n) {
        let stat = std::fs::read_to_string(task.join("stat")).unwrap();
        // Fields after the command's closing parenthesis start at 3.
        let after = stat.rsplit_once(')').unwrap().1;
        let policy = after.split_whitespace().nth(41 - 3).unwrap();
        policies.push(policy.parse().unwrap());
    }
    assert_eq!(n.get("/nacos/v1/console/health/liveness").status, 200);
    policies
}

#[test]
fn shards_run_as_sched_batch_unless_told_not_to() {
    let batch = libc::SCHED_BATCH as u32;
    assert_eq!(shard_policies(&[]), vec![batch, batch]);
    let normal = libc::SCHED_OTHER as u32;
    assert_eq!(
        shard_policies(&["--shard-sched-batch", "off"]),
        vec![normal, normal]
    );
}

/// `/proc/PID/task/TID` of each shard thread of `n`.
fn shard_tasks(n: &Node) -> Vec<std::path::PathBuf> {
    let pid = n.child.id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| t.path())
        .filter(|t| {
            std::fs::read_to_string(t.join("comm"))
                .unwrap_or_default()
                .trim()
                .starts_with("shard-")
        })
        .collect()
}
