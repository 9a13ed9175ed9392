//! Real network partitions (SPEC 4.7): three nodes, each in a network
//! namespace of its own, joined pairwise by veth links, every node on its
//! own address (198.18.0.1-3, the range set aside for benchmark networks;
//! nothing leaves the namespaces this test makes). A link is cut by
//! pointing each end's neighbour entry for the other at a MAC address no
//! one has, so packets vanish silently, as in a real partition: no reset,
//! no "unreachable", connects and requests time out. The test talks to
//! each node through sockets opened inside its namespace, so cuts between
//! nodes never cut the test off.
//!
//! Needs root and `ip` (iproute2); skips with a message otherwise.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, read_response, send, Node, Resp, NS};

const TOKEN: &str = "partition-token";
const PORT: u16 = 8848;
const NODES: usize = 3;
/// Services written in every phase (spread over all three owners).
const SERVICES: usize = 12;

fn ip_of(i: usize) -> String {
    format!("198.18.0.{}", i + 1)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one test; removed on drop (deleting a
/// namespace deletes its veth ends).
struct Net {
    ns: Vec<String>,
}

impl Net {
    fn new() -> Result<Net, String> {
        let tag = std::process::id();
        let mut net = Net { ns: Vec::new() };
        for i in 0..NODES {
            let ns = format!("drpart{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            net.ns.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", ip_of(i)),
                "dev",
                "lo",
            ])?;
        }
        for i in 0..NODES {
            for j in i + 1..NODES {
                // In namespace i the link toward j is `to{j}`, and back.
                let (ni, nj) = (&net.ns[i], &net.ns[j]);
                let (to_j, to_i) = (format!("to{j}"), format!("to{i}"));
                ip(&[
                    "-n", ni, "link", "add", &to_j, "type", "veth", "peer", "name", &to_i, "netns",
                    nj,
                ])?;
                for (ns, dev, dst) in [(ni, &to_j, j), (nj, &to_i, i)] {
                    ip(&["-n", ns, "link", "set", dev, "up"])?;
                    ip(&[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &format!("{}/32", ip_of(dst)),
                        "dev",
                        dev,
                    ])?;
                }
            }
        }
        Ok(net)
    }

    /// Packets between nodes i and j vanish, both ways.
    fn cut(&self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            let dev = format!("to{b}");
            ip(&[
                "-n",
                &self.ns[a],
                "neigh",
                "replace",
                &ip_of(b),
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                &dev,
                "nud",
                "permanent",
            ])
            .expect("cut");
        }
    }

    fn heal(&self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            let dev = format!("to{b}");
            ip(&["-n", &self.ns[a], "neigh", "del", &ip_of(b), "dev", &dev]).expect("heal");
        }
    }

    /// A connection to node i's HTTP port, opened inside its namespace by
    /// a thread that joins it (a socket stays in the namespace it was
    /// made in).
    fn connect(&self, i: usize) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.ns[i]);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd; it affects this
            // short-lived thread only.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let s = TcpStream::connect(("127.0.0.1", PORT)).expect("connect in netns");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .join()
        .expect("connect thread")
    }

    fn req(&self, i: usize, method: &str, path: &str) -> Resp {
        let mut s = self.connect(i);
        send(&mut s, method, path, "", &[]);
        read_response(&mut s).expect("response")
    }

    fn start(&self, i: usize) -> Node {
        let peers: Vec<String> = (0..NODES).map(|k| format!("{}:{PORT}", ip_of(k))).collect();
        let me = format!("{}:{PORT}", ip_of(i));
        let bind = format!("0.0.0.0:{PORT}");
        let child = Command::new("ip")
            .env(common::DATA_DIR_ENV, "none")
            .args([
                "netns",
                "exec",
                &self.ns[i],
                env!("CARGO_BIN_EXE_distro-registry"),
            ])
            .args([
                "--bind",
                &bind,
                "--advertise",
                &me,
                "--peers",
                &peers.join(","),
            ])
            .args(["--cluster-token", TOKEN, "--cores", "1"])
            .args([
                "--report-interval-ms",
                "300",
                "--verify-interval-ms",
                "1000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a node in its namespace");
        Node::attach(child)
    }

    /// How many members node i sees UP.
    fn members_up(&self, i: usize) -> usize {
        let r = self.req(i, "GET", "/nacos/v1/core/cluster/nodes");
        r.json()["data"]
            .as_array()
            .expect("member list")
            .iter()
            .filter(|m| m["state"] == "UP")
            .count()
    }

    /// The instance IPs node i lists for a service.
    fn ips(&self, i: usize, svc: &str) -> BTreeSet<String> {
        let r = self.req(i, "GET", &format!("{NS}/instance/list?serviceName={svc}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["ip"].as_str().expect("ip").to_string())
            .collect()
    }

    /// Registers (persistent, so no beats are needed) or deregisters
    /// `inst` in every service through node i; every write must succeed.
    fn write_all(&self, i: usize, method: &str, inst: &str, services: std::ops::Range<usize>) {
        for k in services {
            let path =
                format!("{NS}/instance?serviceName=part-{k}&ip={inst}&port=80&ephemeral=false");
            let r = self.req(i, method, &path);
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "ok"),
                "{method} {path} via node {i}"
            );
        }
    }

    /// Waits until every node lists `want(k)` for every service k.
    fn converged(&self, want: impl Fn(usize) -> BTreeSet<String>) -> Result<(), String> {
        let ok = eventually(Duration::from_secs(20), || {
            (0..SERVICES).all(|k| (0..NODES).all(|i| self.ips(i, &format!("part-{k}")) == want(k)))
        });
        if ok {
            return Ok(());
        }
        let mut diff = String::new();
        for k in 0..SERVICES {
            for i in 0..NODES {
                let got = self.ips(i, &format!("part-{k}"));
                if got != want(k) {
                    diff += &format!("\n  part-{k} on node {i}: {got:?}, want {:?}", want(k));
                }
            }
        }
        Err(diff)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn set(ips: &[&str]) -> BTreeSet<String> {
    ips.iter().map(|s| s.to_string()).collect()
}

#[test]
fn partitions_heal_and_writes_on_every_side_are_kept() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = match Net::new() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("skipped: network namespaces are not available here ({e})");
            return;
        }
    };
    let _nodes: Vec<Node> = (0..NODES).map(|i| net.start(i)).collect();
    for i in 0..NODES {
        assert!(
            eventually(Duration::from_secs(20), || net.members_up(i) == NODES),
            "node {i} never saw every member UP"
        );
    }

    // Before any fault: `10.0.0.1` everywhere.
    net.write_all(0, "POST", "10.0.0.1", 0..SERVICES);
    net.converged(|_| set(&["10.0.0.1"]))
        .expect("initial writes");

    // Node 2 cut off from both others. Writes on both sides succeed (AP):
    // the majority side registers .2 everywhere and deregisters .1 from
    // half the services; node 2, alone, registers .3 everywhere.
    net.cut(0, 2);
    net.cut(1, 2);
    assert!(
        eventually(Duration::from_secs(20), || net.members_up(0) == 2
            && net.members_up(1) == 2
            && net.members_up(2) == 1),
        "the cut was never noticed"
    );
    net.write_all(0, "POST", "10.0.0.2", 0..SERVICES);
    net.write_all(1, "DELETE", "10.0.0.1", 0..SERVICES / 2);
    net.write_all(2, "POST", "10.0.0.3", 0..SERVICES);
    // Neither side sees the other's writes while cut.
    assert_eq!(net.ips(2, "part-0"), set(&["10.0.0.1", "10.0.0.3"]));
    assert_eq!(net.ips(0, "part-0"), set(&["10.0.0.2"]));

    // Healed: every write from both sides is kept on every node, and the
    // deregistered instances do not come back.
    net.heal(0, 2);
    net.heal(1, 2);
    let after_first = |k: usize| {
        if k < SERVICES / 2 {
            set(&["10.0.0.2", "10.0.0.3"])
        } else {
            set(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        }
    };
    if let Err(diff) = net.converged(after_first) {
        panic!("no convergence after healing node 2's links:{diff}");
    }

    // An asymmetric fault: only the link between 0 and 1 is cut; node 2
    // still reaches both. Writes through 0 and 1 for every service.
    net.cut(0, 1);
    assert!(
        eventually(Duration::from_secs(20), || net.members_up(0) == 2
            && net.members_up(1) == 2),
        "the cut between 0 and 1 was never noticed"
    );
    net.write_all(0, "POST", "10.0.0.4", 0..SERVICES);
    net.write_all(1, "POST", "10.0.0.5", 0..SERVICES);
    net.write_all(1, "DELETE", "10.0.0.3", 0..SERVICES);
    net.heal(0, 1);
    let after_second = |k: usize| {
        let mut want = after_first(k);
        want.remove("10.0.0.3");
        want.extend(["10.0.0.4".to_string(), "10.0.0.5".to_string()]);
        want
    };
    if let Err(diff) = net.converged(after_second) {
        panic!("no convergence after healing the link between 0 and 1:{diff}");
    }
}
