//! The Distro cluster with real processes on loopback (SPEC 4): three
//! nodes on random ports, writes through any node, kill -9, SIGSTOP, a
//! late joiner, and peer authentication.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{eventually, port_of, reserved_ports, unsafe_kill, Node, Resp};
use distro_registry::distro::hash::owner_index;

const TOKEN: &str = "test-cluster-token";

/// Short timings so that faults play out in seconds: reports every
/// 300 ms, verify every second, unhealthy after 3 s, deleted after 6 s.
const FAST: [&str; 12] = [
    // Explicit HTTP ports: the gRPC port + 1000 could be anyone's.
    "--grpc-port",
    "0",
    "--report-interval-ms",
    "300",
    "--verify-interval-ms",
    "1000",
    "--unhealthy-timeout-ms",
    "3000",
    "--delete-timeout-ms",
    "6000",
    "--cores",
    "2",
];

struct Cluster {
    addrs: Vec<String>,
    nodes: Vec<Option<Node>>,
    extra: Vec<String>,
    /// Each node's data directory is `data/node-i`; None: --data-dir none.
    data: Option<std::path::PathBuf>,
    /// Holds the members' ports (see `reserved_ports`).
    _ports: Vec<socket2::Socket>,
}

impl Cluster {
    /// Three members; `start` says which to start now.
    fn new(start: &[usize], extra: &[&str]) -> Cluster {
        let ports = reserved_ports(3);
        let addrs: Vec<String> = ports
            .iter()
            .map(|p| format!("127.0.0.1:{}", port_of(p)))
            .collect();
        let mut c = Cluster {
            addrs,
            nodes: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            data: None,
            _ports: ports,
        };
        for &i in start {
            c.start(i);
        }
        c
    }

    fn args(&self, i: usize) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--bind".into(),
            self.addrs[i].clone(),
            "--peers".into(),
            self.addrs.join(","),
            "--cluster-token".into(),
            TOKEN.into(),
        ];
        a.extend(FAST.iter().map(|s| s.to_string()));
        a.extend(self.extra.iter().cloned());
        if let Some(d) = &self.data {
            a.push("--data-dir".into());
            a.push(d.join(format!("node-{i}")).to_string_lossy().into_owned());
        }
        a
    }

    /// Three members, each with a data directory under a fresh
    /// `dr-cluster-TAG-PID`, started and UP.
    fn with_data_dirs(tag: &str) -> (Cluster, std::path::PathBuf) {
        let dir = format!("dr-cluster-{tag}-{}", std::process::id());
        let data = std::env::temp_dir().join(dir);
        let _ = std::fs::remove_dir_all(&data);
        let mut c = Cluster::new(&[], &[]);
        c.data = Some(data.clone());
        for i in 0..3 {
            c.start(i);
        }
        for i in 0..3 {
            c.wait_ready(i);
        }
        c.wait_up(3);
        (c, data)
    }

    fn start(&mut self, i: usize) {
        self.nodes[i] = Some(Node::start_raw(&self.args(i)));
    }

    /// Starts node `i` with `flag` set to `value` instead of FAST's.
    fn start_setting(&mut self, i: usize, flag: &str, value: &str) {
        let mut a = self.args(i);
        let at = a.iter().position(|x| x == flag).expect("a FAST flag");
        a[at + 1] = value.to_string();
        self.nodes[i] = Some(Node::start_raw(&a));
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node running")
    }

    fn wait_ready(&self, i: usize) {
        assert!(
            eventually(Duration::from_secs(15), || {
                self.node(i)
                    .get("/nacos/v1/console/health/readiness")
                    .status
                    == 200
            }),
            "node {i} never became ready"
        );
    }

    /// Waits until every running node sees `n` members UP.
    fn wait_up(&self, n: usize) {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let ok = eventually(Duration::from_secs(15), || {
                let v = node.json("/nacos/v1/core/cluster/nodes");
                v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["state"] == "UP")
                    .count()
                    == n
            });
            assert!(ok, "node {i} never saw {n} members UP");
        }
    }

    fn kill9(&mut self, i: usize) {
        let mut n = self.nodes[i].take().expect("running");
        n.child.kill().unwrap();
        n.child.wait().unwrap();
    }
}

fn register(n: &Node, svc: &str, ip: &str, extra: &str) -> Resp {
    n.req(
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080{extra}"),
        "",
    )
}

fn ips(n: &Node, svc: &str) -> BTreeSet<String> {
    n.ips(svc)
}

fn healthy_ips(n: &Node, svc: &str) -> BTreeSet<String> {
    let v = n.json(&format!("/nacos/v1/ns/instance/list?serviceName={svc}"));
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["healthy"] == true)
        .map(|h| h["ip"].as_str().unwrap().to_string())
        .collect()
}

fn metric(n: &Node, name: &str) -> u64 {
    n.metric(name) as u64
}

fn owner_of(c: &Cluster, svc: &str) -> usize {
    let owner = c.node(0).json(&format!(
        "/nacos/v1/ns/operator/distro/server?serviceName={svc}"
    ))["responsibleServer"]
        .as_str()
        .unwrap()
        .to_string();
    c.addrs.iter().position(|a| *a == owner).unwrap()
}

#[test]
fn writes_through_any_node_reach_every_node_and_land_on_the_owner() {
    let c = Cluster::new(&[0, 1, 2], &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }
    c.wait_up(3);
    // Every node names the same owner, the one SPEC 4.2's hash picks over
    // the sorted healthy list.
    let mut sorted = c.addrs.clone();
    sorted.sort();
    for k in 0..12 {
        let svc = format!("svc-{k}");
        let expected = &sorted[owner_index(&format!("DEFAULT_GROUP@@{svc}"), 3)];
        for i in 0..3 {
            let v = c.node(i).json(&format!(
                "/nacos/v1/ns/operator/distro/server?serviceName={svc}"
            ));
            assert_eq!(v["responsibleServer"], expected.as_str(), "node {i}, {svc}");
        }
    }
    // Registered through each node in turn: visible on all within 1 s.
    for k in 0..12 {
        let svc = format!("svc-{k}");
        let ip = format!("10.1.0.{k}");
        let r = register(c.node(k % 3), &svc, &ip, "");
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        for i in 0..3 {
            assert!(
                eventually(Duration::from_secs(1), || ips(c.node(i), &svc)
                    .contains(&ip)),
                "{svc} not on node {i} within 1 s"
            );
        }
    }
    // A write through a non-owner is forwarded: the owner has it the moment
    // the answer arrives, and the non-owner counts a forward.
    let svc = "forwarded-svc";
    let owner = owner_of(&c, svc);
    let via = (owner + 1) % 3;
    let before = metric(c.node(via), "registry_forwarded_total");
    let r = register(c.node(via), svc, "10.2.0.1", "");
    assert_eq!(r.status, 200);
    assert!(ips(c.node(owner), svc).contains("10.2.0.1"));
    assert_eq!(metric(c.node(via), "registry_forwarded_total"), before + 1);
    // A deregister through the third node travels the same way.
    let third = (owner + 2) % 3;
    let r = c.node(third).req(
        "DELETE",
        &format!("/nacos/v1/ns/instance?serviceName={svc}&ip=10.2.0.1&port=8080"),
        "",
    );
    assert_eq!(r.status, 200);
    assert!(ips(c.node(owner), svc).is_empty());
    for i in 0..3 {
        assert!(eventually(Duration::from_secs(1), || ips(c.node(i), svc).is_empty()));
    }
    // The Java client's PUT semantics survive the forward (its User-Agent
    // travels with it): updating an absent instance is an error.
    let r = c.node(via).req_h(
        "PUT",
        &format!("/nacos/v1/ns/instance?serviceName={svc}&ip=10.9.9.9&port=1&weight=2"),
        "",
        &[("User-Agent", "Nacos-Java-Client:v1.4.6")],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // Every service is some one node's responsibility (operator/metrics,
    // refreshed every verify round).
    assert!(
        eventually(Duration::from_secs(5), || {
            let m: Vec<serde_json::Value> = (0..3)
                .map(|i| c.node(i).json("/nacos/v1/ns/operator/metrics"))
                .collect();
            let owned: u64 = m
                .iter()
                .map(|v| v["responsibleServiceCount"].as_u64().unwrap())
                .sum();
            m.iter().all(|v| v["serviceCount"] == 13) && owned == 13
        }),
        "responsible counts do not add up"
    );
}

#[test]
fn owner_killed_while_clients_beat_loses_nothing_and_comes_back_whole() {
    let mut c = Cluster::new(&[0, 1, 2], &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }
    c.wait_up(3);
    // Services owned by node 0, each with two instances registered
    // through nodes 1 and 2.
    let owned: Vec<String> = (0..200)
        .map(|k| format!("beat-svc-{k}"))
        .filter(|s| owner_of(&c, s) == 0)
        .take(5)
        .collect();
    assert_eq!(owned.len(), 5);
    let instances: Vec<(String, String)> = owned
        .iter()
        .flat_map(|s| {
            [
                (s.clone(), "10.3.0.1".to_string()),
                (s.clone(), "10.3.0.2".to_string()),
            ]
        })
        .collect();
    for (k, (s, ip)) in instances.iter().enumerate() {
        assert_eq!(register(c.node(1 + k % 2), s, ip, "").status, 200);
    }
    for (s, ip) in &instances {
        for i in 0..3 {
            assert!(eventually(Duration::from_secs(2), || ips(c.node(i), s).contains(ip)));
        }
    }
    let expected: BTreeSet<String> = ["10.3.0.1".to_string(), "10.3.0.2".to_string()].into();
    let beat_all = |c: &Cluster, round: usize| {
        for (k, (s, ip)) in instances.iter().enumerate() {
            let via = c.node(1 + (k + round) % 2);
            let beat = format!(
                r#"{{"ip":"{ip}","port":8080,"cluster":"DEFAULT","serviceName":"DEFAULT_GROUP@@{s}"}}"#
            );
            let body = format!(
                "serviceName={s}&ip={ip}&port=8080&beat={}",
                form_encode(&beat)
            );
            let r = via.req("PUT", "/nacos/v1/ns/instance/beat", &body);
            assert_eq!(r.status, 200, "beat {s} {ip}: {}", r.body);
            assert_eq!(
                r.json()["code"],
                10200,
                "beat {s} {ip} not known: {}",
                r.body
            );
        }
    };
    beat_all(&c, 0);
    c.kill9(0);
    // 12 s of beats (twice the delete timeout) through nodes 1 and 2;
    // writes keep succeeding; nothing beating is ever unhealthy or gone.
    let start = Instant::now();
    let mut round = 1;
    let mut writes = 0;
    while start.elapsed() < Duration::from_secs(12) {
        beat_all(&c, round);
        let r = register(
            c.node(1 + round % 2),
            &owned[round % owned.len()],
            "10.3.9.9",
            "&ephemeral=false",
        );
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "ok"),
            "write after the owner died"
        );
        writes += 1;
        for i in 1..3 {
            for s in &owned {
                let h = healthy_ips(c.node(i), s);
                assert!(
                    expected.is_subset(&h),
                    "round {round}: node {i} has {h:?} healthy for {s}, expected {expected:?}"
                );
            }
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(writes > 5);
    // Ownership moved off the dead node.
    for s in &owned {
        assert_ne!(owner_of_via(&c, 1, s), c.addrs[0]);
    }
    // The restarted node loads the snapshot, becomes ready and holds all.
    c.start(0);
    c.wait_ready(0);
    for s in &owned {
        let mut want = expected.clone();
        want.insert("10.3.9.9".into());
        assert!(
            eventually(Duration::from_secs(3), || ips(c.node(0), s) == want),
            "restarted node has {:?} for {s}",
            ips(c.node(0), s)
        );
    }
    c.wait_up(3);
    beat_all(&c, round);
    for i in 0..3 {
        for s in &owned {
            assert!(expected.is_subset(&healthy_ips(c.node(i), s)));
        }
    }
}

fn owner_of_via(c: &Cluster, i: usize, svc: &str) -> String {
    c.node(i).owner(svc)
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn node_frozen_for_20_s_converges_and_deregistered_instances_stay_gone() {
    let c = Cluster::new(&[0, 1, 2], &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }
    c.wait_up(3);
    // Persistent instances: no beats needed, never expired.
    let svcs: Vec<String> = (0..6).map(|k| format!("frozen-svc-{k}")).collect();
    for s in &svcs {
        for ip in ["10.4.0.1", "10.4.0.2"] {
            assert_eq!(register(c.node(0), s, ip, "&ephemeral=false").status, 200);
        }
    }
    for s in &svcs {
        assert!(eventually(Duration::from_secs(2), || ips(c.node(2), s)
            .len()
            == 2));
    }
    let frozen = c.node(2).child.id();
    unsafe_kill(frozen, "STOP");
    let t0 = Instant::now();
    // While node 2 is frozen: one instance of each service deregistered,
    // a new one registered, through nodes 0 and 1. Every write succeeds
    // (a forward to the frozen owner times out and is applied locally).
    for (k, s) in svcs.iter().enumerate() {
        let via = c.node(k % 2);
        let r = via.req(
            "DELETE",
            &format!("/nacos/v1/ns/instance?serviceName={s}&ip=10.4.0.1&port=8080&ephemeral=false"),
            "",
        );
        assert_eq!(r.status, 200, "deregister {s}: {}", r.body);
        let r = register(via, s, "10.4.0.3", "&ephemeral=false");
        assert_eq!(r.status, 200, "register {s}: {}", r.body);
    }
    let frozen_for = Duration::from_secs(20);
    std::thread::sleep(frozen_for.saturating_sub(t0.elapsed()));
    unsafe_kill(frozen, "CONT");
    let want: BTreeSet<String> = ["10.4.0.2".to_string(), "10.4.0.3".to_string()].into();
    for s in &svcs {
        for i in 0..3 {
            assert!(
                eventually(Duration::from_secs(10), || ips(c.node(i), s) == want),
                "node {i} has {:?} for {s}",
                ips(c.node(i), s)
            );
        }
    }
    // And it stays that way: nothing deregistered comes back.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for s in &svcs {
            for i in 0..3 {
                assert_eq!(ips(c.node(i), s), want, "node {i}, {s}");
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn node_started_last_loads_the_snapshot_before_it_is_ready() {
    let mut c = Cluster::new(&[0, 1], &[]);
    c.wait_ready(0);
    c.wait_ready(1);
    // The two running members see each other UP (the third is DOWN).
    c.wait_up(2);
    let svcs: Vec<String> = (0..40).map(|k| format!("late-svc-{k}")).collect();
    for (k, s) in svcs.iter().enumerate() {
        let r = register(c.node(k % 2), s, "10.5.0.1", "&ephemeral=false");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Replication settled on both running members.
    for s in &svcs {
        for i in 0..2 {
            assert!(eventually(Duration::from_secs(2), || ips(c.node(i), s)
                .len()
                == 1));
        }
    }
    c.start(2);
    c.wait_ready(2);
    // Ready means loaded: everything is there at once, no waiting.
    for s in &svcs {
        assert_eq!(
            ips(c.node(2), s),
            BTreeSet::from(["10.5.0.1".to_string()]),
            "{s}"
        );
    }
    let log: Vec<String> = c.nodes[2].as_ref().unwrap().log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("snapshot loaded")),
        "no snapshot load in the log: {log:?}"
    );
    c.wait_up(3);
}

#[test]
fn peer_endpoints_refuse_requests_without_the_token() {
    let c = Cluster::new(&[0], &[]);
    let n = c.node(0);
    let datum = r#"[{"namespace":"public","group":"DEFAULT_GROUP","name":"forged","fields":{"protect_threshold":0.0,"metadata":{},"selector":{"type":"none"},"version":{"hlc":1,"writer":0}},"deleted":null,"instances":[["6.6.6.6",1,"DEFAULT",1.0,true,true,false,{},99999999999,0,false]]}]"#;
    let forged_ua = [("User-Agent", "Nacos-Server")];
    let wrong = [("X-Distro-Token", "not-the-token")];
    let near = [("X-Distro-Token", "test-cluster-tokeN")];
    let peer_calls: [(&str, &str, &str); 6] = [
        ("PUT", "/nacos/v1/ns/distro/datum", datum),
        ("GET", "/nacos/v1/ns/distro/datum?keys=x", ""),
        ("GET", "/nacos/v1/ns/distro/datums", ""),
        (
            "PUT",
            "/nacos/v1/ns/distro/checksum?source=127.0.0.1:1",
            "{}",
        ),
        ("PUT", "/nacos/v1/ns/distro/beats", "[]"),
        (
            "POST",
            "/nacos/v1/core/cluster/report",
            r#"{"address":"127.0.0.1:1"}"#,
        ),
    ];
    for (method, path, body) in peer_calls {
        for headers in [&[][..], &forged_ua[..], &wrong[..], &near[..]] {
            let r = n.req_h(method, path, body, headers);
            assert_eq!(
                r.status, 403,
                "{method} {path} with {headers:?}: {}",
                r.body
            );
        }
    }
    // A write marked as forwarded but without the token: 403 too.
    let r = n.req_h(
        "POST",
        "/nacos/v1/ns/instance?serviceName=forged&ip=6.6.6.7&port=1",
        "",
        &[("X-Distro-Forwarded", "1"), ("User-Agent", "Nacos-Server")],
    );
    assert_eq!(r.status, 403);
    // Nothing changed.
    assert!(ips(n, "forged").is_empty());
    assert_eq!(metric(n, "registry_instances"), 0);
    // Bad input with the token: a clear 400, nothing changed.
    let token = [("X-Distro-Token", TOKEN)];
    let r = n.req_h("PUT", "/nacos/v1/ns/distro/datum", "[{not json", &token);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = n.req_h(
        "POST",
        "/nacos/v1/core/cluster/report",
        r#"{"address":"10.0.0.1:1"}"#,
        &token,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(metric(n, "registry_instances"), 0);
    // The same datum with the token is merged (the 403s were the token).
    let r = n.req_h("PUT", "/nacos/v1/ns/distro/datum", datum, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(ips(n, "forged"), BTreeSet::from(["6.6.6.6".to_string()]));
    // A record stamped far in the future (here the end of the clock's
    // range, which once wrapped the node's clock) is refused and counted.
    let future = datum
        .replace("forged", "future")
        .replace("99999999999", &u64::MAX.to_string());
    let r = n.req_h("PUT", "/nacos/v1/ns/distro/datum", &future, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(ips(n, "future").is_empty());
    assert!(eventually(Duration::from_secs(5), || metric(
        n,
        "registry_future_versions_refused_total"
    ) == 1));
}

#[test]
fn the_peer_wire_format_writes_empty_maps_as_objects() {
    let c = Cluster::new(&[0], &[]);
    let n = c.node(0);
    let token = [("X-Distro-Token", TOKEN)];
    // An older peer wrote an empty map as `[]`: still read.
    let old = r#"[{"namespace":"public","group":"DEFAULT_GROUP","name":"wire","fields":{"protect_threshold":0.0,"metadata":[],"selector":{"type":"none"},"version":{"hlc":1,"writer":0}},"deleted":null,"instances":[["6.6.6.6",1,"DEFAULT",1.0,true,true,false,[],99999999999,0,false],["6.6.6.7",1,"DEFAULT",1.0,true,true,false,{"k":"v"},99999999999,0,false]]}]"#;
    let r = n.req_h("PUT", "/nacos/v1/ns/distro/datum", old, &token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(eventually(Duration::from_secs(5), || ips(n, "wire").len() == 2));
    // (The snapshot, /distro/datums, writes the same records; it is served
    // once the node is ready, which a lone member of three is not yet.)
    {
        let path = "/nacos/v1/ns/distro/datum?keys=public%23%23DEFAULT_GROUP%40%40wire";
        let r = n.req_h("GET", path, "", &token);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let d = v
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == "wire")
            .unwrap_or_else(|| panic!("{path}: {v}"));
        assert_eq!(
            d["fields"]["metadata"],
            serde_json::json!({}),
            "{path}: {d}"
        );
        let recs = d["instances"].as_array().unwrap();
        assert_eq!(recs[0][7], serde_json::json!({}), "{path}: {d}");
        assert_eq!(recs[1][7], serde_json::json!({"k": "v"}), "{path}: {d}");
    }
}

#[test]
fn standalone_node_serves_no_peer_endpoints() {
    let n = Node::start(&["--cores", "1"]);
    for (method, path) in [
        ("PUT", "/nacos/v1/ns/distro/datum"),
        ("GET", "/nacos/v1/ns/distro/datums"),
        ("PUT", "/nacos/v1/ns/distro/checksum?source=127.0.0.1:1"),
        ("POST", "/nacos/v1/core/cluster/report"),
    ] {
        let r = n.req_h(method, path, "[]", &[("X-Distro-Token", "")]);
        assert_eq!(r.status, 404, "{method} {path}");
    }
}

#[test]
fn a_cluster_node_refuses_to_start_without_a_token_or_outside_the_members() {
    let bin = env!("CARGO_BIN_EXE_distro-registry");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .env(common::DATA_DIR_ENV, "none")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let peers = "127.0.0.1:18001,127.0.0.1:18002";
    let (code, err) = run(&["--bind", "127.0.0.1:18001", "--peers", peers]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--cluster-token"), "{err}");
    let (code, err) = run(&[
        "--bind",
        "127.0.0.1:18003",
        "--peers",
        peers,
        "--cluster-token",
        "t",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not among the members"), "{err}");
    let (code, err) = run(&[
        "--bind",
        "127.0.0.1:18001",
        "--peers",
        "127.0.0.1:x",
        "--cluster-token",
        "t",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--peers"), "{err}");
    let dir = std::env::temp_dir().join(format!("dr-conf-{}", std::process::id()));
    std::fs::write(
        &dir,
        "# members\n127.0.0.1:18001\n\n127.0.0.1:18002 # second\n",
    )
    .unwrap();
    let (code, err) = run(&[
        "--bind",
        "127.0.0.1:18001",
        "--cluster-conf",
        dir.to_str().unwrap(),
        "--peers",
        peers,
        "--cluster-token",
        "t",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not both"), "{err}");
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn beats_through_other_nodes_are_relayed_and_keep_the_owners_instances_healthy() {
    let c = Cluster::new(&[0, 1, 2], &[]);
    for i in 0..3 {
        c.wait_ready(i);
    }
    c.wait_up(3);
    let owned: Vec<String> = (0..200)
        .map(|k| format!("relay-svc-{k}"))
        .filter(|s| owner_of(&c, s) == 0)
        .take(3)
        .collect();
    for s in &owned {
        assert_eq!(register(c.node(0), s, "10.6.0.1", "").status, 200);
        assert!(eventually(Duration::from_secs(2), || {
            ips(c.node(1), s).len() == 1 && ips(c.node(2), s).len() == 1
        }));
    }
    // 5 s of light beats (no beat JSON) through nodes 1 and 2 only: past
    // the 3 s unhealthy timeout, so the owner keeps them healthy only if
    // the relayed beats reach it.
    let start = Instant::now();
    let mut k = 0;
    while start.elapsed() < Duration::from_secs(5) {
        for s in &owned {
            let via = c.node(1 + k % 2);
            let r = via.req(
                "PUT",
                &format!("/nacos/v1/ns/instance/beat?serviceName={s}&ip=10.6.0.1&port=8080"),
                "",
            );
            assert_eq!(r.json()["code"], 10200, "{}", r.body);
            k += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for s in &owned {
        assert_eq!(
            healthy_ips(c.node(0), s).len(),
            1,
            "{s} unhealthy on its owner"
        );
    }
    let relayed = metric(c.node(1), "registry_beats_relayed_total")
        + metric(c.node(2), "registry_beats_relayed_total");
    assert!(relayed >= 20, "only {relayed} beats relayed");
    assert_eq!(metric(c.node(0), "registry_forwarded_total"), 0);
    // A light beat for an instance nobody knows is forwarded to the owner
    // synchronously, so the client hears 20404 and re-registers.
    let r = c.node(1).req(
        "PUT",
        &format!(
            "/nacos/v1/ns/instance/beat?serviceName={}&ip=10.6.9.9&port=1",
            owned[0]
        ),
        "",
    );
    assert_eq!(r.json()["code"], 20404, "{}", r.body);
}

#[test]
fn members_can_come_from_a_cluster_conf_file() {
    let held = reserved_ports(2);
    let ports: Vec<u16> = held.iter().map(port_of).collect();
    let me = format!("127.0.0.1:{}", ports[0]);
    let conf = std::env::temp_dir().join(format!("dr-cluster-{}.conf", std::process::id()));
    std::fs::write(
        &conf,
        format!(
            "# two members\n{me}\n\n127.0.0.1:{} # not started\n",
            ports[1]
        ),
    )
    .unwrap();
    let n = Node::start_raw(&[
        "--bind".into(),
        me.clone(),
        "--cluster-conf".into(),
        conf.to_str().unwrap().into(),
        "--cluster-token".into(),
        TOKEN.into(),
        "--report-interval-ms".into(),
        "200".into(),
    ]);
    let v = n.json("/nacos/v1/ns/operator/servers");
    let addrs: BTreeSet<String> = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        addrs,
        BTreeSet::from([me.clone(), format!("127.0.0.1:{}", ports[1])])
    );
    // The absent member turns DOWN (connection refused) and this node owns
    // everything.
    assert!(eventually(Duration::from_secs(15), || {
        let v = n.json("/nacos/v1/core/cluster/nodes");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["state"] == "DOWN")
            && n.json("/nacos/v1/ns/operator/distro/server?serviceName=x")["responsibleServer"]
                == me.as_str()
    }));
    let _ = std::fs::remove_file(&conf);
}

#[test]
fn a_cluster_token_mismatch_is_logged_and_shown_in_the_member_state() {
    let held = reserved_ports(2);
    let addrs: Vec<String> = held
        .iter()
        .map(|p| format!("127.0.0.1:{}", port_of(p)))
        .collect();
    let start = |i: usize, token: &str| {
        let mut a: Vec<String> = vec![
            "--bind".into(),
            addrs[i].clone(),
            "--peers".into(),
            addrs.join(","),
            "--cluster-token".into(),
            token.into(),
        ];
        a.extend(FAST.iter().map(|s| s.to_string()));
        Node::start_raw(&a)
    };
    let a = start(0, "token-a");
    let _b = start(1, "token-b");
    // Within the first snapshot attempts, long before readiness gives up.
    let shown = eventually(Duration::from_secs(5), || {
        let v = a.json("/nacos/v1/core/cluster/nodes");
        v["data"].as_array().unwrap().iter().any(|m| {
            m["address"] == addrs[1].as_str()
                && m["state"] == "DOWN"
                && m["extendInfo"]["lastRefusal"]
                    .as_str()
                    .is_some_and(|r| r.contains("cluster token"))
        })
    });
    assert!(shown, "{}", a.json("/nacos/v1/core/cluster/nodes"));
    let mut logged = false;
    while let Ok(line) = a.log.recv_timeout(Duration::from_secs(2)) {
        if line.contains("refused our cluster token") && line.contains(&addrs[1]) {
            logged = true;
            break;
        }
    }
    assert!(logged, "the log names the refusal");
    // This node itself is never marked.
    let v = a.json("/nacos/v1/core/cluster/nodes");
    let me = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["address"] == addrs[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(me["state"], "UP");
    assert_eq!(me["extendInfo"], serde_json::json!({}));
}

/// kill -9 of every node of the cluster, then all three started again
/// (issue 12): each node lists every persistent instance and service field
/// that was acknowledged, nothing deregistered comes back, and ephemeral
/// instances are listed at once and kept while their clients beat.
#[test]
fn a_whole_cluster_killed_and_restarted_keeps_what_it_acknowledged() {
    let (mut c, data) = Cluster::with_data_dirs("restart");
    let services: Vec<String> = (0..6).map(|k| format!("keep-{k}")).collect();
    for (k, s) in services.iter().enumerate() {
        let via = c.node(k % 3);
        for ip in ["10.8.0.1", "10.8.0.2"] {
            assert_eq!(register(via, s, ip, "&ephemeral=false").status, 200);
        }
        assert_eq!(register(via, s, "10.8.1.1", "").status, 200);
        assert_eq!(register(via, s, "10.8.1.2", "").status, 200);
        let del = c.node((k + 2) % 3).req(
            "DELETE",
            &format!("/nacos/v1/ns/instance?serviceName={s}&ip=10.8.0.2&port=8080&ephemeral=false"),
            "",
        );
        assert_eq!(del.status, 200, "{}", del.body);
        let del = c.node((k + 2) % 3).req(
            "DELETE",
            &format!("/nacos/v1/ns/instance?serviceName={s}&ip=10.8.1.2&port=8080"),
            "",
        );
        assert_eq!(del.status, 200, "{}", del.body);
    }
    let expected: BTreeSet<String> = ["10.8.0.1", "10.8.1.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in &services {
        for i in 0..3 {
            assert!(
                eventually(Duration::from_secs(5), || ips(c.node(i), s) == expected),
                "{s} on node {i} before the restart: {:?}",
                ips(c.node(i), s)
            );
        }
    }
    for (k, s) in services.iter().enumerate() {
        let r = c.node((k + 1) % 3).req(
            "PUT",
            &format!(
                "/nacos/v1/ns/service?serviceName={s}&protectThreshold=0.{k}&metadata=k%3D{k}"
            ),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    for (k, s) in services.iter().enumerate() {
        for i in 0..3 {
            assert!(eventually(Duration::from_secs(5), || {
                let v = c
                    .node(i)
                    .json(&format!("/nacos/v1/ns/service?serviceName={s}"));
                v["metadata"]["k"].as_str() == Some(k.to_string().as_str())
            }));
        }
    }
    // Replicas and ephemeral changes are saved behind, within a tick.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.start(i);
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    for (k, s) in services.iter().enumerate() {
        for i in 0..3 {
            assert_eq!(
                ips(c.node(i), s),
                expected,
                "{s} on node {i} after the restart"
            );
            let svc = c
                .node(i)
                .json(&format!("/nacos/v1/ns/service?serviceName={s}"));
            assert_eq!(
                svc["metadata"]["k"],
                k.to_string(),
                "{s} on node {i}: {svc}"
            );
        }
    }
    // The clients of the ephemeral instances go on beating (through any
    // node) past the delete timeout (6 s): they stay.
    let until = Instant::now() + Duration::from_secs(8);
    let mut round = 0;
    while Instant::now() < until {
        for (k, s) in services.iter().enumerate() {
            let beat = format!(
                r#"{{"ip":"10.8.1.1","port":8080,"cluster":"DEFAULT","serviceName":"DEFAULT_GROUP@@{s}"}}"#
            );
            let body = format!("serviceName={s}&beat={}", form_encode(&beat));
            let r = c
                .node((k + round) % 3)
                .req("PUT", "/nacos/v1/ns/instance/beat", &body);
            assert_eq!(r.status, 200, "{}", r.body);
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(1000));
    }
    for s in &services {
        for i in 0..3 {
            assert_eq!(ips(c.node(i), s), expected, "{s} on node {i}, beaten");
        }
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&data);
}

/// Writes made before the members see each other UP reach every node
/// within about a report interval, not at the next verify round (issue 14,
/// item 5): a member that turns UP gets a verify round at once. The verify
/// interval here is 60 s, so only those early rounds can deliver.
#[test]
fn writes_made_before_members_are_up_reach_them_within_a_report_interval() {
    let mut c = Cluster::new(&[], &[]);
    for i in 0..3 {
        c.start_setting(i, "--verify-interval-ms", "60000");
    }
    for i in 0..3 {
        c.wait_ready(i);
    }
    // At once: some members may not count the others UP yet.
    let expected: BTreeSet<String> = (0..300)
        .map(|k| format!("10.12.{}.{}", k / 250, k % 250))
        .collect();
    for (k, ip) in expected.iter().enumerate() {
        let svc = format!("early-{}", k % 30);
        let r = register(c.node(k % 3), &svc, ip, "");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let all = |n: &Node| -> BTreeSet<String> {
        (0..30)
            .flat_map(|s| ips(n, &format!("early-{s}")))
            .collect()
    };
    let started = Instant::now();
    for i in 0..3 {
        assert!(
            eventually(Duration::from_secs(10), || all(c.node(i)) == expected),
            "node {i} has {} of 300 after {:?}",
            all(c.node(i)).len(),
            started.elapsed()
        );
    }
    println!("every node had all 300 after {:?}", started.elapsed());
}

/// A persistent write acknowledged by a node that no peer heard (here:
/// the others were down), which then crashes and stays down longer than
/// the ephemeral tombstone horizon, is back after its restart and
/// reaches the others; one deleted while it was down stays deleted
/// (simulation seed 1268; persistent tombstones are kept 24 h), also one
/// deleted by a request that did not say it was persistent (seed 29747).
#[test]
fn a_persistent_write_only_the_crashed_node_had_survives_its_late_restart() {
    let (mut c, data) = Cluster::with_data_dirs("late");
    let svc = "late-restart";
    for ip in ["10.13.0.1", "10.13.0.2"] {
        assert_eq!(register(c.node(0), svc, ip, "&ephemeral=false").status, 200);
    }
    let both: BTreeSet<String> = ["10.13.0.1", "10.13.0.2"].map(String::from).into();
    for i in 0..3 {
        assert!(eventually(Duration::from_secs(5), || ips(c.node(i), svc) == both));
    }
    // Replicas are saved behind, within a tick: let nodes 1 and 2 save
    // theirs (the test is of a restart that finds them on the peers).
    std::thread::sleep(Duration::from_millis(500));
    // Node 0 alone: its write reaches no one.
    c.kill9(1);
    c.kill9(2);
    for ip in ["10.13.0.3", "10.13.0.4"] {
        let r = register(c.node(0), svc, ip, "&ephemeral=false");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    c.kill9(0);
    c.start(1);
    c.start(2);
    c.wait_ready(1);
    c.wait_ready(2);
    // While node 0 is down: .2 is deleted; and .4, which only node 0
    // holds, by a client that does not say `ephemeral=false` (simulation
    // seed 29747): the owner here has never heard of it, and keeps the
    // delete as long as a persistent one.
    for (ip, extra) in [("10.13.0.2", "&ephemeral=false"), ("10.13.0.4", "")] {
        let del = c.node(1).req(
            "DELETE",
            &format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080{extra}"),
            "",
        );
        assert_eq!(del.status, 200, "{}", del.body);
    }
    // Past the ephemeral tombstone TTL (6 s delete timeout + 10 s): an
    // ephemeral tombstone of .2 would be gone by now.
    std::thread::sleep(Duration::from_secs(17));
    c.start(0);
    c.wait_ready(0);
    let expected: BTreeSet<String> = ["10.13.0.1", "10.13.0.3"].map(String::from).into();
    for i in 0..3 {
        assert!(
            eventually(Duration::from_secs(10), || ips(c.node(i), svc) == expected),
            "node {i}: {:?}",
            ips(c.node(i), svc)
        );
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&data);
}
