//! Live membership changes (issue 14) with real processes on loopback:
//! nodes started with `--cluster-conf` pick up a new member list when the
//! file changes (or on SIGHUP). A cluster grows from 3 to 5 members,
//! shrinks to 4 and takes a removed member back under registrations and
//! beats; a malformed file is refused; a node restarted with another
//! member list keeps its writer identity.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, port_of, read_response, reserved_ports, send, unsafe_kill, Node};

const TOKEN: &str = "membership-token";

/// Short timings: reports every 300 ms, verify every second, unhealthy
/// after 3 s, deleted after 6 s (a lost beat would show within seconds).
const FAST: [&str; 12] = [
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
    "1",
];

/// Up to `n` members, each node reading its own conf file (so that the
/// nodes can be given a new list at different times).
struct Cluster {
    addrs: Vec<String>,
    nodes: Vec<Option<Node>>,
    dir: PathBuf,
    data: bool,
    _ports: Vec<socket2::Socket>,
}

impl Cluster {
    fn new(n: usize, name: &str, data: bool) -> Cluster {
        let ports = reserved_ports(n);
        let dir = std::env::temp_dir().join(format!("dr-members-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Cluster {
            addrs: ports
                .iter()
                .map(|p| format!("127.0.0.1:{}", port_of(p)))
                .collect(),
            nodes: (0..n).map(|_| None).collect(),
            dir,
            data,
            _ports: ports,
        }
    }

    fn conf(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{i}.conf"))
    }

    /// Writes the member list `members` (indexes) to node `i`'s file.
    fn write_conf(&self, i: usize, members: &[usize]) {
        let text: String = members
            .iter()
            .map(|&m| format!("{}\n", self.addrs[m]))
            .collect();
        // Written whole and renamed over, as an operator's tool would.
        let tmp = self.dir.join(format!("node-{i}.conf.tmp"));
        std::fs::write(&tmp, format!("# members\n{text}")).unwrap();
        std::fs::rename(&tmp, self.conf(i)).unwrap();
    }

    fn start(&mut self, i: usize, members: &[usize]) {
        self.write_conf(i, members);
        let mut a: Vec<String> = vec![
            "--bind".into(),
            self.addrs[i].clone(),
            "--cluster-conf".into(),
            self.conf(i).to_string_lossy().into_owned(),
            "--cluster-token".into(),
            TOKEN.into(),
        ];
        a.extend(FAST.iter().map(|s| s.to_string()));
        if self.data {
            a.push("--data-dir".into());
            a.push(
                self.dir
                    .join(format!("data-{i}"))
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        self.nodes[i] = Some(Node::start_raw(&a));
    }

    /// Starts `members` with that list and waits until each is ready.
    fn start_members(&mut self, members: &[usize]) {
        for &i in members {
            self.start(i, members);
        }
        for &i in members {
            self.wait_ready(i);
        }
    }

    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node running")
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    fn wait_ready(&self, i: usize) {
        assert!(
            eventually(Duration::from_secs(20), || {
                self.node(i)
                    .get("/nacos/v1/console/health/readiness")
                    .status
                    == 200
            }),
            "node {i} never became ready"
        );
    }

    /// Whether every running node lists exactly `members`, the running
    /// ones UP and the others not, and
    /// names the same owner for each of `services`.
    fn agree(&self, members: &[usize], services: &[String]) -> bool {
        let want: BTreeSet<String> = members.iter().map(|&m| self.addrs[m].clone()).collect();
        for i in self.running() {
            let v = self.node(i).json("/nacos/v1/core/cluster/nodes");
            let list = v["data"].as_array().unwrap();
            let got: BTreeSet<String> = list
                .iter()
                .map(|m| m["address"].as_str().unwrap().to_string())
                .collect();
            // Running members UP, the others not.
            let states_right = list.iter().all(|m| {
                let at = self.addrs.iter().position(|a| m["address"] == a.as_str());
                let running = at.is_some_and(|x| self.nodes[x].is_some());
                (m["state"] == "UP") == running
            });
            if got != want || !states_right {
                return false;
            }
        }
        services.iter().all(|s| {
            let owners: BTreeSet<String> = self
                .running()
                .iter()
                .map(|&i| self.node(i).owner(s))
                .collect();
            owners.len() == 1
        })
    }

    /// What the running nodes logged about members, expiry and health
    /// since last asked (for a failure's message).
    fn story(&self) -> String {
        let mut out = String::new();
        for i in self.running() {
            for l in self.node(i).log.try_iter().filter(|l| {
                ["member", "expired", "unhealthy", "disagree"]
                    .iter()
                    .any(|w| l.contains(w))
            }) {
                out.push_str(&format!(
                    "node {i}: {}\n",
                    l.split("INFO").last().unwrap_or(&l).trim()
                ));
            }
        }
        out
    }

    /// Waits for agreement and returns how long it took from `since`.
    fn wait_agree(&self, members: &[usize], services: &[String], since: Instant) -> Duration {
        assert!(
            eventually(Duration::from_secs(20), || self.agree(members, services)),
            "the nodes never agreed on members {members:?}: {:?}",
            self.running()
                .iter()
                .map(|&i| self.node(i).json("/nacos/v1/core/cluster/nodes"))
                .collect::<Vec<_>>()
        );
        since.elapsed()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One request to `addr` on a fresh connection: (status, body), or None
/// when the node is not there.
fn request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    send(&mut s, method, path, "", &[]);
    read_response(&mut s).map(|r| (r.status, r.body))
}

/// What the clients hold: instances by service, beaten through the nodes
/// in `via` in turn.
struct Load {
    /// service -> ips registered and beating.
    live: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// (service, ip) deregistered.
    gone: Mutex<Vec<(String, String)>>,
    via: Mutex<Vec<SocketAddr>>,
    /// Beats answered 20404 (the instance was lost) or not answered.
    problems: Mutex<Vec<String>>,
    beats: std::sync::atomic::AtomicU64,
    stop: AtomicBool,
}

impl Load {
    fn register(&self, at: SocketAddr, svc: &str, ip: &str) {
        let path = format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080");
        let r = request(at, "POST", &path).expect("register answered");
        assert_eq!(r.0, 200, "register {svc} {ip} at {at}: {}", r.1);
        self.live
            .lock()
            .unwrap()
            .entry(svc.to_string())
            .or_default()
            .insert(ip.to_string());
    }

    fn deregister(&self, at: SocketAddr, svc: &str, ip: &str) {
        self.live.lock().unwrap().get_mut(svc).unwrap().remove(ip);
        let path = format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080");
        let r = request(at, "DELETE", &path).expect("deregister answered");
        assert_eq!(r.0, 200, "deregister {svc} {ip} at {at}: {}", r.1);
        self.gone
            .lock()
            .unwrap()
            .push((svc.to_string(), ip.to_string()));
    }

    /// Beats every instance every 800 ms, each through the next node of
    /// `via`, until told to stop (bounded: 120 s at most).
    fn run(self: Arc<Self>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut k = 0usize;
            while !self.stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120)
            {
                let round = Instant::now();
                let live: Vec<(String, String)> = self
                    .live
                    .lock()
                    .unwrap()
                    .iter()
                    .flat_map(|(s, ips)| ips.iter().map(|ip| (s.clone(), ip.clone())))
                    .collect();
                for (svc, ip) in live {
                    let path =
                        format!("/nacos/v1/ns/instance/beat?serviceName={svc}&ip={ip}&port=8080");
                    // A node may have just been stopped: the next one.
                    let mut answered = None;
                    for _ in 0..3 {
                        let via = self.via.lock().unwrap().clone();
                        let at = via[k % via.len()];
                        k += 1;
                        if let Some(r) = request(at, "PUT", &path) {
                            answered = Some((at, r));
                            break;
                        }
                    }
                    self.beats.fetch_add(1, Ordering::Relaxed);
                    match answered {
                        Some((_, (200, body))) if body.contains("10200") => {}
                        Some((at, (status, body))) => {
                            // Deregistered meanwhile: not a problem.
                            let still = self
                                .live
                                .lock()
                                .unwrap()
                                .get(&svc)
                                .is_some_and(|s| s.contains(&ip));
                            if still {
                                self.problems
                                    .lock()
                                    .unwrap()
                                    .push(format!("beat {svc} {ip} at {at}: {status} {body}"));
                            }
                        }
                        None => self
                            .problems
                            .lock()
                            .unwrap()
                            .push(format!("beat {svc} {ip}: no node answered")),
                    }
                }
                std::thread::sleep(Duration::from_millis(800).saturating_sub(round.elapsed()));
            }
        })
    }

    fn set_via(&self, c: &Cluster, nodes: &[usize]) {
        *self.via.lock().unwrap() = nodes.iter().map(|&i| c.node(i).addr).collect();
    }

    /// Whether node `n` holds exactly what the clients registered, and
    /// none of what they deregistered.
    fn held_by(&self, n: &Node) -> Result<(), String> {
        let live = self.live.lock().unwrap().clone();
        for (svc, want) in &live {
            let got = n.ips(svc);
            if &got != want {
                return Err(format!("{svc}: {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }
}

#[test]
fn members_join_and_leave_a_live_cluster_under_registrations_and_beats() {
    let mut c = Cluster::new(5, "grow", false);
    let three = [0, 1, 2];
    c.start_members(&three);
    let services: Vec<String> = (0..10).map(|k| format!("m-svc-{k}")).collect();
    c.wait_agree(&three, &services, Instant::now());
    let load = Arc::new(Load {
        live: Mutex::new(BTreeMap::new()),
        gone: Mutex::new(Vec::new()),
        via: Mutex::new(Vec::new()),
        problems: Mutex::new(Vec::new()),
        beats: Default::default(),
        stop: AtomicBool::new(false),
    });
    load.set_via(&c, &three);
    for k in 0..40 {
        let at = c.node(k % 3).addr;
        load.register(at, &services[k % 10], &format!("10.7.0.{k}"));
    }
    let beating = load.clone().run();
    for i in three {
        assert!(
            eventually(Duration::from_secs(5), || load.held_by(c.node(i)).is_ok()),
            "node {i}: {:?}\n{}",
            load.held_by(c.node(i)),
            c.story()
        );
    }

    // 3 -> 5: the new nodes start with the five-member list; until they
    // have loaded the snapshot they are not ready, and once ready they
    // hold everything.
    let five = [0, 1, 2, 3, 4];
    for i in [3, 4] {
        c.start(i, &five);
    }
    for i in [3, 4] {
        c.wait_ready(i);
        load.held_by(c.node(i))
            .unwrap_or_else(|e| panic!("node {i} ready without the data: {e}"));
        // What moved to it: its snapshot load's log line.
        for l in c
            .node(i)
            .log
            .try_iter()
            .filter(|l| l.contains("snapshot loaded"))
        {
            println!("node {i}: {}", l.split("INFO").last().unwrap_or(&l).trim());
        }
    }
    // The old members get the new file one after the other; node 2 only
    // 7 s later (seven verify rounds, longer than the delete timeout), in
    // which it disagrees with the others about the members and the
    // owners. Writes are still taken everywhere, no verify round drops
    // anything, and no owner expires what beats through another.
    for i in [0, 1] {
        c.write_conf(i, &five);
        std::thread::sleep(Duration::from_millis(400));
    }
    load.deregister(c.node(0).addr, &services[0], "10.7.0.0");
    load.deregister(c.node(3).addr, &services[1], "10.7.0.1");
    load.register(c.node(3).addr, &services[2], "10.7.1.3");
    load.register(c.node(4).addr, &services[3], "10.7.1.4");
    load.register(c.node(2).addr, &services[7], "10.7.1.2");
    load.deregister(c.node(2).addr, &services[8], "10.7.0.8");
    load.set_via(&c, &five);
    let disagreeing = Instant::now();
    for i in [0, 1, 2] {
        assert!(
            eventually(Duration::from_secs(3), || load.held_by(c.node(i)).is_ok()),
            "while the lists differ, node {i}: {:?}\n{}",
            load.held_by(c.node(i)),
            c.story()
        );
    }
    // Longer than the delete timeout: node 2 owns services that the
    // others name other owners for, and the beats go to those.
    std::thread::sleep(Duration::from_millis(7_000).saturating_sub(disagreeing.elapsed()));
    for i in [0, 1, 2] {
        load.held_by(c.node(i))
            .unwrap_or_else(|e| panic!("after 7 s of disagreement, node {i}: {e}\n{}", c.story()));
    }
    c.write_conf(2, &five);
    let changed = Instant::now();
    let grow = c.wait_agree(&five, &services, changed);
    for i in five {
        assert!(
            eventually(Duration::from_secs(5), || load.held_by(c.node(i)).is_ok()),
            "after 3 -> 5, node {i}: {:?}\n{}",
            load.held_by(c.node(i)),
            c.story()
        );
        let v = c.node(i).json("/nacos/v1/core/cluster/nodes");
        let version = v["memberListVersion"].as_u64().unwrap();
        assert_eq!(version, if i < 3 { 2 } else { 1 }, "node {i}: {v}");
    }

    // 5 -> 4: node 1 leaves the list and stops; its services move.
    let four = [0, 2, 3, 4];
    load.set_via(&c, &four);
    for i in four {
        c.write_conf(i, &four);
        std::thread::sleep(Duration::from_millis(300));
    }
    let changed = Instant::now();
    c.nodes[1].take().unwrap().terminate();
    load.deregister(c.node(2).addr, &services[4], "10.7.0.4");
    load.register(c.node(0).addr, &services[5], "10.7.2.0");
    let shrink = c.wait_agree(&four, &services, changed);
    for i in four {
        assert!(
            eventually(Duration::from_secs(5), || load.held_by(c.node(i)).is_ok()),
            "after 5 -> 4, node {i}: {:?}\n{}",
            load.held_by(c.node(i)),
            c.story()
        );
    }

    // Node 1 comes back with the same address, empty, and is added again.
    c.start(1, &five);
    c.wait_ready(1);
    for i in four {
        c.write_conf(i, &five);
    }
    let changed = Instant::now();
    load.set_via(&c, &five);
    load.deregister(c.node(1).addr, &services[6], "10.7.0.6");
    let back = c.wait_agree(&five, &services, changed);
    // Every node holds the same data within two verify rounds (and the
    // deregistered instances stay away).
    std::thread::sleep(Duration::from_millis(2_000));
    load.stop.store(true, Ordering::Relaxed);
    beating.join().unwrap();
    for i in five {
        assert!(
            eventually(Duration::from_secs(3), || load.held_by(c.node(i)).is_ok()),
            "at the end, node {i}: {:?}\n{}",
            load.held_by(c.node(i)),
            c.story()
        );
        for (svc, ip) in load.gone.lock().unwrap().iter() {
            assert!(!c.node(i).ips(svc).contains(ip), "{svc} {ip} back on {i}");
        }
    }
    let problems = load.problems.lock().unwrap().clone();
    assert!(
        problems.is_empty(),
        "beats that found no instance: {problems:?}"
    );
    let beats = load.beats.load(Ordering::Relaxed);
    assert!(beats > 200, "only {beats} beats");
    println!(
        "agreement after the last file change: 3 -> 5 in {} ms, 5 -> 4 in {} ms, 4 -> 5 (same address back) in {} ms; {beats} beats",
        grow.as_millis(),
        shrink.as_millis(),
        back.as_millis()
    );
}

#[test]
fn a_malformed_member_list_is_refused_and_the_old_list_kept() {
    let mut c = Cluster::new(3, "bad", false);
    c.start(0, &[0, 1]);
    let n = c.node(0);
    let refused = "registry_cluster_member_list_reloads_total{result=\"refused\"}";
    let members = |n: &Node| {
        let v = n.json("/nacos/v1/core/cluster/nodes");
        let list: BTreeSet<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["address"].as_str().unwrap().to_string())
            .collect();
        (list, v["memberListVersion"].as_u64().unwrap())
    };
    let before = members(n);
    assert_eq!(before.1, 1);
    assert_eq!(n.metric(refused), 0.0);
    let me = c.addrs[0].clone();
    for (k, text) in [
        format!("{me}\n127.0.0.1:notaport\n"),
        format!("{}\n", c.addrs[1]),
        "# nobody\n".to_string(),
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(c.conf(0), text).unwrap();
        assert!(
            eventually(Duration::from_secs(5), || n.metric(refused)
                == (k + 1) as f64),
            "{text:?} was not refused"
        );
        assert_eq!(members(n), before, "{text:?} changed the list");
    }
    let logged: Vec<String> = n.log.try_iter().collect();
    for why in ["not ip:port", "not among the new members", "no members"] {
        assert!(
            logged
                .iter()
                .any(|l| l.contains("member list refused") && l.contains(why)),
            "no refusal saying {why:?} in {logged:?}"
        );
    }
    // SIGHUP reads the file again at once, even unchanged.
    unsafe_kill(n.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || n.metric(refused) == 4.0));
    // A good list is applied: the new member starts DOWN (not started).
    c.write_conf(0, &[0, 1, 2]);
    assert!(eventually(Duration::from_secs(5), || members(n).1 == 2));
    let (list, _) = members(n);
    assert_eq!(list, c.addrs.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(n.metric("registry_cluster_member_list_version"), 2.0);
    assert!(n.metric("registry_cluster_member_list_changed_ms") > 0.0);
    let unchanged = "registry_cluster_member_list_reloads_total{result=\"unchanged\"}";
    let u0 = n.metric(unchanged);
    unsafe_kill(n.child.id(), "HUP");
    assert!(eventually(Duration::from_secs(5), || n.metric(unchanged) == u0 + 1.0));
    assert_eq!(members(n).1, 2, "the same list again is no change");
    let logged: Vec<String> = n.log.try_iter().collect();
    assert!(
        logged.iter().any(|l| l.contains("member list changed")
            && l.contains(&c.addrs[2])
            && l.contains("added")),
        "{logged:?}"
    );
}

/// The node id in a record's writer (datum wire form: element 9).
fn record_node(n: &Node, svc: &str, ip: &str) -> Option<u64> {
    let key = common::urlencode(&format!("public##DEFAULT_GROUP@@{svc}"));
    let r = n.req_h(
        "GET",
        &format!("/nacos/v1/ns/distro/datum?keys={key}"),
        "",
        &[("X-Distro-Token", TOKEN)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let rec = v[0]["instances"]
        .as_array()?
        .iter()
        .find(|r| r[0] == ip)?
        .clone();
    Some(rec[9].as_u64()? >> distro_registry::distro::hlc::WRITER_SHARD_BITS)
}

#[test]
fn a_node_restarted_with_another_member_list_keeps_its_writer_identity() {
    let mut c = Cluster::new(4, "restart", true);
    let three = [0, 1, 2];
    c.start_members(&three);
    c.wait_agree(&three, &[], Instant::now());
    let addrs = c.addrs.clone();
    let id = |i: usize| distro_registry::distro::hlc::node_id(&addrs[i]).unwrap();
    // A service node 0 owns: its writes carry node 0's id everywhere.
    let svc = (0..200)
        .map(|k| format!("w-svc-{k}"))
        .find(|s| c.node(0).owner(s) == c.addrs[0])
        .unwrap();
    let reg = |n: &Node, ip: &str| {
        let path =
            format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=8080&ephemeral=false");
        assert_eq!(n.req("POST", &path, "").status, 200);
    };
    reg(c.node(1), "10.8.0.1");
    assert!(eventually(Duration::from_secs(5), || {
        three
            .iter()
            .all(|&i| record_node(c.node(i), &svc, "10.8.0.1") == Some(id(0)))
    }));
    // Node 0 is killed and comes back with a four-member list (the fourth
    // not started, so DOWN, and the owners stay): its position in the
    // sorted list may move, its writer id does not.
    let mut n0 = c.nodes[0].take().unwrap();
    n0.child.kill().unwrap();
    n0.child.wait().unwrap();
    let four = [0, 1, 2, 3];
    for i in [1, 2] {
        c.write_conf(i, &four);
    }
    c.start(0, &four);
    c.wait_ready(0);
    c.wait_agree(&four, &[], Instant::now());
    for i in three {
        assert_eq!(
            record_node(c.node(i), &svc, "10.8.0.1"),
            Some(id(0)),
            "node {i}: the restored record's writer"
        );
    }
    reg(c.node(2), "10.8.0.2");
    assert!(eventually(Duration::from_secs(5), || {
        three
            .iter()
            .all(|&i| record_node(c.node(i), &svc, "10.8.0.2") == Some(id(0)))
    }));
    for i in three {
        assert_eq!(c.node(i).ips(&svc).len(), 2);
    }
}
