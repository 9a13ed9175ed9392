//! Deterministic simulation of a Distro cluster (issue 5, first part):
//! 3 to 5 nodes' protocol state machines (`Store`, `Membership`, `TaskMap`,
//! the verify comparison, the startup decision) in one thread, in virtual
//! time, over a simulated network that delays, drops, duplicates and
//! reorders messages and cuts links; nodes crash and restart, either
//! with their disk (the rows their store saved: persistent changes before
//! they were acknowledged, the rest every `SAVE_BEHIND_STEPS`) or empty; clocks are skewed; clients register, beat every 5 s to any
//! ready node, deregister and stop beating; gRPC clients (connection-bound
//! instances) connect to one node, publish, deregister, close, and when
//! their node crashes either reconnect elsewhere or die with it. One seeded PRNG decides
//! everything, so a seed replays exactly. After the faults heal and the
//! churn stops, SPEC 4.7's invariants are checked; a violation prints the
//! seed and the last events.
//!
//! The I/O glue of `src/cluster/` (forward-or-apply, beat relay, verify
//! fetch, snapshot load) is modelled here with the same rules; requests
//! between nodes are synchronous when they are request/answer exchanges
//! (forward, fetch, report, snapshot) and messages otherwise (replication
//! batches, relayed beats, checksum rounds).
//!
//! `SIM_SEEDS=N cargo test --release --test simulation` runs N seeds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::sync::Arc;

use distro_registry::distro::hash::owner_index;
use distro_registry::distro::hlc::{node_id, writer_id};
use distro_registry::distro::leases::{HolderWatch, LEASE_HOLDER_GRACE_MS, STRANGER_SCAN_MS};
use distro_registry::distro::members::{Membership, ReportOutcome};
use distro_registry::distro::startup::{self, Answer, Decision};
use distro_registry::distro::tasks::{TaskConfig, TaskMap};
use distro_registry::distro::verify::keys_to_fetch;
use distro_registry::store::datum::Datum;
use distro_registry::store::instance::{InstanceAddr, InstanceSpec, Lease, LeasePolicy, Timeouts};
use distro_registry::store::journal::{self, MemoryRows};
use distro_registry::store::service::ServiceId;
use distro_registry::store::{BeatInfo, Op, Store};

const STEP_MS: u64 = 100;
/// Ephemeral changes are saved every this many steps (the node's tick
/// saves them behind; a crash loses what came since).
const SAVE_BEHIND_STEPS: u64 = 2;
const REPORT_MS: u64 = 2_000;
const VERIFY_MS: u64 = 5_000;
const BEAT_MS: u64 = 5_000;
const SHARD_BITS: u32 = 8;
/// Faults and client churn last this long (virtual time).
const CHURN_MS: u64 = 120_000;
/// Then the invariants must hold within this long (SPEC 4.7: two verify
/// rounds; plus time for reports to bring every member back UP and for
/// replication retries, whose backoff is capped at 5 s).
const SETTLE_MS: u64 = 2 * VERIFY_MS + 2 * REPORT_MS * 4 + 5_000;
/// Least time between two writes of one client (well above the skew).
const OP_GAP_MS: u64 = 2_000;
/// Steps the final check may wait for changes in flight.
const INFLIGHT_STEPS_MAX: usize = 30;
/// Steps the final check waits at most while owners go on expiring
/// silent instances (each expiry gets `INFLIGHT_STEPS_MAX` to replicate).
const INFLIGHT_WAIT_STEPS_MAX: usize = 100;
/// Events kept for the trace printed on a violation.
const TRACE_MAX: usize = 60;
/// Beat-based clients (a third of them persistent) and gRPC clients.
const HTTP_CLIENTS: usize = 24;
const GRPC_CLIENTS: usize = 12;
/// A gRPC client whose node died reconnects to another after this long
/// (the real clients' redo: 1 to 3 s).
const RECONNECT_MS: u64 = 2_000;
/// Addresses beyond the starting members that membership changes may add.
const SPARE_NODES: usize = 2;
/// Chance per step of a membership change (a member added or removed).
const MEMBER_CHANGE: f64 = 0.002;
/// The nodes apply a new member list within this long of each other (an
/// operator copying the file node by node).
const APPLY_SPREAD_MS: u64 = 6_000;
/// One change in `SLOW_SPREAD_ONE_IN` (early enough in the churn) is
/// rolled out slowly, over longer than the delete timeout.
const APPLY_SPREAD_SLOW_MS: u64 = 45_000;
const SLOW_SPREAD_ONE_IN: u64 = 3;
/// No membership change starts later than this before the churn ends.
const MEMBER_CHANGE_END_MS: u64 = 15_000;
/// The fewest members a removal leaves.
const MEMBERS_MIN: usize = 2;

fn timeouts() -> Timeouts {
    Timeouts::default()
}

/// Fault rates, per step (100 ms).
#[derive(Clone, Copy)]
struct Faults {
    drop: f64,
    dup: f64,
    slow: f64,
    crash: f64,
    restart: f64,
    cut: f64,
    heal: f64,
    skew_ms: i64,
}

const FAULTS: Faults = Faults {
    drop: 0.02,
    dup: 0.02,
    slow: 0.05,
    crash: 0.002,
    restart: 0.02,
    cut: 0.003,
    heal: 0.02,
    skew_ms: 300,
};

struct Node {
    addr: String,
    up: bool,
    ready: bool,
    store: Store,
    members: Membership,
    tasks: TaskMap,
    healthy: Vec<String>,
    epoch: u64,
    skew: i64,
    next_report: u64,
    next_verify: u64,
    started: u64,
    bugs: Bugs,
    /// Since when members are out of the healthy list (lease policy).
    holders: HolderWatch,
    /// Serials of the gRPC connections accepted in this incarnation.
    serial: u64,
    /// What its store saved (survives a crash when the disk does).
    disk: MemoryRows,
    /// The latest sign that another node works from another member list,
    /// while it holds expiry back (`ClusterShared::disagreed_ms`), and the
    /// one the owned instances last got a fresh timeout for.
    disagreed: u64,
    disagreement_granted: u64,
}

impl Node {
    fn fresh(addr: &str, all: &[String], bugs: Bugs, skew: i64, now: u64) -> Node {
        let mut store = Store::new(timeouts(), STEP_MS, now);
        store.set_writer(writer_of(addr));
        let members = Membership::new(addr, all);
        Node {
            addr: addr.to_string(),
            up: true,
            ready: false,
            healthy: members.healthy(),
            epoch: members.epoch(),
            store,
            members,
            tasks: TaskMap::new(TaskConfig::default()),
            skew,
            next_report: now + REPORT_MS,
            next_verify: now + VERIFY_MS,
            started: now,
            bugs,
            holders: HolderWatch::default(),
            serial: 0,
            disk: MemoryRows::default(),
            disagreed: 0,
            disagreement_granted: 0,
        }
    }

    /// A sign of a member-list disagreement (`ClusterShared::lists_disagree`).
    fn lists_disagree(&mut self, t: u64) {
        if self.bugs.no_disagreement_hold {
            return;
        }
        let now = self.clock(t);
        if self.members.lists_disagree(now, REPORT_MS).1 {
            self.disagreed = self.disagreed.max(now);
        }
    }

    /// Each new sign gives the owned instances a fresh timeout
    /// (`ShardCtx::grant_while_lists_disagree`).
    fn grant_while_lists_disagree(&mut self, t: u64) {
        if self.disagreed <= self.disagreement_granted {
            return;
        }
        self.disagreement_granted = self.disagreed;
        let me = self.addr.clone();
        let h = self.healthy.clone();
        let now = self.clock(t);
        self.store
            .grant_ownership_grace(now, |g| h[owner_index(g, h.len())] == me);
    }

    /// A fresh node that reads `disk` back before anything else, as a
    /// restarted node does (`shard::restore_store`).
    fn from_disk(
        addr: &str,
        all: &[String],
        skew: i64,
        now: u64,
        disk: MemoryRows,
        bugs: Bugs,
    ) -> Node {
        let mut n = Node::fresh(addr, all, bugs, skew, now);
        let wall = n.clock(now);
        for saved in disk.saved() {
            let d = saved.into_datum().expect("the simulation's rows decode");
            n.store.restore(d, wall, false);
        }
        n.store
            .observe_saved_clock(journal::resume_clock(disk.clock, disk.wall_ms), wall);
        if !bugs.no_hold_back {
            n.store.hold_back_restored(wall);
        }
        n.store.enable_journal();
        n.disk = disk;
        n
    }

    /// Saves what the store changed (`durable_only`: only when it holds a
    /// change to persistent data, which is saved before its answer).
    fn save(&mut self, t: u64, durable_only: bool) {
        if durable_only && !self.store.journal_durable() {
            return;
        }
        let wall = self.clock(t);
        if let Some(c) = self.store.take_changes() {
            self.disk.save(&c, wall);
        }
    }

    /// The version of `inst` in service `key` as saved, tombstones included.
    fn saved_version(
        &self,
        key: &str,
        inst: &str,
    ) -> Option<distro_registry::distro::hlc::Version> {
        // Rows are keyed by version: the newest row of the instance.
        self.disk
            .instances
            .iter()
            .filter(|((_, _, s, i), row)| {
                s == key
                    && i == inst
                    && journal::decode_instance(i, Default::default(), row).is_ok()
            })
            .map(
                |((hlc, writer, _, _), _)| distro_registry::distro::hlc::Version {
                    hlc: *hlc,
                    writer: *writer,
                },
            )
            .max()
    }

    /// A new connection's lease: this node, this incarnation.
    fn accept(&mut self) -> Arc<Lease> {
        self.serial += 1;
        Arc::new(Lease {
            holder: self.addr.clone(),
            boot: self.started,
            serial: self.serial,
        })
    }

    /// The lease policy of `src/cluster/shard.rs`: retire the records of
    /// gone holders and of this node's earlier incarnations; replicate
    /// what only this node knows.
    fn leases(&mut self, t: u64) {
        if self.bugs.leftovers_kept {
            return;
        }
        let now = self.clock(t);
        let all = self.member_list();
        self.holders.observe(&all, &self.healthy, now);
        if (t - self.started).is_multiple_of(STRANGER_SCAN_MS) {
            let holders = self.store.lease_holders();
            self.holders.observe_holders(&holders, &self.addr, now);
        }
        let mut gone = self.holders.gone(now, LEASE_HOLDER_GRACE_MS);
        if self.bugs.removed_holders_forgotten {
            gone.retain(|g| all.contains(g));
        }
        let policy = LeasePolicy {
            me: self.addr.clone(),
            boot: self.started,
            gone,
        };
        let retired = self.store.set_lease_policy(policy, now);
        if self.bugs.retire_with_new_version {
            for k in &retired {
                let Some(mut d) = self.store.datum(k) else {
                    continue;
                };
                let v = distro_registry::distro::hlc::Version {
                    hlc: distro_registry::distro::hlc::pack(now + 1, 0),
                    writer: 0,
                };
                d.instances
                    .retain(|r| r.deleted && r.version.is_retirement());
                for r in d.instances.iter_mut() {
                    r.version = v;
                }
                self.store.merge(d, now);
            }
        }
        let others = self.others();
        for k in retired.iter().chain(&self.store.take_reasserted()) {
            self.tasks.mark(k, &others, now);
        }
    }

    /// Merges a peer's datum (or, with `whole_list_lww`, replaces the
    /// local list when the peer's is newer).
    fn merge(&mut self, mut d: Datum, t: u64) {
        let now = self.clock(t);
        if self.bugs.whole_list_lww {
            let key = ServiceId::new(&d.namespace, &d.group, &d.name);
            if let Some(local) = self.store.datum(key.full_key()) {
                let newest = d.max_version();
                if newest <= local.max_version() {
                    return;
                }
                let theirs: BTreeSet<String> = d.instances.iter().map(|r| r.key.clone()).collect();
                for mut r in local
                    .instances
                    .into_iter()
                    .filter(|r| !theirs.contains(&r.key))
                {
                    r.deleted = true;
                    r.version = newest;
                    d.instances.push(r);
                }
            }
        }
        self.store.merge(d, now);
    }

    /// A replicated datum from `source`, as `ShardCtx::merge_datums`
    /// takes it: what the source had older is sent back to it (read
    /// repair), unless the bug switch is on.
    fn merge_from(&mut self, d: Datum, source: &str, t: u64) {
        if self.bugs.whole_list_lww || self.bugs.no_read_repair {
            return self.merge(d, t);
        }
        let now = self.clock(t);
        let key = ServiceId::new(&d.namespace, &d.group, &d.name);
        let (_, older) = self.store.merge_from_peer(d, now);
        if older && self.members.is_member(source) {
            self.tasks.mark(key.full_key(), &[source.to_string()], now);
        }
    }

    /// The members in this node's list, itself included.
    fn member_list(&self) -> Vec<String> {
        self.members
            .members()
            .iter()
            .map(|m| m.address.clone())
            .collect()
    }

    fn clock(&self, t: u64) -> u64 {
        (t as i64 + self.skew).max(0) as u64
    }

    fn owner(&self, grouped: &str) -> String {
        self.healthy[owner_index(grouped, self.healthy.len())].clone()
    }

    fn others(&self) -> Vec<String> {
        self.healthy
            .iter()
            .filter(|a| **a != self.addr)
            .cloned()
            .collect()
    }

    /// Applies a client op here; a change is marked for replication.
    fn apply(&mut self, op: Op, t: u64) -> distro_registry::reply::Reply {
        let key = op.service().full_key().to_string();
        let now = self.clock(t);
        let applied = self.store.apply(op, now);
        if applied.changed {
            let others = self.others();
            self.tasks.mark(&key, &others, now);
        }
        // A persistent change is saved before it is answered. (Saving it
        // behind instead is lost only by a crash within a save interval,
        // before replication: too rare here; tests/durability.rs's kill -9
        // test catches it.)
        self.save(t, true);
        applied.reply
    }

    /// Brings the view up to the membership; grace for newly owned.
    fn refresh_view(&mut self, t: u64) {
        if self.members.epoch() == self.epoch {
            return;
        }
        let old = std::mem::replace(&mut self.healthy, self.members.healthy());
        self.epoch = self.members.epoch();
        let me = self.addr.clone();
        let new = self.healthy.clone();
        let owns = |h: &[String], g: &str| h[owner_index(g, h.len())] == me;
        let now = self.clock(t);
        if !self.bugs.no_grace {
            self.store
                .grant_ownership_grace(now, |g| owns(&new, g) && !owns(&old, g));
        }
        for gone in old.iter().filter(|p| !new.contains(p)) {
            self.tasks.forget_peer(gone);
        }
    }
}

/// A node's writer id, from its address (`hlc::node_id`).
fn writer_of(addr: &str) -> u64 {
    writer_id(node_id(addr).expect("an ip:port"), 0)
}

enum Msg {
    Datums {
        from: usize,
        to: usize,
        datums: Vec<Datum>,
    },
    Beat {
        to: usize,
        svc: ServiceId,
        addr: InstanceAddr,
    },
    Checksums {
        from: usize,
        to: usize,
        round: u64,
        healthy: Vec<String>,
        sums: Vec<(String, u64)>,
    },
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum ClientState {
    Beating,
    Stopped,
    Deregistered,
}

struct Client {
    svc: ServiceId,
    addr: InstanceAddr,
    state: ClientState,
    next_beat: u64,
    /// Beating since (registered at).
    since: u64,
    /// Registered with `ephemeral=false`: never beats, never expires.
    persistent: bool,
    /// A gRPC client: its connection (node, lease) while connected; it
    /// never beats. `Beating` means registered, `Stopped` closed.
    grpc: Option<GrpcConn>,
    /// Time of its last register or deregister.
    last_op: u64,
    /// Its last register or deregister was acknowledged by a node that
    /// crashed before any other node had it (AP: such a write is lost;
    /// invariants 2 and 3 do not judge this client until its next op).
    lost: bool,
    /// (time, node) of recent beats.
    beats: VecDeque<(u64, usize)>,
}

#[derive(Clone, Default)]
struct GrpcConn {
    /// The node it is connected to, and the lease there.
    at: Option<(usize, Arc<Lease>)>,
    /// Disconnected by its node's crash: reconnect (and redo) at this time.
    reconnect_at: Option<u64>,
}

/// Protocol breakages the simulation must catch (tests below).
#[derive(Clone, Copy, Default, PartialEq, Debug)]
struct Bugs {
    /// A new owner keeps the replicas' old beat times.
    no_grace: bool,
    /// A newer datum replaces the whole local list (Nacos' last writer
    /// wins) instead of merging per instance.
    whole_list_lww: bool,
    /// Verify drops every unlisted service of the source, whoever wrote it.
    drop_unconditionally: bool,
    /// Connection-bound instances of a dead node are never retired.
    leftovers_kept: bool,
    /// A retirement gets a fresh version (the retiring node's clock) instead
    /// of `Version::retired`, so it can outrank a re-register elsewhere.
    retire_with_new_version: bool,
    /// A restarted node merges everything it restored, confirmed or not.
    no_hold_back: bool,
    /// A member removed from the list is forgotten by the lease watch (as
    /// before issue 14), so the connections it held never count as gone.
    removed_holders_forgotten: bool,
    /// A node that receives an older copy than its own does not send its
    /// copy back (no read repair): a node cut off longer than the
    /// tombstone TTL brings back what was deleted meanwhile (seed 30823).
    no_read_repair: bool,
    /// A member-list disagreement does not hold expiry back: an owner that
    /// the beats do not reach, because the relaying node names another,
    /// expires beating instances.
    no_disagreement_hold: bool,
}

struct Sim {
    seed: u64,
    rng: fastrand::Rng,
    /// Whether a crashed node keeps its disk: a stream of its own, so that
    /// a seed's other faults and clients are as they were before disks.
    disk_rng: fastrand::Rng,
    t: u64,
    nodes: Vec<Node>,
    /// Every address a node may have, the spares included.
    all: Vec<String>,
    /// The current member list (what the operator's file says); nodes
    /// apply it at different times (`pending_lists`).
    official: Vec<String>,
    /// Nodes in `official`: started, and restarted after a crash.
    in_cluster: Vec<bool>,
    /// (when, node, list): a member list a node applies later.
    pending_lists: Vec<(u64, usize, Vec<String>)>,
    /// Membership decisions and the spares' skews: a stream of their own.
    member_rng: fastrand::Rng,
    /// Membership changes made in this run: (additions, removals).
    changes: (usize, usize),
    /// Cut links (unordered pairs, smaller index first).
    cut: BTreeSet<(usize, usize)>,
    net: BTreeMap<(u64, u64), Msg>,
    seq: u64,
    clients: Vec<Client>,
    trace: VecDeque<String>,
    faults: Faults,
    churn: bool,
    bugs: Bugs,
    /// The first violation seen during the run.
    violation: Option<String>,
    /// Last time any link was cut (invariant 4 is judged only where the
    /// network let beats through).
    last_cut: u64,
    /// Last time an owner expired an instance (the final check waits for
    /// its replication).
    last_expiry: u64,
}

impl Sim {
    fn new(seed: u64, n: usize, faults: Faults) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut member_rng = fastrand::Rng::with_seed(seed ^ 0x3e3b);
        let all: Vec<String> = (0..n + SPARE_NODES)
            .map(|i| format!("10.9.0.{}:8848", i + 1))
            .collect();
        let official: Vec<String> = all[..n].to_vec();
        let nodes = all
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let skew = if i < n {
                    rng.i64(-faults.skew_ms..=faults.skew_ms)
                } else {
                    member_rng.i64(-faults.skew_ms..=faults.skew_ms)
                };
                let mut node = Node::fresh(a, &official, Bugs::default(), skew, 0);
                node.store.enable_journal();
                node.ready = i < n;
                node.up = i < n;
                node
            })
            .collect();
        let clients = (0..HTTP_CLIENTS + GRPC_CLIENTS)
            .map(|k| Client {
                svc: ServiceId::new("public", "DEFAULT_GROUP", &format!("svc-{}", k % 8)),
                addr: InstanceAddr {
                    ip: format!("172.16.0.{k}"),
                    port: 8080,
                    cluster: "DEFAULT".into(),
                },
                state: ClientState::Stopped,
                next_beat: 0,
                since: 0,
                persistent: k < HTTP_CLIENTS && k % 3 == 0,
                grpc: (k >= HTTP_CLIENTS).then(GrpcConn::default),
                last_op: 0,
                lost: false,
                beats: VecDeque::new(),
            })
            .collect();
        Sim {
            seed,
            rng,
            disk_rng: fastrand::Rng::with_seed(seed ^ 0xd15c),
            t: 0,
            nodes,
            all,
            official,
            in_cluster: (0..n + SPARE_NODES).map(|i| i < n).collect(),
            pending_lists: Vec::new(),
            member_rng,
            changes: (0, 0),
            cut: BTreeSet::new(),
            net: BTreeMap::new(),
            seq: 0,
            clients,
            trace: VecDeque::new(),
            faults,
            churn: true,
            bugs: Bugs::default(),
            violation: None,
            last_cut: 0,
            last_expiry: 0,
        }
    }

    fn log(&mut self, e: String) {
        let max = std::env::var("SIM_TRACE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(TRACE_MAX);
        if self.trace.len() >= max {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {e}", self.t));
    }

    fn index(&self, addr: &str) -> usize {
        self.all.iter().position(|a| a == addr).unwrap()
    }

    /// Whether a request from `a` reaches a running `b`.
    fn reachable(&self, a: usize, b: usize) -> bool {
        a == b || (self.nodes[b].up && !self.cut.contains(&(a.min(b), a.max(b))))
    }

    /// Sends a message; false when it cannot arrive (the sender sees the
    /// failure, as a refused connection or a timeout).
    fn send(&mut self, from: usize, to: usize, msg: Msg) -> bool {
        if !self.reachable(from, to) || self.rng.f64() < self.faults.drop {
            return false;
        }
        let delay = if self.rng.f64() < self.faults.slow {
            self.rng.u64(200..1_500)
        } else {
            self.rng.u64(1..30)
        };
        self.seq += 1;
        if self.rng.f64() < self.faults.dup {
            let copy = match &msg {
                Msg::Datums { from, to, datums } => Some(Msg::Datums {
                    from: *from,
                    to: *to,
                    datums: datums.clone(),
                }),
                _ => None,
            };
            if let Some(c) = copy {
                self.net.insert((self.t + delay + 700, self.seq), c);
                self.seq += 1;
            }
        }
        self.net.insert((self.t + delay, self.seq), msg);
        true
    }

    fn deliver(&mut self) {
        while let Some((&(at, seq), _)) = self.net.iter().next() {
            if at > self.t {
                break;
            }
            let msg = self.net.remove(&(at, seq)).unwrap();
            match msg {
                Msg::Datums { from, to, datums } => {
                    if self.nodes[to].up {
                        let source = self.all[from].clone();
                        for d in datums {
                            self.watch(to, "replication", &d);
                            self.nodes[to].merge_from(d, &source, self.t);
                        }
                    }
                }
                Msg::Beat { to, svc, addr } => {
                    if self.nodes[to].up {
                        let op = Op::Beat {
                            svc,
                            addr,
                            beat: None,
                        };
                        self.nodes[to].apply(op, self.t);
                    }
                }
                Msg::Checksums {
                    from,
                    to,
                    round,
                    healthy,
                    sums,
                } => self.verify_at(from, to, round, healthy, sums),
            }
        }
    }

    fn verify_at(
        &mut self,
        from: usize,
        to: usize,
        round: u64,
        healthy: Vec<String>,
        sums: Vec<(String, u64)>,
    ) {
        if !self.nodes[to].up {
            return;
        }
        let source = self.all[from].clone();
        let node = &mut self.nodes[to];
        if !node.members.is_member(&source) {
            return; // refused: "not a member"
        }
        let fetch = keys_to_fetch(&sums, |k| node.store.checksum(k));
        if node.healthy == healthy {
            let listed: BTreeSet<&str> = sums.iter().map(|(k, _)| k.as_str()).collect();
            let view = node.healthy.clone();
            let source_node = node_id(&source).expect("an ip:port");
            let dropped = if node.bugs.drop_unconditionally {
                let now = node.clock(self.t);
                let doomed: Vec<String> = node
                    .store
                    .checksums(|g| view[owner_index(g, view.len())] == source)
                    .into_iter()
                    .filter(|(k, _)| !listed.contains(k.as_str()))
                    .map(|(k, _)| k)
                    .collect();
                for k in &doomed {
                    if let Some(mut d) = node.store.datum(k) {
                        for r in d.instances.iter_mut() {
                            r.deleted = true;
                            r.version.hlc += 1;
                        }
                        node.store.merge(d, now);
                    }
                }
                doomed.into_iter().map(std::rc::Rc::from).collect()
            } else {
                node.store.drop_unlisted(
                    source_node,
                    SHARD_BITS,
                    round,
                    |g| view[owner_index(g, view.len())] == source,
                    |k| listed.contains(k),
                )
            };
            // Kept but unlisted: replicated back to the owner.
            let now = node.clock(self.t);
            let missing: Vec<String> = node
                .store
                .checksums(|g| view[owner_index(g, view.len())] == source)
                .into_iter()
                .filter(|(k, _)| !listed.contains(k.as_str()))
                .map(|(k, _)| k)
                .collect();
            for k in missing {
                node.tasks.mark(&k, std::slice::from_ref(&source), now);
            }
            if !dropped.is_empty() {
                let e = format!("node {to} dropped {dropped:?} unlisted by {from}");
                self.log(e);
            }
        }
        if !fetch.is_empty() && self.reachable(to, from) {
            let datums: Vec<Datum> = fetch
                .iter()
                .filter_map(|k| self.nodes[from].store.datum(k))
                .collect();
            let now = self.nodes[to].clock(self.t);
            for d in datums {
                self.watch(to, "verify fetch", &d);
                self.nodes[to].merge(d, self.t);
            }
            // Still different: this copy holds what the owner lacks.
            for (k, sum) in sums.iter().filter(|(k, _)| fetch.contains(k)) {
                if self.nodes[to].store.checksum(k).is_some_and(|m| m != *sum) {
                    self.nodes[to]
                        .tasks
                        .mark(k, std::slice::from_ref(&source), now);
                }
            }
        }
    }

    /// A client op arriving at node `x`: applied there or forwarded to the
    /// owner (SPEC 4.3).
    fn client_op(&mut self, x: usize, op: Op) -> u32 {
        let grouped = op.service().grouped().to_string();
        let owner = self.index(&self.nodes[x].owner(&grouped));
        let target = if owner != x && self.reachable(x, owner) && self.nodes[owner].ready {
            owner
        } else {
            x
        };
        let what = match &op {
            Op::Register { spec, .. } => Some(format!("register {}", spec.addr.ip)),
            Op::Deregister { addr, .. } => Some(format!("deregister {}", addr.ip)),
            _ => None,
        };
        if let Some(w) = what {
            self.log(format!(
                "{w} of {grouped} at node {target} (via {x}, owner {owner})"
            ));
        }
        let watched = std::env::var("SIM_WATCH").ok();
        let wkey = op.service().full_key().to_string();
        let reply = self.nodes[target].apply(op, self.t);
        if let Some(ip) = watched {
            let d = self.nodes[target].store.datum(&wkey);
            let rec = d.as_ref().and_then(|d| {
                d.instances
                    .iter()
                    .find(|r| r.ip == ip)
                    .map(|r| (r.deleted, r.version.hlc >> 16))
            });
            self.log(format!(
                "  after: node {target} holds {rec:?} (service known {})",
                d.is_some()
            ));
        }
        let body = String::from_utf8_lossy(&reply.body).to_string();
        if body.contains("20404") {
            20404
        } else if reply.status == 200 {
            200
        } else {
            u32::from(reply.status)
        }
    }

    fn beat(&mut self, c: usize, x: usize) {
        let (svc, addr) = (self.clients[c].svc.clone(), self.clients[c].addr.clone());
        let owner = self.index(&self.nodes[x].owner(svc.grouped()));
        let knows = self.nodes[x]
            .store
            .known_instance(svc.full_key(), &addr.key())
            .is_some();
        if owner != x && knows {
            // Answered here, relayed to the owner (lost if it cannot go).
            self.send(
                x,
                owner,
                Msg::Beat {
                    to: owner,
                    svc,
                    addr,
                },
            );
            return;
        }
        let op = Op::Beat {
            svc,
            addr,
            beat: Some(BeatInfo {
                weight: 1.0,
                ephemeral: true,
                metadata: Default::default(),
            }),
        };
        self.client_op(x, op);
    }

    fn ready_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.in_cluster[i] && self.nodes[i].up && self.nodes[i].ready)
            .collect()
    }

    fn clients_step(&mut self) {
        for c in 0..self.clients.len() {
            let ready = self.ready_nodes();
            if ready.is_empty() {
                return;
            }
            let x = ready[self.rng.usize(..ready.len())];
            let state = self.clients[c].state;
            // Two writes of one client through different nodes closer than
            // the clocks' skew are concurrent to the cluster (HLC orders
            // them, perhaps not as the client did): clients here leave
            // `OP_GAP_MS` between their writes.
            let rested = self.t >= self.clients[c].since + OP_GAP_MS
                && self.t >= self.clients[c].last_op + OP_GAP_MS;
            if self.clients[c].grpc.is_some() {
                self.grpc_client_step(c, x, rested);
                continue;
            }
            if self.churn && rested && self.rng.f64() < 0.002 {
                self.clients[c].last_op = self.t;
                let (svc, addr) = (self.clients[c].svc.clone(), self.clients[c].addr.clone());
                match state {
                    ClientState::Beating => {
                        if self.clients[c].persistent || self.rng.bool() {
                            let op = Op::Deregister {
                                svc,
                                addr,
                                persistent: false,
                            };
                            self.client_op(x, op);
                            self.clients[c].state = ClientState::Deregistered;
                            self.clients[c].lost = false;
                            self.log(format!("client {c} deregistered via {x}"));
                        } else {
                            self.clients[c].state = ClientState::Stopped;
                            self.log(format!("client {c} stopped beating"));
                        }
                    }
                    ClientState::Stopped | ClientState::Deregistered => {
                        let spec = InstanceSpec {
                            addr,
                            weight: 1.0,
                            healthy: true,
                            enabled: true,
                            ephemeral: !self.clients[c].persistent,
                            metadata: Default::default(),
                        };
                        self.client_op(x, Op::Register { svc, spec });
                        self.clients[c].state = ClientState::Beating;
                        self.clients[c].lost = false;
                        self.clients[c].next_beat = self.t + BEAT_MS;
                        self.clients[c].since = self.t;
                        self.clients[c].beats.clear();
                        self.log(format!("client {c} registered via {x}"));
                    }
                }
                continue;
            }
            let beats = !self.clients[c].persistent;
            if beats && state == ClientState::Beating && self.t >= self.clients[c].next_beat {
                self.clients[c].next_beat = self.t + BEAT_MS;
                self.beat(c, x);
                let t = self.t;
                let beats = &mut self.clients[c].beats;
                beats.push_back((t, x));
                while beats.front().is_some_and(|(bt, _)| *bt + 60_000 < t) {
                    beats.pop_front();
                }
            }
        }
    }

    /// A gRPC client's publish (or release) on the node holding its
    /// connection: applied there, never forwarded (NACOS2.md 6).
    fn publish(&mut self, c: usize, n: usize, lease: Arc<Lease>, register: bool) {
        let (svc, addr) = (self.clients[c].svc.clone(), self.clients[c].addr.clone());
        let op = if register {
            let spec = InstanceSpec {
                addr,
                weight: 1.0,
                healthy: true,
                enabled: true,
                ephemeral: true,
                metadata: Default::default(),
            };
            Op::Publish {
                svc,
                conn: lease,
                specs: vec![spec],
                release: vec![],
            }
        } else {
            Op::Publish {
                svc,
                conn: lease,
                specs: vec![],
                release: vec![addr],
            }
        };
        self.nodes[n].apply(op, self.t);
    }

    fn grpc_client_step(&mut self, c: usize, x: usize, rested: bool) {
        let conn = self.clients[c].grpc.clone().expect("a gRPC client");
        let state = self.clients[c].state;
        if let Some(at) = conn.reconnect_at {
            if self.t >= at {
                let lease = self.nodes[x].accept();
                self.clients[c].grpc = Some(GrpcConn {
                    at: Some((x, lease.clone())),
                    reconnect_at: None,
                });
                if state == ClientState::Beating {
                    self.publish(c, x, lease, true);
                }
                self.log(format!(
                    "gRPC client {c} reconnected to node {x} (redo {state:?})"
                ));
            }
            return;
        }
        if !(self.churn && rested && self.rng.f64() < 0.002) {
            return;
        }
        self.clients[c].last_op = self.t;
        match (state, conn.at) {
            (ClientState::Beating, Some((n, lease))) => {
                self.publish(c, n, lease.clone(), false);
                if self.rng.bool() {
                    self.clients[c].state = ClientState::Deregistered;
                    self.log(format!("gRPC client {c} deregistered at node {n}"));
                } else {
                    // Closed: the node releases what the connection held.
                    self.clients[c].state = ClientState::Stopped;
                    self.clients[c].grpc = Some(GrpcConn::default());
                    self.log(format!("gRPC client {c} closed its connection to node {n}"));
                }
            }
            (_, at) => {
                let (n, lease) = at.unwrap_or_else(|| (x, self.nodes[x].accept()));
                self.publish(c, n, lease.clone(), true);
                self.clients[c].state = ClientState::Beating;
                self.clients[c].since = self.t;
                self.clients[c].grpc = Some(GrpcConn {
                    at: Some((n, lease)),
                    reconnect_at: None,
                });
                self.log(format!("gRPC client {c} registered at node {n}"));
            }
        }
    }

    fn faults_step(&mut self) {
        let n = self.nodes.len();
        let f = self.faults;
        if self.rng.f64() < f.crash {
            let i = self.rng.usize(..n);
            if self.in_cluster[i] && self.nodes[i].up && self.ready_nodes().len() > 1 {
                self.crash(i);
            }
        }
        if self.rng.f64() < f.restart {
            let i = self.rng.usize(..n);
            if self.in_cluster[i] && !self.nodes[i].up {
                self.restart(i);
            }
        }
        if self.t + MEMBER_CHANGE_END_MS < CHURN_MS && self.member_rng.f64() < MEMBER_CHANGE {
            self.change_members();
        }
        if self.rng.f64() < f.cut {
            let (a, b) = (self.rng.usize(..n), self.rng.usize(..n));
            if a != b {
                self.cut.insert((a.min(b), a.max(b)));
                self.log(format!("link {a}-{b} cut"));
            }
        }
        if self.rng.f64() < f.heal && !self.cut.is_empty() {
            let k = *self
                .cut
                .iter()
                .nth(self.rng.usize(..self.cut.len()))
                .unwrap();
            self.cut.remove(&k);
            self.log(format!("link {}-{} healed", k.0, k.1));
        }
    }

    /// Node `i` crashes: it loses its memory, and its disk unless
    /// `keep_disk`. Writes only it had, and not on a disk it keeps, are
    /// gone: their clients are marked `lost`.
    fn crash(&mut self, i: usize) {
        let keep_disk = self.disk_rng.bool();
        self.crash_with(i, keep_disk);
    }

    /// A membership change (issue 14): a spare added (started empty; it
    /// loads a snapshot) or a member removed (stopped for good, its disk
    /// gone); every other member applies the new list at its own time,
    /// within `APPLY_SPREAD_MS` (some over `APPLY_SPREAD_SLOW_MS`), in the
    /// order the lists were made.
    fn change_members(&mut self) {
        let spares: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.in_cluster[i] && !self.nodes[i].up)
            .collect();
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.in_cluster[i])
            .collect();
        let add = !spares.is_empty() && (members.len() <= MEMBERS_MIN || self.member_rng.bool());
        let mut list = self.official.clone();
        if add {
            let x = spares[self.member_rng.usize(..spares.len())];
            list.push(self.all[x].clone());
            let skew = self.nodes[x].skew;
            self.nodes[x] = Node::fresh(&self.all[x], &list, self.bugs, skew, self.t);
            self.nodes[x].store.enable_journal();
            self.in_cluster[x] = true;
            self.log(format!("members: node {x} added, {list:?}"));
        } else {
            if members.len() <= MEMBERS_MIN {
                return;
            }
            let r = members[self.member_rng.usize(..members.len())];
            if self.nodes[r].up && self.ready_nodes().len() <= 1 {
                return;
            }
            // Stopped for good with its disk: also a node already down,
            // whose saved writes no other node has are lost.
            self.crash_with(r, false);
            self.in_cluster[r] = false;
            list.retain(|a| *a != self.all[r]);
            self.log(format!("members: node {r} removed, {list:?}"));
        }
        self.official = list.clone();
        if add {
            self.changes.0 += 1;
        } else {
            self.changes.1 += 1;
        }
        let slow_fits = self.t + APPLY_SPREAD_SLOW_MS + MEMBER_CHANGE_END_MS < CHURN_MS;
        let spread = if slow_fits && self.member_rng.u64(0..SLOW_SPREAD_ONE_IN) == 0 {
            self.log("members: this list is rolled out slowly".to_string());
            APPLY_SPREAD_SLOW_MS
        } else {
            APPLY_SPREAD_MS
        };
        for i in 0..self.nodes.len() {
            // Scheduled even when the node holds this list now: a list it
            // has yet to apply may come before.
            if !self.in_cluster[i] {
                continue;
            }
            let after = self
                .pending_lists
                .iter()
                .filter(|(_, n, _)| *n == i)
                .map(|(at, ..)| *at)
                .max()
                .unwrap_or(self.t);
            let at = after.max(self.t + self.member_rng.u64(0..spread));
            self.pending_lists.push((at, i, list.clone()));
        }
    }

    /// Member lists due: each node applies its own.
    fn apply_lists(&mut self) {
        let t = self.t;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_lists)
            .into_iter()
            .partition(|(at, ..)| *at <= t);
        self.pending_lists = later;
        for (_, i, list) in due {
            let now = self.nodes[i].clock(t);
            if let Ok(change) = self.nodes[i].members.set_list(&list, now) {
                if !change.is_empty() {
                    self.log(format!("node {i} applied {list:?}"));
                }
            }
        }
    }

    fn crash_with(&mut self, i: usize, keep_disk: bool) {
        for c in 0..self.clients.len() {
            if let Some(conn) = self.clients[c].grpc.clone() {
                // Its connection broke: a registered client reconnects
                // elsewhere with its redo, or its process died as well
                // (the dead node's leftovers must then go everywhere).
                if conn.at.as_ref().is_some_and(|(n, _)| *n == i) {
                    let mut next = GrpcConn::default();
                    if self.clients[c].state == ClientState::Beating {
                        if self.rng.bool() {
                            next.reconnect_at = Some(self.t + RECONNECT_MS);
                        } else {
                            self.clients[c].state = ClientState::Stopped;
                            self.log(format!("gRPC client {c} died with node {i}"));
                        }
                    }
                    self.clients[c].grpc = Some(next);
                }
                continue;
            }
            let (key, inst) = (
                self.clients[c].svc.full_key().to_string(),
                self.clients[c].addr.key(),
            );
            let version = |n: &Node| {
                n.store
                    .datum(&key)
                    .and_then(|d| d.instances.into_iter().find(|r| r.key == inst))
                    .map(|r| r.version)
            };
            let Some(mine) = version(&self.nodes[i]) else {
                continue;
            };
            // An acknowledged persistent write is on a disk that survives,
            // by contract; an ephemeral one only once saved behind.
            let saved = keep_disk
                && (self.clients[c].persistent
                    || self.nodes[i]
                        .saved_version(&key, &inst)
                        .is_some_and(|v| v >= mine));
            let elsewhere = saved
                || (0..self.nodes.len())
                    .filter(|&j| j != i && self.nodes[j].up)
                    .any(|j| version(&self.nodes[j]).is_some_and(|v| v >= mine));
            if !elsewhere && !self.clients[c].lost {
                self.clients[c].lost = true;
                self.log(format!("client {c}'s last write died with node {i}"));
            }
        }
        self.nodes[i].up = false;
        if !keep_disk {
            self.nodes[i].disk = MemoryRows::default();
        }
        self.log(format!(
            "node {i} crashed ({})",
            if keep_disk { "disk kept" } else { "disk lost" }
        ));
    }

    fn restart(&mut self, i: usize) {
        let (addr, skew) = (self.nodes[i].addr.clone(), self.nodes[i].skew);
        let disk = std::mem::take(&mut self.nodes[i].disk);
        let rows = disk.instances.len();
        // A restarted node reads the current file.
        let list = self.official.clone();
        self.pending_lists.retain(|(_, n, _)| *n != i);
        self.nodes[i] = Node::from_disk(&addr, &list, skew, self.t, disk, self.bugs);
        self.log(format!(
            "node {i} restarted with {rows} saved instance rows"
        ));
    }

    /// A starting node's snapshot load (SPEC 4.6).
    fn startup_step(&mut self, i: usize) {
        let mut answers = Vec::new();
        let others: Vec<usize> = self.nodes[i]
            .member_list()
            .iter()
            .map(|a| self.index(a))
            .filter(|&j| j != i)
            .collect();
        for j in others {
            if !self.reachable(i, j) {
                answers.push(Answer::Nothing);
            } else if !self.nodes[j].ready {
                answers.push(Answer::Starting);
            } else {
                let snapshot = self.nodes[j].store.snapshot();
                for d in snapshot {
                    self.watch(i, "snapshot", &d);
                    self.nodes[i].merge(d, self.t);
                }
                answers.push(Answer::Served);
                break;
            }
        }
        let waited = self.t - self.nodes[i].started;
        let decision = startup::decide(&answers, waited);
        if decision != Decision::Retry {
            let now = self.nodes[i].clock(self.t);
            let dropped = self.nodes[i]
                .store
                .settle_restored(decision == Decision::Loaded, now);
            if dropped > 0 {
                self.log(format!(
                    "node {i} dropped {dropped} unconfirmed restored instances"
                ));
            }
            self.nodes[i].ready = true;
            self.log(format!(
                "node {i} ready ({:?})",
                startup::decide(&answers, waited)
            ));
        }
    }

    fn nodes_step(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            if (self.t / STEP_MS).is_multiple_of(SAVE_BEHIND_STEPS) {
                self.nodes[i].save(self.t, false);
            }
            if !self.nodes[i].ready {
                if (self.t - self.nodes[i].started).is_multiple_of(1_000) {
                    self.startup_step(i);
                }
                continue;
            }
            self.nodes[i].refresh_view(self.t);
            self.nodes[i].grant_while_lists_disagree(self.t);
            self.nodes[i].leases(self.t);
            // Expiry, owner only.
            let changed = {
                let node = &mut self.nodes[i];
                let now = node.clock(self.t);
                let me = node.addr.clone();
                let healthy = node.healthy.clone();
                let mut changed = Vec::new();
                node.store.expire_owned(now, &mut changed, |g| {
                    healthy[owner_index(g, healthy.len())] == me
                });
                let others = node.others();
                for k in &changed {
                    node.tasks.mark(k, &others, now);
                }
                changed
            };
            // The instances this expiry deleted: tombstones it just wrote.
            let now = self.nodes[i].clock(self.t);
            for k in changed {
                let Some(d) = self.nodes[i].store.datum(&k) else {
                    continue;
                };
                for r in d.instances.iter().filter(|r| {
                    r.deleted && distro_registry::distro::hlc::physical_ms(r.version.hlc) == now
                }) {
                    let c = self
                        .clients
                        .iter()
                        .position(|cl| cl.svc.full_key() == k.as_ref() && cl.addr.key() == r.key);
                    if let Some(c) = c {
                        self.expired(i, c);
                    }
                }
            }
            // Replication batches.
            let now = self.nodes[i].clock(self.t);
            for (peer, services) in self.nodes[i].tasks.due(now) {
                let to = self.index(&peer);
                let datums: Vec<Datum> = services
                    .iter()
                    .filter_map(|k| self.nodes[i].store.datum(k))
                    .collect();
                if !self.send(
                    i,
                    to,
                    Msg::Datums {
                        from: i,
                        to,
                        datums,
                    },
                ) {
                    self.nodes[i].tasks.failed(&peer, services, 0, now);
                }
            }
            // Member reports.
            if self.t >= self.nodes[i].next_report {
                self.nodes[i].next_report = self.t + REPORT_MS;
                if let Some(target) = self.nodes[i].members.next_report_target() {
                    let j = self.index(&target);
                    let outcome = if !self.nodes[j].up {
                        ReportOutcome::Refused
                    } else if !self.reachable(i, j) {
                        ReportOutcome::Failed
                    } else if !self.nodes[j].members.is_member(&self.nodes[i].addr) {
                        // 400: "not another member"; both see that the
                        // lists differ.
                        self.nodes[i].lists_disagree(self.t);
                        self.nodes[j].lists_disagree(self.t);
                        ReportOutcome::Failed
                    } else {
                        if self.nodes[i].members.list_digest()
                            != self.nodes[j].members.list_digest()
                        {
                            self.nodes[j].lists_disagree(self.t);
                        }
                        let me = self.nodes[i].addr.clone();
                        self.nodes[j].members.report_received(&me);
                        if self.nodes[j].ready {
                            ReportOutcome::Accepted
                        } else {
                            ReportOutcome::Starting
                        }
                    };
                    if self.nodes[i].members.report_outcome(&target, outcome) {
                        let e = format!("node {i} sees {target} {outcome:?}");
                        self.log(e);
                    }
                }
            }
            // Verify rounds.
            if self.t >= self.nodes[i].next_verify {
                self.nodes[i].next_verify = self.t + VERIFY_MS;
                let node = &self.nodes[i];
                let me = node.addr.clone();
                let healthy = node.healthy.clone();
                let round = distro_registry::distro::hlc::pack(node.clock(self.t), 0);
                let sums = node
                    .store
                    .checksums(|g| healthy[owner_index(g, healthy.len())] == me);
                for peer in node.others() {
                    let to = self.index(&peer);
                    let msg = Msg::Checksums {
                        from: i,
                        to,
                        round,
                        healthy: healthy.clone(),
                        sums: sums.clone(),
                    };
                    self.send(i, to, msg);
                }
            }
        }
    }

    /// With `SIM_WATCH=ip`, logs every datum record of that instance a
    /// node is about to merge, and whether it holds it before.
    fn watch(&mut self, to: usize, how: &str, d: &Datum) {
        let Ok(ip) = std::env::var("SIM_WATCH") else {
            return;
        };
        for r in d.instances.iter().filter(|r| r.ip == ip) {
            let key = ServiceId::new(&d.namespace, &d.group, &d.name);
            let mine = self.nodes[to]
                .store
                .datum(key.full_key())
                .and_then(|l| l.instances.into_iter().find(|x| x.key == r.key))
                .map(|x| (x.deleted, x.version.hlc >> 16));
            let svc_known = self.nodes[to].store.datum(key.full_key()).is_some();
            let e = format!(
                "node {to} {how}: {} deleted={} v={} (has {mine:?}, service known {svc_known})",
                r.ip,
                r.deleted,
                r.version.hlc >> 16
            );
            self.log(e);
        }
    }

    /// Invariant 4: node `i` expired client `c`'s instance. A violation
    /// when the client beat all along (for a whole delete timeout), no link
    /// was cut meanwhile (a cut lets an AP owner miss the beats), and its
    /// last beat went to a node that was up.
    fn expired(&mut self, i: usize, c: usize) {
        let window = timeouts().delete_timeout_ms;
        let cl = &self.clients[c];
        let beating = cl.state == ClientState::Beating && cl.since + window + BEAT_MS <= self.t;
        let calm = self.last_cut + window <= self.t;
        let recent = cl
            .beats
            .back()
            .is_some_and(|(t, x)| t + BEAT_MS * 2 > self.t && self.nodes[*x].up);
        let e = format!("node {i} expired client {c} (beating {beating}, calm {calm})");
        self.log(e);
        self.last_expiry = self.t;
        if beating && calm && recent && self.violation.is_none() {
            self.violation = Some(format!(
                "invariant 4: node {i} expired client {c}, which kept beating"
            ));
        }
    }

    fn step(&mut self) {
        self.t += STEP_MS;
        self.deliver();
        if self.churn {
            self.faults_step();
        }
        if !self.cut.is_empty() {
            self.last_cut = self.t;
        }
        self.apply_lists();
        self.clients_step();
        self.nodes_step();
    }

    /// Instances (keys) of every service a node holds.
    fn holdings(&self, i: usize) -> BTreeMap<String, BTreeSet<String>> {
        self.nodes[i]
            .store
            .snapshot()
            .into_iter()
            .map(|d| {
                let key = ServiceId::new(&d.namespace, &d.group, &d.name)
                    .full_key()
                    .to_string();
                let live = d
                    .instances
                    .iter()
                    .filter(|r| !r.deleted)
                    .map(|r| r.key.clone())
                    .collect();
                (key, live)
            })
            .filter(|(_, live): &(String, BTreeSet<String>)| !live.is_empty())
            .collect()
    }

    /// Runs the seed: churn and faults, then heal and settle, then check.
    fn run(&mut self, churn_ms: u64, settle_ms: u64) -> Result<(), String> {
        while self.t < churn_ms {
            self.step();
        }
        self.churn = false;
        self.cut.clear();
        for i in 0..self.nodes.len() {
            if self.in_cluster[i] && !self.nodes[i].up {
                self.restart(i);
            }
        }
        self.log("faults healed, churn stopped".into());
        let end = self.t + settle_ms;
        while self.t < end {
            self.step();
        }
        // An expiry of a silent instance may be in flight at the very
        // moment of the check: give the state up to 3 s (a slow message)
        // and 3 s after the last expiry to settle (seed 6386: an owner that
        // took over at a restart just before the churn stopped expired a
        // silent instance at the last step, and others went on expiring
        // for 5 s more), at most 10 s in all.
        let mut waited = 0;
        loop {
            if self.check().is_ok() {
                return Ok(());
            }
            let since_expiry = (self.t - self.last_expiry.min(self.t)) / STEP_MS;
            let settled = waited >= INFLIGHT_STEPS_MAX && since_expiry >= INFLIGHT_STEPS_MAX as u64;
            if settled || waited >= INFLIGHT_WAIT_STEPS_MAX {
                return self.check();
            }
            self.step();
            waited += 1;
        }
    }

    fn check(&self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.in_cluster[i])
            .collect();
        let mut official = self.official.clone();
        official.sort();
        for &i in &members {
            if self.nodes[i].member_list() != official {
                return Err(format!("node {i} never applied {:?}", self.official));
            }
        }
        let first = members[0];
        let h0 = self.holdings(first);
        for &i in &members[1..] {
            let hi = self.holdings(i);
            if hi != h0 {
                return Err(format!(
                    "invariant 1: node {first} and node {i} differ:\n  {first}: {h0:?}\n  {i}: {hi:?}"
                ));
            }
        }
        for (c, cl) in self.clients.iter().enumerate().filter(|(_, cl)| !cl.lost) {
            let present = h0
                .get(cl.svc.full_key())
                .is_some_and(|s| s.contains(&cl.addr.key()));
            match cl.state {
                ClientState::Beating if !present => {
                    return Err(format!(
                        "invariant 2: registered client {c} (persistent {}) is missing",
                        cl.persistent
                    ))
                }
                ClientState::Deregistered if present => {
                    return Err(format!("invariant 3: deregistered client {c} is back"))
                }
                ClientState::Stopped if present && cl.grpc.is_some() => {
                    return Err(format!(
                        "invariant 3: gRPC client {c}, whose connection is gone, is listed"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn report(&self, err: &str) -> String {
        let trace: Vec<&str> = self.trace.iter().map(|s| s.as_str()).collect();
        format!(
            "seed {}: {err}\nlast events:\n  {}",
            self.seed,
            trace.join("\n  ")
        )
    }
}

fn run_seed(seed: u64) -> Result<(), String> {
    run_seed_with(seed, Bugs::default())
}

fn run_seed_with(seed: u64, bugs: Bugs) -> Result<(), String> {
    let n = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(seed, n, FAULTS);
    sim.bugs = bugs;
    for node in &mut sim.nodes {
        node.bugs = bugs;
    }
    sim.run(CHURN_MS, SETTLE_MS).map_err(|e| sim.report(&e))
}

/// Seeds a broken protocol gets to show a violation in.
const CATCH_SEEDS_MAX: u64 = 300;

/// Asserts that the simulation finds a violation of a protocol broken by
/// `bugs` within `CATCH_SEEDS_MAX` seeds, and says where.
fn assert_caught(name: &str, bugs: Bugs) {
    let found =
        (0..CATCH_SEEDS_MAX).find_map(|seed| run_seed_with(seed, bugs).err().map(|e| (seed, e)));
    let Some((seed, e)) = found else {
        panic!("{name}: no violation in {CATCH_SEEDS_MAX} seeds");
    };
    let first = e.lines().next().unwrap_or("");
    let what = first.trim_start_matches(&format!("seed {seed}: "));
    println!("{name}: caught at seed {seed}: {what}");
}

#[test]
fn the_simulation_catches_a_missing_ownership_grace() {
    let no_grace = Bugs {
        no_grace: true,
        ..Bugs::default()
    };
    assert_caught("no grace", no_grace);
}

#[test]
fn the_simulation_catches_whole_list_last_writer_wins() {
    let lww = Bugs {
        whole_list_lww: true,
        ..Bugs::default()
    };
    assert_caught("whole-list LWW", lww);
}

#[test]
fn the_simulation_catches_an_unconditional_verify_drop() {
    let drop = Bugs {
        drop_unconditionally: true,
        ..Bugs::default()
    };
    assert_caught("unconditional drop", drop);
}

#[test]
fn the_simulation_catches_a_dead_nodes_connection_leftovers_kept() {
    let kept = Bugs {
        leftovers_kept: true,
        ..Bugs::default()
    };
    assert_caught("leftovers kept", kept);
}

#[test]
fn the_simulation_catches_a_retirement_that_outranks_a_reconnect() {
    let fresh = Bugs {
        retire_with_new_version: true,
        ..Bugs::default()
    };
    assert_caught("retirement with a new version", fresh);
}

#[test]
fn the_simulation_catches_restored_records_merged_unconfirmed() {
    let bugs = Bugs {
        no_hold_back: true,
        ..Bugs::default()
    };
    assert_caught("restored records merged unconfirmed", bugs);
}

#[test]
fn the_simulation_catches_a_removed_members_connections_never_retired() {
    let bugs = Bugs {
        removed_holders_forgotten: true,
        ..Bugs::default()
    };
    assert_caught("removed holders forgotten", bugs);
}

#[test]
fn the_simulation_catches_expiry_while_member_lists_differ() {
    let no_hold = Bugs {
        no_disagreement_hold: true,
        ..Bugs::default()
    };
    assert_caught("no disagreement hold", no_hold);
}

#[test]
fn members_are_added_and_removed_in_most_seeds() {
    let (mut added, mut removed, mut with_changes) = (0, 0, 0);
    for seed in 0..50 {
        let n = 3 + (seed % 3) as usize;
        let mut sim = Sim::new(seed, n, FAULTS);
        sim.run(CHURN_MS, SETTLE_MS)
            .map_err(|e| sim.report(&e))
            .unwrap();
        added += sim.changes.0;
        removed += sim.changes.1;
        with_changes += usize::from(sim.changes != (0, 0));
    }
    println!("50 seeds: {added} additions, {removed} removals, {with_changes} seeds with changes");
    assert!(
        added >= 25 && removed >= 25,
        "{added} additions, {removed} removals"
    );
    assert!(
        with_changes >= 30,
        "{with_changes} of 50 seeds changed members"
    );
}

#[test]
fn seeds_keep_the_invariants() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let start = std::time::Instant::now();
    let mut violations = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            violations.push(e);
        }
    }
    println!(
        "simulated {seeds} seeds: {} invariant violations ({:.1} s)",
        violations.len(),
        start.elapsed().as_secs_f64()
    );
    for v in &violations {
        println!("  {}", v.lines().next().unwrap_or(""));
    }
    if let Some(first) = violations.first() {
        panic!("{first}");
    }
}

/// `SIM_SEED=N cargo test --test simulation replay -- --nocapture`: one
/// seed with its whole trace.
#[test]
fn replay() {
    let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|v| v.parse().ok()) else {
        return;
    };
    let n = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(seed, n, FAULTS);
    match sim.run(CHURN_MS, SETTLE_MS) {
        Ok(()) => println!("seed {seed}: ok"),
        Err(e) => println!("{}", sim.report(&e)),
    }
    if let Ok(svc) = std::env::var("SIM_SHOW") {
        let key = ServiceId::new("public", "DEFAULT_GROUP", &svc);
        for (i, node) in sim.nodes.iter().enumerate() {
            println!(
                "node {i} {:?}: {:?}",
                node.healthy,
                node.store.datum(key.full_key())
            );
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let trace = |seed| {
        let mut sim = Sim::new(seed, 4, FAULTS);
        let _ = sim.run(60_000, 20_000);
        (sim.trace.clone(), sim.holdings(0))
    };
    assert_eq!(trace(7), trace(7));
}

/// Seed 1168 (seed 1987, then 30823, until the per-service expiry timers
/// and then the slowly rolled-out member lists moved the seeds' paths;
/// found again by searching the seeds with the bug switch on). In 30823: node 0, cut off from owner node 3 for 39 s, kept
/// client 13's record that node 3 deleted meanwhile, and sent it to the
/// others while they still held the tombstone; without read repair it came
/// back once every tombstone was purged.
#[test]
fn read_repair_keeps_a_cut_off_nodes_stale_record_from_coming_back() {
    let no_repair = Bugs {
        no_read_repair: true,
        ..Bugs::default()
    };
    let e = run_seed_with(1168, no_repair).expect_err("seed 1168 without read repair");
    assert!(e.contains("deregistered client 8 is back"), "{e}");
    run_seed(1168).expect("seed 1168 with read repair");
}
