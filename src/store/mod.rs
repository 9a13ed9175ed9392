//! One shard's slice of the registry: a state machine without I/O.
//!
//! Every entry point takes `now_ms`; nothing here reads a clock, touches a
//! socket or knows about other shards. The shard that owns this `Store`
//! is the only thread that ever touches it.

pub mod datum;
pub mod expiry;
pub mod instance;
pub mod instances;
pub mod journal;
pub mod render;
pub mod replica;
pub mod service;
pub mod view;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::distro::hlc::{Hlc, Version};
use crate::reply::Reply;
use expiry::TimerWheel;
use instance::{Instance, InstanceAddr, InstanceData, InstanceSpec, Metadata, Timeouts};
use service::{ListVariant, Service, ServiceId, Tomb};

/// What a beat JSON adds to a beat: enough to register the instance when it
/// is unknown. (A beat never changes a known instance's fields.)
#[derive(Debug, Clone, PartialEq)]
pub struct BeatInfo {
    pub weight: f64,
    pub ephemeral: bool,
    pub metadata: Metadata,
}

/// A validated command for the shard that owns `svc`. `Send`, so that it
/// can cross cores.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Register {
        svc: ServiceId,
        spec: InstanceSpec,
    },
    /// `PUT /instance`: set what was supplied; create when absent unless
    /// `must_exist` (the Java client's semantics).
    Update {
        svc: ServiceId,
        addr: InstanceAddr,
        change: InstanceChange,
        must_exist: bool,
    },
    /// `PATCH /instance`: set what was supplied; the instance must exist.
    Patch {
        svc: ServiceId,
        addr: InstanceAddr,
        change: InstanceChange,
    },
    Deregister {
        svc: ServiceId,
        addr: InstanceAddr,
        /// The request named the instance persistent (`ephemeral=false`,
        /// a `PersistentInstanceRequest`): where this node does not hold
        /// it, its tombstone is of the persistent kind (kept as long as a
        /// persistent instance's), so that an older copy arriving after
        /// the short TTL cannot bring it back.
        persistent: bool,
    },
    Beat {
        svc: ServiceId,
        addr: InstanceAddr,
        beat: Option<BeatInfo>,
    },
    List {
        svc: ServiceId,
        variant: ListVariant,
    },
    GetInstance {
        svc: ServiceId,
        addr: InstanceAddr,
    },
    CreateService {
        svc: ServiceId,
        change: ServiceChange,
    },
    UpdateService {
        svc: ServiceId,
        change: ServiceChange,
    },
    DeleteService {
        svc: ServiceId,
    },
    GetService {
        svc: ServiceId,
    },
    /// What a gRPC connection publishes in a service (one publisher per
    /// connection and service, NACOS2.md 3): `release` its earlier
    /// instances that are still its own, then register `specs` bound to
    /// `conn`. A deregister is a publish of nothing.
    Publish {
        svc: ServiceId,
        conn: std::sync::Arc<instance::Lease>,
        specs: Vec<InstanceSpec>,
        release: Vec<InstanceAddr>,
    },
}

impl Op {
    /// Reads and beats: what a read view may answer on any core.
    pub fn reads_view(&self) -> bool {
        matches!(
            self,
            Op::List { .. } | Op::GetInstance { .. } | Op::GetService { .. } | Op::Beat { .. }
        )
    }

    /// What `--auth` checks this command for: reads need `r`; writes and
    /// beats need `w`.
    pub fn auth_action(&self) -> crate::auth::Action {
        match self {
            Op::List { .. } | Op::GetInstance { .. } | Op::GetService { .. } => {
                crate::auth::Action::Read
            }
            _ => crate::auth::Action::Write,
        }
    }

    pub fn service(&self) -> &ServiceId {
        match self {
            Op::Register { svc, .. }
            | Op::Update { svc, .. }
            | Op::Patch { svc, .. }
            | Op::Deregister { svc, .. }
            | Op::Beat { svc, .. }
            | Op::List { svc, .. }
            | Op::GetInstance { svc, .. }
            | Op::CreateService { svc, .. }
            | Op::UpdateService { svc, .. }
            | Op::DeleteService { svc }
            | Op::GetService { svc }
            | Op::Publish { svc, .. } => svc,
        }
    }
}

/// Fields of an instance that an update or a patch may set; `None` keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceChange {
    pub weight: Option<f64>,
    pub healthy: Option<bool>,
    pub enabled: Option<bool>,
    pub ephemeral: Option<bool>,
    pub metadata: Option<Metadata>,
}

/// Fields of a service that a create or an update may set; `None` keeps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceChange {
    pub protect_threshold: Option<f64>,
    pub metadata: Option<Metadata>,
    pub selector: Option<serde_json::Value>,
}

/// The result of applying an op.
#[derive(Debug)]
pub struct Applied {
    pub reply: Reply,
    /// The service's visible state changed (push subscribers must hear).
    pub changed: bool,
}

/// Counts kept up to date for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub services: usize,
    pub instances: usize,
}

/// The versions one shard writes: its clock and its writer id. A field of
/// its own so that it can be used while a service is borrowed.
#[derive(Debug, Default)]
struct Stamp {
    clock: Hlc,
    /// This node and shard, the tie-breaker of versions.
    writer: u64,
}

impl Stamp {
    /// A new version for a local state change.
    fn next(&mut self, now_ms: u64) -> Version {
        Version {
            hlc: self.clock.tick(now_ms),
            writer: self.writer,
        }
    }
}

/// A service read through another core gets its view built by such a read
/// only once it has not changed for this long: a service under a stream
/// of writes is read through its owner instead of being copied for every
/// read between two writes. (Lists build it at once: they render anyway.)
pub const VIEW_BUILD_QUIET_MS: u64 = 50;

/// A map or queue that holds less than a quarter of its room gives the
/// rest back (down to twice what it holds), so that memory goes when
/// instances and tombstones do.
const ROOM_SLACK: usize = 4;
/// Maps this small are never shrunk.
const ROOM_KEEP: usize = 8;

/// Whether a map or queue of `capacity` holding `len` is mostly empty
/// room, to be shrunk to `2 * len` (see `ROOM_SLACK`).
pub(crate) fn mostly_room(capacity: usize, len: usize) -> bool {
    capacity > ROOM_SLACK * len.max(ROOM_KEEP)
}

/// Keeps in `next` the earliest of the deadlines it is given.
fn earliest(next: &mut Option<u64>, at: u64) {
    *next = Some(next.map_or(at, |n| n.min(at)));
}

/// Shrinks `map` when it is mostly empty room (see `ROOM_SLACK`).
pub(crate) fn shrink_sparse<K: Eq + std::hash::Hash, V>(map: &mut Map<K, V>) {
    if mostly_room(map.capacity(), map.len()) {
        map.shrink_to(2 * map.len());
    }
}

/// How long a tombstone is kept: `ttl` for an ephemeral instance's.
fn ttl_of(ttl: u64, persistent: bool) -> u64 {
    if persistent {
        PERSISTENT_TOMBSTONE_TTL_MS.max(ttl)
    } else {
        ttl
    }
}

/// Files the purge of an instance's new tombstone: a persistent one in
/// the long queue, an ephemeral one under its service's purge timer (armed
/// anew only when this tombstone is due before the armed one).
fn file_purge(
    timers: &mut TimerWheel<Rc<str>>,
    long: &mut VecDeque<Purge>,
    s: &mut Service,
    inst_key: Arc<str>,
    tomb: &Tomb,
) {
    if tomb.persistent {
        long.push_back((
            tomb.purge_at_ms,
            s.key.clone(),
            Some(inst_key),
            tomb.version,
        ));
    } else if s.purge_due.is_none_or(|d| tomb.purge_at_ms < d) {
        timers.insert(tomb.purge_at_ms, s.key.clone());
        s.purge_due = Some(tomb.purge_at_ms);
    }
}

/// Tombstones outlive the delete timeout by two verify rounds (5 s each).
pub const TOMBSTONE_VERIFY_ROUNDS_MS: u64 = 2 * 5_000;

/// Tombstones of persistent instances and of services are kept this long
/// (ephemeral ones: the tombstone TTL, 40 s by default). A clustered node
/// that restarts from its store merges back the persistent records it
/// saved in this window as they are; only older ones wait for a peer to
/// confirm them (docs/durability.md). Persistent deletes are rare: a day
/// of them is small.
pub const PERSISTENT_TOMBSTONE_TTL_MS: u64 = 24 * 3_600_000;

/// At most this many persistent and service tombstones per shard wait for
/// their purge; past it the oldest go early (counted in
/// `registry_tombstones_purged_early_total`).
pub const PERSISTENT_TOMBSTONES_MAX: usize = 1_000_000;

/// Hash maps keyed by names from the network: foldhash is several times
/// faster than SipHash on short strings and is seeded per process.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A tombstone's purge: (at, service key, instance key or None for the
/// service, the tombstone's version).
type Purge = (u64, Rc<str>, Option<Arc<str>>, Version);

/// One shard's services.
pub struct Store {
    services: Map<Rc<str>, Service>,
    /// Expiry timers, one a service with instances kept by beats (see
    /// `arm`), carrying the service's key.
    timers: TimerWheel<Rc<str>>,
    defaults: Timeouts,
    instances: usize,
    /// Versions every state change; observes versions merged in.
    stamp: Stamp,
    /// How long tombstones are kept (docs/distro.md: two verify rounds
    /// plus the delete timeout).
    tombstone_ttl_ms: u64,
    /// Purge timers of ephemeral instances' tombstones, one a service
    /// (`file_purge`), carrying the service's key: each tombstone keeps its
    /// own purge time (`Tomb::purge_at_ms`). A queue entry a tombstone
    /// cost 48 bytes more, 48 MB after a million deregisters.
    purge_timers: TimerWheel<Rc<str>>,
    /// Persistent instances' and services' tombstones in creation order,
    /// so in purge order (`PERSISTENT_TOMBSTONE_TTL_MS` for all, at most
    /// `PERSISTENT_TOMBSTONES_MAX`): (purge at, service key, instance key,
    /// the tombstone's version: a newer tombstone of the same key outlives
    /// an older entry; found by the simulation).
    purges_long: VecDeque<Purge>,
    /// Entries `purges_long` gave up before their time (the cap).
    purged_early: u64,
    /// `PERSISTENT_TOMBSTONES_MAX` (smaller in tests).
    purges_long_max: usize,
    /// Deleted services: their id and the version of the delete.
    service_tombstones: Map<Rc<str>, (ServiceId, Version)>,
    /// Versions from peers refused for being too far in the future
    /// (`hlc::DRIFT_MAX_MS`).
    future_versions_refused: u64,
    /// Which connection leases stay (clustered nodes; None: all).
    lease_policy: Option<instance::LeasePolicy>,
    /// Services a merge changed in a way only this node knows of (see
    /// `take_reasserted`): to replicate.
    reasserted: Vec<String>,
    /// Keys changed since the last save; None when nothing is saved.
    journal: Option<journal::Journal>,
    /// Set by a merge that met an older copy (`merge_from_peer`).
    merged_stale: bool,
    /// Restored records a clustered node waits to see confirmed by its
    /// startup snapshot (`journal::Unconfirmed`).
    unconfirmed: Option<journal::Unconfirmed>,
}

/// The 404 of an instance detail.
pub fn instance_not_found(svc: &ServiceId, addr: &InstanceAddr) -> Reply {
    Reply::not_found(format!(
        "instance not found: {}#{}",
        addr.key(),
        svc.grouped()
    ))
}

pub fn beat_reply(code: u32, interval_ms: u64) -> Reply {
    // The answer to nearly every beat: no formatting, no allocation.
    if code == 10200 && interval_ms == 5_000 {
        return Reply::json(Bytes::from_static(
            br#"{"clientBeatInterval":5000,"code":10200,"lightBeatEnabled":true}"#,
        ));
    }
    let body = if code == 10200 {
        format!(r#"{{"clientBeatInterval":{interval_ms},"code":10200,"lightBeatEnabled":true}}"#)
    } else {
        format!(r#"{{"clientBeatInterval":{interval_ms},"code":{code}}}"#)
    };
    Reply::json(body)
}

impl Store {
    pub fn new(defaults: Timeouts, expiry_tick_ms: u64, now_ms: u64) -> Store {
        Store {
            services: Map::default(),
            timers: TimerWheel::new(expiry_tick_ms, now_ms),
            defaults,
            instances: 0,
            stamp: Stamp::default(),
            tombstone_ttl_ms: TOMBSTONE_VERIFY_ROUNDS_MS + defaults.delete_timeout_ms,
            purge_timers: TimerWheel::new(expiry_tick_ms, now_ms),
            purges_long: VecDeque::new(),
            purged_early: 0,
            purges_long_max: PERSISTENT_TOMBSTONES_MAX,
            service_tombstones: Map::default(),
            future_versions_refused: 0,
            lease_policy: None,
            reasserted: Vec::new(),
            journal: None,
            merged_stale: false,
            unconfirmed: None,
        }
    }

    /// Sets the writer id (node and shard) that versions carry.
    pub fn set_writer(&mut self, writer: u64) {
        self.stamp.writer = writer;
    }

    /// A new version for a local state change.
    fn next_version(&mut self, now_ms: u64) -> Version {
        self.stamp.next(now_ms)
    }

    /// Replaces a deleted instance's record by a tombstone.
    /// `was`: the version of the instance just removed, if one was.
    fn bury(
        &mut self,
        svc_key: &Rc<str>,
        inst_key: Arc<str>,
        was: Option<Version>,
        persistent: bool,
        now_ms: u64,
    ) {
        let version = self.next_version(now_ms);
        let tomb = Tomb::new(version, persistent, now_ms, self.tombstone_ttl_ms);
        self.bury_at(svc_key, inst_key, was, tomb);
    }

    /// Leaves a tombstone for an instance, purged at `tomb.purge_at_ms`.
    fn bury_at(&mut self, svc_key: &Rc<str>, inst_key: Arc<str>, was: Option<Version>, tomb: Tomb) {
        if let Some(s) = self.services.get_mut(svc_key) {
            let prev = s.tombstones.insert(inst_key.clone(), tomb);
            let old = was.or(prev.map(|t| t.version));
            journal::note_instance(&mut self.journal, svc_key, &inst_key, old);
            file_purge(
                &mut self.purge_timers,
                &mut self.purges_long,
                s,
                inst_key,
                &tomb,
            );
        }
    }

    /// Queues the purge of a service's tombstone (the long kind).
    fn schedule_service_purge(&mut self, svc_key: Rc<str>, version: Version, now_ms: u64) {
        let at = now_ms + ttl_of(self.tombstone_ttl_ms, true);
        self.purges_long.push_back((at, svc_key, None, version));
    }

    #[cfg(test)]
    pub(crate) fn set_persistent_tombstones_max(&mut self, max: usize) {
        self.purges_long_max = max;
    }

    /// Tombstones of the long kind purged before their time (the cap).
    pub fn tombstones_purged_early(&self) -> u64 {
        self.purged_early
    }

    /// Tombstones (of instances and services) currently kept.
    pub fn tombstones(&self) -> usize {
        self.services
            .values()
            .map(|s| s.tombstones.len())
            .sum::<usize>()
            + self.service_tombstones.len()
    }

    /// Drops the tombstones older than the TTL. Cost: what is purged, and
    /// a look at the other tombstones of a service that has some due.
    fn purge(&mut self, now_ms: u64) {
        let mut purged = 0;
        loop {
            let q = &mut self.purges_long;
            let early = q.len() > self.purges_long_max;
            match q.front() {
                Some((at, ..)) if *at <= now_ms || early => {}
                _ => break,
            }
            let (at, svc_key, inst_key, version) = q.pop_front().expect("front exists");
            if at > now_ms {
                self.purged_early += 1;
            }
            purged += 1;
            self.purge_one(svc_key, inst_key, version);
        }
        let q = &mut self.purges_long;
        if purged > 0 && mostly_room(q.capacity(), q.len()) {
            q.shrink_to(2 * q.len());
        }
        let mut fired = Vec::new();
        self.purge_timers
            .advance(now_ms, |due, svc_key| fired.push((due, svc_key)));
        for (due, svc_key) in fired {
            let Some(s) = self.services.get_mut(&svc_key) else {
                continue;
            };
            if s.purge_due != Some(due) {
                continue; // an earlier tombstone armed a newer timer since
            }
            s.purge_due = None;
            let mut next: Option<u64> = None;
            let before = s.tombstones.len();
            let journal = &mut self.journal;
            s.tombstones.retain(|k, t| {
                if t.persistent {
                    return true; // in `purges_long`
                }
                if t.purge_at_ms <= now_ms {
                    journal::note_instance(journal, &svc_key, k, Some(t.version));
                    return false;
                }
                earliest(&mut next, t.purge_at_ms);
                true
            });
            if s.tombstones.len() < before {
                shrink_sparse(&mut s.tombstones);
                // The checksum covers tombstones; lists do not.
                s.revision += 1;
            }
            if let Some(at) = next {
                self.purge_timers.insert(at, svc_key);
                s.purge_due = Some(at);
            }
        }
    }

    /// Drops a tombstone if it is still the one of `version` (a newer
    /// tombstone of the same key outlives an older entry).
    fn purge_one(&mut self, svc_key: Rc<str>, inst_key: Option<Arc<str>>, version: Version) {
        match inst_key {
            Some(k) => {
                if let Some(s) = self.services.get_mut(&svc_key) {
                    if s.tombstones.get(&k).map(|t| t.version) == Some(version) {
                        journal::note_instance(&mut self.journal, &svc_key, &k, Some(version));
                        s.tombstones.remove(&k);
                        shrink_sparse(&mut s.tombstones);
                        // The checksum covers tombstones; lists do not.
                        s.revision += 1;
                    }
                }
            }
            None => {
                if matches!(self.service_tombstones.get(&svc_key), Some((_, v)) if *v == version) {
                    self.service_tombstones.remove(&svc_key);
                    journal::note(&mut self.journal, &svc_key);
                }
            }
        }
    }

    /// Versions from peers refused for being too far ahead of this clock.
    pub fn future_versions_refused(&self) -> u64 {
        self.future_versions_refused
    }

    pub fn counts(&self) -> Counts {
        Counts {
            services: self.services.len(),
            instances: self.instances,
        }
    }

    /// Expiry timers armed (at most one per ephemeral instance).
    pub fn timers_armed(&self) -> usize {
        self.timers.len()
    }

    pub fn service(&self, full_key: &str) -> Option<&Service> {
        self.services.get(full_key).filter(|s| !s.hidden)
    }

    /// For a core that read `full_key` through this owner: the service's
    /// view slot, with a view in it unless the service changed within
    /// `VIEW_BUILD_QUIET_MS`. None when the service does not exist.
    pub fn share_view(&mut self, full_key: &str, now_ms: u64) -> Option<Arc<view::ViewSlot>> {
        let s = self.services.get_mut(full_key).filter(|s| !s.hidden)?;
        if !s.has_view() && s.modified_ms + VIEW_BUILD_QUIET_MS <= now_ms {
            s.view();
        }
        Some(s.slot.clone())
    }

    /// Grouped-less names of the services in `namespace` and `group`.
    pub fn service_names(&self, namespace: &str, group: &str) -> Vec<String> {
        self.services
            .values()
            .filter(|s| !s.hidden && s.id.namespace() == namespace && s.id.group() == group)
            .map(|s| s.id.name().to_string())
            .collect()
    }

    fn service_mut(&mut self, id: &ServiceId, now_ms: u64) -> &mut Service {
        let key = id.full_key();
        if !self.services.contains_key(key) {
            let s = Service::new(id.clone(), now_ms);
            journal::note(&mut self.journal, &s.key);
            self.services.insert(s.key.clone(), s);
        }
        self.services.get_mut(key).expect("inserted above")
    }

    /// Makes sure the service's expiry timer fires by the instance's next
    /// deadline, if beats keep it (ephemeral, not bound to a connection).
    /// One timer a service, armed at the earliest deadline of its
    /// instances (or before it: a beat only moves a deadline later, and
    /// the timer that finds nothing due re-arms at the true earliest).
    /// An earlier deadline arms a new timer; the later one, when it fires,
    /// finds `expiry_due` no longer its own and does nothing.
    fn arm(
        timers: &mut TimerWheel<Rc<str>>,
        svc_key: &Rc<str>,
        expiry_due: &mut Option<u64>,
        inst: &Instance,
    ) {
        if inst.ephemeral && inst.conn.is_none() {
            let due = inst.last_beat_ms + inst.timeouts.get().unhealthy_timeout_ms;
            if expiry_due.is_none_or(|d| due < d) {
                timers.insert(due, svc_key.clone());
                *expiry_due = Some(due);
            }
        }
    }

    /// Inserts or replaces an instance; `conn`: the gRPC connection that
    /// publishes it (None: registered over HTTP, kept by beats).
    fn put(
        &mut self,
        svc: &ServiceId,
        spec: InstanceSpec,
        conn: Option<std::sync::Arc<instance::Lease>>,
        now_ms: u64,
    ) {
        let defaults = self.defaults;
        let version = self.next_version(now_ms);
        self.service_tombstones.remove(svc.full_key());
        let s = self.service_mut(svc, now_ms);
        s.hidden = false;
        let key = spec.addr.key();
        let timeouts = defaults.for_metadata(&spec.metadata);
        let old = s.instances.get(key.as_str());
        let durable = !spec.ephemeral || old.is_some_and(|i| !i.ephemeral);
        let inst = Instance {
            data: Arc::new(InstanceData {
                key: Arc::from(key),
                weight: spec.weight,
                healthy: spec.healthy,
                enabled: spec.enabled,
                ephemeral: spec.ephemeral,
                metadata: spec.metadata,
                timeouts: timeouts.into(),
            }),
            last_beat_ms: now_ms,
            version,
            conn,
        };
        let svc_key = s.key.clone();
        if durable {
            journal::note_durable(&mut self.journal);
        }
        let s = self.services.get_mut(&*svc_key).expect("exists");
        Self::arm(&mut self.timers, &svc_key, &mut s.expiry_due, &inst);
        let old = s.instances.get(&inst.key).map(|i| i.version);
        let old = old.or_else(|| s.tombstones.get(&inst.key).map(|t| t.version));
        journal::note_instance(&mut self.journal, &svc_key, &inst.key, old);
        s.tombstones.remove(&inst.key);
        if s.instances.insert(inst).is_none() {
            self.instances += 1;
        }
        s.touch(now_ms);
    }

    fn change(
        &mut self,
        svc: &ServiceId,
        addr: &InstanceAddr,
        change: InstanceChange,
        now_ms: u64,
    ) -> bool {
        let defaults = self.defaults;
        let version = self.stamp.next(now_ms);
        let Some(s) = self.services.get_mut(svc.full_key()) else {
            return false;
        };
        let svc_key = s.key.clone();
        let Some(inst) = s.instances.get_mut(addr.key().as_str()) else {
            return false;
        };
        journal::note_instance(&mut self.journal, &svc_key, &inst.key, Some(inst.version));
        if !inst.ephemeral || change.ephemeral == Some(false) {
            journal::note_durable(&mut self.journal);
        }
        inst.version = version;
        if let Some(w) = change.weight {
            inst.weight = w;
        }
        if let Some(h) = change.healthy {
            inst.healthy = h;
        }
        if let Some(e) = change.enabled {
            inst.enabled = e;
        }
        if let Some(e) = change.ephemeral {
            inst.ephemeral = e;
        }
        if let Some(m) = change.metadata {
            inst.timeouts = defaults.for_metadata(&m).into();
            inst.metadata = m;
        }
        Self::arm(&mut self.timers, &svc_key, &mut s.expiry_due, inst);
        s.touch(now_ms);
        true
    }

    /// Removes `addr` from `svc` if the connection `conn` still owns it
    /// (an HTTP register or another connection may have taken it since).
    fn release(
        &mut self,
        svc: &ServiceId,
        addr: &InstanceAddr,
        conn: &instance::Lease,
        now_ms: u64,
    ) -> bool {
        let Some(s) = self.services.get_mut(svc.full_key()) else {
            return false;
        };
        let key = addr.key();
        if s.instances
            .get(key.as_str())
            .and_then(|i| i.conn.as_deref())
            != Some(conn)
        {
            return false;
        }
        self.remove_instance(svc, &key, now_ms)
    }

    /// Removes an instance and leaves its tombstone; false when absent.
    fn remove_instance(&mut self, svc: &ServiceId, key: &str, now_ms: u64) -> bool {
        let Some(s) = self.services.get_mut(svc.full_key()) else {
            return false;
        };
        let Some(inst) = s.instances.remove(key) else {
            return false;
        };
        if !inst.ephemeral {
            journal::note_durable(&mut self.journal);
        }
        self.instances -= 1;
        s.touch(now_ms);
        let svc_key = s.key.clone();
        let was = Some(inst.version);
        self.bury(&svc_key, inst.key.clone(), was, !inst.ephemeral, now_ms);
        true
    }

    /// Applies one command.
    pub fn apply(&mut self, op: Op, now_ms: u64) -> Applied {
        let unchanged = |reply| Applied {
            reply,
            changed: false,
        };
        let changed = |reply| Applied {
            reply,
            changed: true,
        };
        match op {
            Op::Register { svc, spec } => {
                self.put(&svc, spec, None, now_ms);
                changed(Reply::ok())
            }
            Op::Update {
                svc,
                addr,
                change,
                must_exist,
            } => {
                if self.change(&svc, &addr, change.clone(), now_ms) {
                    return changed(Reply::ok());
                }
                if must_exist {
                    return unchanged(Reply::bad_request(format!(
                        "instance not exist: {}#{}",
                        addr.key(),
                        svc.grouped()
                    )));
                }
                let spec = InstanceSpec {
                    addr,
                    weight: change.weight.unwrap_or(1.0),
                    healthy: change.healthy.unwrap_or(true),
                    enabled: change.enabled.unwrap_or(true),
                    ephemeral: change.ephemeral.unwrap_or(true),
                    metadata: change.metadata.unwrap_or_default(),
                };
                self.put(&svc, spec, None, now_ms);
                changed(Reply::ok())
            }
            Op::Patch { svc, addr, change } => {
                if self.change(&svc, &addr, change, now_ms) {
                    changed(Reply::ok())
                } else {
                    unchanged(Reply::bad_request("instance not found"))
                }
            }
            Op::Deregister {
                svc,
                addr,
                persistent,
            } => {
                if !self.services.contains_key(svc.full_key()) {
                    // The service has not reached this node yet (or never
                    // existed): a hidden one keeps the tombstone.
                    let s = self.service_mut(&svc, now_ms);
                    s.hidden = true;
                }
                if self.remove_instance(&svc, &addr.key(), now_ms) {
                    return changed(Reply::ok());
                }
                let Some(s) = self.services.get_mut(svc.full_key()) else {
                    return unchanged(Reply::ok());
                };
                // Unknown here, perhaps not yet replicated here: a tombstone
                // all the same, so that an older copy arriving later does
                // not bring the instance back (found by the simulation).
                let svc_key = s.key.clone();
                let key = addr.key();
                // Of the long kind unless the request says ephemeral and
                // this node deleted an ephemeral copy itself: of an
                // instance it never held it cannot know the kind, and a
                // persistent copy may sit on the disk of a node that is
                // down (acknowledged there, a crash before it replicated).
                // A short tombstone would be purged before that node is
                // back with it (simulation seed 29747).
                let long =
                    persistent || s.tombstones.get(key.as_str()).is_none_or(|t| t.persistent);
                s.touch(now_ms);
                self.bury(&svc_key, Arc::from(key), None, long, now_ms);
                changed(Reply::ok())
            }
            Op::Beat { svc, addr, beat } => self.beat(svc, addr, beat, now_ms),
            Op::Publish {
                svc,
                conn,
                specs,
                release,
            } => {
                let mut any = false;
                for addr in release {
                    if specs.iter().any(|s| s.addr == addr) {
                        continue; // published again below
                    }
                    any |= self.release(&svc, &addr, &conn, now_ms);
                }
                for spec in specs {
                    self.put(&svc, spec, Some(conn.clone()), now_ms);
                    any = true;
                }
                Applied {
                    reply: Reply::ok(),
                    changed: any,
                }
            }
            Op::List { svc, variant } => {
                let key = svc.full_key();
                match self.services.get_mut(key).filter(|s| !s.hidden) {
                    Some(s) => unchanged(Reply::json(s.view().list(&variant))),
                    None => unchanged(Reply::json(render::list_json(&svc, None, &variant, now_ms))),
                }
            }
            Op::GetInstance { svc, addr } => {
                let found = self
                    .services
                    .get(svc.full_key())
                    .and_then(|s| s.instances.get(addr.key().as_str()));
                match found {
                    Some(inst) => unchanged(Reply::json(render::instance_json(&svc, inst))),
                    None => unchanged(instance_not_found(&svc, &addr)),
                }
            }
            Op::CreateService { svc, change } => {
                if self.service(svc.full_key()).is_some() {
                    return unchanged(Reply::bad_request(format!(
                        "specified service already exists, serviceName : {}",
                        svc.grouped()
                    )));
                }
                let version = self.next_version(now_ms);
                self.service_tombstones.remove(svc.full_key());
                let s = self.service_mut(&svc, now_ms);
                s.hidden = false;
                Self::set_service(s, change);
                s.fields_version = version;
                s.touch(now_ms);
                let key = s.key.clone();
                journal::note(&mut self.journal, &key);
                journal::note_durable(&mut self.journal);
                changed(Reply::ok())
            }
            Op::UpdateService { svc, change } => {
                match self.services.get_mut(svc.full_key()).filter(|s| !s.hidden) {
                    Some(s) => {
                        Self::set_service(s, change);
                        s.fields_version = self.stamp.next(now_ms);
                        s.touch(now_ms);
                        journal::note(&mut self.journal, &s.key);
                        journal::note_durable(&mut self.journal);
                        changed(Reply::ok())
                    }
                    None => unchanged(Reply::not_found(format!(
                        "service not found: {}",
                        svc.grouped()
                    ))),
                }
            }
            Op::DeleteService { svc } => {
                let key = svc.full_key();
                match self.service(key) {
                    None => unchanged(Reply::not_found(format!(
                        "service not found: {}",
                        svc.grouped()
                    ))),
                    Some(s) if !s.instances.is_empty() => unchanged(Reply::bad_request(format!(
                        "service {} is not empty, can't be deleted; deregister its instances first",
                        svc.grouped()
                    ))),
                    Some(_) => {
                        // The service's instance tombstones go with it: the
                        // service tombstone is newer than all of them.
                        let version = self.next_version(now_ms);
                        if let Some(gone) = self.services.remove(key) {
                            journal::note_cleared(&mut self.journal, &gone);
                            journal::note_durable(&mut self.journal);
                            self.service_tombstones
                                .insert(gone.key.clone(), (gone.id.clone(), version));
                            self.schedule_service_purge(gone.key.clone(), version, now_ms);
                        }
                        changed(Reply::ok())
                    }
                }
            }
            Op::GetService { svc } => {
                match self.services.get_mut(svc.full_key()).filter(|s| !s.hidden) {
                    Some(s) => unchanged(Reply::json(render::service_json(&s.view()))),
                    None => unchanged(Reply::not_found(format!(
                        "service not found: {}",
                        svc.grouped()
                    ))),
                }
            }
        }
    }

    fn set_service(s: &mut Service, change: ServiceChange) {
        if let Some(t) = change.protect_threshold {
            s.protect_threshold = t;
        }
        if let Some(m) = change.metadata {
            s.metadata = m;
        }
        if let Some(sel) = change.selector {
            s.selector = sel;
        }
    }

    fn beat(
        &mut self,
        svc: ServiceId,
        addr: InstanceAddr,
        beat: Option<BeatInfo>,
        now_ms: u64,
    ) -> Applied {
        let key = svc.full_key();
        if let Some(s) = self.services.get_mut(key) {
            let svc_key = s.key.clone();
            if let Some(inst) = s.instances.get_mut(addr.key().as_str()) {
                inst.last_beat_ms = now_ms;
                let interval = inst.timeouts.get().beat_interval_ms;
                Self::arm(&mut self.timers, &svc_key, &mut s.expiry_due, inst);
                let revived = !inst.healthy;
                if revived {
                    let old = Some(inst.version);
                    journal::note_instance(&mut self.journal, &svc_key, &inst.key, old);
                    inst.healthy = true;
                    inst.version = self.stamp.next(now_ms);
                    s.touch(now_ms);
                }
                return Applied {
                    reply: beat_reply(10200, interval),
                    changed: revived,
                };
            }
        }
        match beat {
            Some(b) => {
                let interval = self.defaults.for_metadata(&b.metadata).beat_interval_ms;
                let spec = InstanceSpec {
                    addr,
                    weight: b.weight,
                    healthy: true,
                    enabled: true,
                    ephemeral: b.ephemeral,
                    metadata: b.metadata,
                };
                self.put(&svc, spec, None, now_ms);
                Applied {
                    reply: beat_reply(10200, interval),
                    changed: true,
                }
            }
            None => Applied {
                reply: beat_reply(20404, self.defaults.beat_interval_ms),
                changed: false,
            },
        }
    }

    /// Fires the expiry timers due by `now_ms`: instances past their
    /// unhealthy timeout turn unhealthy, past their delete timeout are
    /// removed. Pushes the keys of the services that changed.
    pub fn expire(&mut self, now_ms: u64, changed: &mut Vec<Rc<str>>) {
        self.expire_owned(now_ms, changed, |_| true)
    }

    /// `expire` for a clustered node: only services this node owns
    /// (`owns(grouped name)`) are expired; a replica's timers are pushed
    /// back by a full unhealthy timeout and decide again then (by then the
    /// owner has replicated its own decision, or this node has become the
    /// owner and granted the ownership grace).
    pub fn expire_owned(
        &mut self,
        now_ms: u64,
        changed: &mut Vec<Rc<str>>,
        owns: impl Fn(&str) -> bool,
    ) {
        self.purge(now_ms);
        let mut fired = Vec::new();
        self.timers
            .advance(now_ms, |due, svc_key| fired.push((due, svc_key)));
        let mut gone = Vec::new();
        for (due, svc_key) in fired {
            let Store {
                services,
                timers,
                stamp,
                journal,
                ..
            } = self;
            let Some(s) = services.get_mut(&svc_key) else {
                continue;
            };
            if s.expiry_due != Some(due) {
                // An earlier deadline armed a newer timer since.
                continue;
            }
            s.expiry_due = None;
            let owned = owns(s.id.grouped());
            let mut next: Option<u64> = None;
            let mut turned = false;
            for inst in s.instances.values_mut() {
                if !inst.ephemeral || inst.conn.is_some() {
                    // Persistent, or alive as long as its gRPC connection.
                    continue;
                }
                let t = inst.timeouts.get();
                if !owned {
                    // A replica's instances decide again a full unhealthy
                    // timeout from now.
                    let at = now_ms + t.unhealthy_timeout_ms;
                    earliest(&mut next, at);
                    continue;
                }
                let silent_ms = now_ms.saturating_sub(inst.last_beat_ms);
                if silent_ms >= t.delete_timeout_ms {
                    tracing::info!(service = %svc_key, instance = %inst.key, silent_ms, "instance expired, removed");
                    gone.push(inst.key.clone());
                    continue;
                }
                let at = if silent_ms >= t.unhealthy_timeout_ms {
                    if inst.healthy {
                        tracing::info!(service = %svc_key, instance = %inst.key, silent_ms, "instance unhealthy");
                        inst.healthy = false;
                        let old = Some(inst.version);
                        inst.version = stamp.next(now_ms);
                        journal::note_instance(journal, &svc_key, &inst.key, old);
                        turned = true;
                    }
                    inst.last_beat_ms + t.delete_timeout_ms
                } else {
                    inst.last_beat_ms + t.unhealthy_timeout_ms
                };
                earliest(&mut next, at);
            }
            if let Some(at) = next {
                timers.insert(at, svc_key.clone());
                s.expiry_due = Some(at);
            }
            if !turned && gone.is_empty() {
                continue;
            }
            for inst_key in gone.drain(..) {
                let Some(s) = self.services.get_mut(&svc_key) else {
                    break;
                };
                let was = s.instances.remove(&inst_key).map(|i| i.version);
                self.instances -= usize::from(was.is_some());
                self.bury(&svc_key, inst_key, was, false, now_ms);
            }
            if let Some(s) = self.services.get_mut(&svc_key) {
                s.touch(now_ms);
            }
            changed.push(svc_key);
        }
    }
}

#[cfg(test)]
mod tests;
