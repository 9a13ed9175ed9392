//! What a store changed since it was last saved (issue 12, docs/durability.md).
//!
//! The store notes the keys of the records a change touched; `take_changes`
//! resolves them into rows of their current state, so that a burst of
//! writes to one record saves it once. Rows share the instances' data
//! (`Arc<InstanceData>`) and are encoded by whoever writes them. Pure: no
//! I/O, no clock.

use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::datum::{Datum, FieldsRecord, InstanceRecord};
use super::instance::{InstanceAddr, InstanceData, Lease, Metadata};
use super::service::ServiceId;
use super::Store;
use crate::distro::hlc::Version;

/// Noted keys a shard lets pile up before it saves them without waiting
/// for its tick.
pub const JOURNAL_ENTRIES_MAX: usize = 16_384;

/// Keys noted since the last save.
#[derive(Debug, Default)]
pub struct Journal {
    /// (service key, instance key; None: the service's own row).
    entries: Vec<(Rc<str>, Option<Arc<str>>)>,
    /// Services removed whole since the last save: every row of their
    /// instances goes before anything is written for them.
    cleared: Vec<Rc<str>>,
    /// A change in it is to persistent data: saved and synced before it
    /// is acknowledged.
    durable: bool,
}

/// Notes a record to save (a free function: the store's maps are
/// borrowed where it is called).
pub(crate) fn note(j: &mut Option<Journal>, svc: &Rc<str>, inst: Option<&Arc<str>>) {
    if let Some(j) = j {
        j.entries.push((svc.clone(), inst.cloned()));
    }
}

/// Notes a service removed with all its instances.
pub(crate) fn note_cleared(j: &mut Option<Journal>, svc: &Rc<str>) {
    if let Some(j) = j {
        j.cleared.push(svc.clone());
        j.entries.push((svc.clone(), None));
    }
}

/// Marks the journal as holding a change that must be synced before its
/// reply.
pub(crate) fn note_durable(j: &mut Option<Journal>) {
    if let Some(j) = j {
        j.durable = true;
    }
}

/// A service's own row: its id and fields, or its tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub namespace: String,
    pub group: String,
    pub name: String,
    pub fields: FieldsRecord,
    pub deleted: Option<Version>,
}

/// An instance's row.
#[derive(Debug, Clone)]
pub enum InstanceRow {
    Live {
        data: Arc<InstanceData>,
        version: Version,
        lease: Option<Lease>,
    },
    Tombstone(super::service::Tomb),
}

/// `datum::WireRecord`'s order (the same array a datum carries).
#[derive(Serialize)]
struct WireRow<'a>(
    &'a str,
    u16,
    &'a str,
    f64,
    bool,
    bool,
    bool,
    &'a Metadata,
    u64,
    u64,
    bool,
    #[serde(skip_serializing_if = "Option::is_none")] Option<(&'a str, u64, u64)>,
);

impl InstanceRow {
    /// The row's bytes: a datum record (`InstanceRecord`'s wire form).
    pub fn encode(&self, key: &str, out: &mut Vec<u8>) {
        let empty = Metadata::new();
        let row = match self {
            InstanceRow::Live {
                data,
                version,
                lease,
            } => WireRow(
                &data.addr.ip,
                data.addr.port,
                &data.addr.cluster,
                data.weight,
                data.healthy,
                data.enabled,
                data.ephemeral,
                &data.metadata,
                version.hlc,
                version.writer,
                false,
                lease
                    .as_ref()
                    .map(|l| (l.holder.as_str(), l.boot, l.serial)),
            ),
            InstanceRow::Tombstone(t) => {
                let (ip, port, cluster) = split_key(key);
                let (v, ephemeral) = (t.version, !t.persistent);
                WireRow(
                    ip, port, cluster, 0.0, false, false, ephemeral, &empty, v.hlc, v.writer, true,
                    None,
                )
            }
        };
        serde_json::to_writer(out, &row).expect("a row serializes");
    }
}

/// `ip#port#cluster` into its parts (a key that is not one: all of it
/// the ip).
fn split_key(key: &str) -> (&str, u16, &str) {
    let mut parts = key.splitn(3, '#');
    let ip = parts.next().unwrap_or("");
    match (parts.next().and_then(|p| p.parse().ok()), parts.next()) {
        (Some(port), Some(cluster)) => (ip, port, cluster),
        _ => (key, 0, ""),
    }
}

/// Decodes an instance row saved under `key`.
pub fn decode_instance(key: &str, bytes: &[u8]) -> Result<InstanceRecord, serde_json::Error> {
    let mut r: InstanceRecord = serde_json::from_slice(bytes)?;
    r.key = key.to_string();
    Ok(r)
}

/// One service's rows to write.
#[derive(Debug, Clone)]
pub struct ServiceChanges {
    /// `namespace##group@@name`.
    pub key: String,
    /// Delete every instance row of the service first.
    pub clear: bool,
    /// The service's own row: `Some(Some)` write it, `Some(None)` delete
    /// it, `None` leave it.
    pub row: Option<Option<ServiceRow>>,
    /// Instance rows: `Some` write, `None` delete.
    pub instances: Vec<(Arc<str>, Option<InstanceRow>)>,
}

/// Everything one save writes.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub services: Vec<ServiceChanges>,
    /// Some change must be synced before it is acknowledged.
    pub durable: bool,
    /// The writer's clock when the changes were taken: a restarted node
    /// issues versions above it.
    pub clock: u64,
}

impl Changes {
    /// Rows written or deleted.
    pub fn rows(&self) -> usize {
        self.services
            .iter()
            .map(|s| s.instances.len() + usize::from(s.row.is_some()))
            .sum()
    }
}

/// Where rows are written: the store file's tables, or a map in memory
/// (the simulation's disk, tests).
pub trait RowSink {
    type Error;
    fn put_service(&mut self, key: &str, row: &[u8]) -> Result<(), Self::Error>;
    fn delete_service(&mut self, key: &str) -> Result<(), Self::Error>;
    fn put_instance(&mut self, svc: &str, inst: &str, row: &[u8]) -> Result<(), Self::Error>;
    fn delete_instance(&mut self, svc: &str, inst: &str) -> Result<(), Self::Error>;
    /// Deletes every instance row of `svc`.
    fn clear_instances(&mut self, svc: &str) -> Result<(), Self::Error>;
}

impl Changes {
    /// Writes the rows to `sink`, in order. Returns the rows written.
    pub fn write_to<S: RowSink>(&self, sink: &mut S) -> Result<usize, S::Error> {
        let mut buf = Vec::with_capacity(256);
        for sc in &self.services {
            let key = sc.key.as_str();
            if sc.clear {
                sink.clear_instances(key)?;
            }
            match &sc.row {
                Some(Some(row)) => {
                    buf.clear();
                    serde_json::to_writer(&mut buf, row).expect("a row serializes");
                    sink.put_service(key, &buf)?;
                }
                Some(None) => sink.delete_service(key)?,
                None => {}
            }
            for (inst, row) in &sc.instances {
                match row {
                    Some(r) => {
                        buf.clear();
                        r.encode(inst, &mut buf);
                        sink.put_instance(key, inst, &buf)?;
                    }
                    None => sink.delete_instance(key, inst)?,
                }
            }
        }
        Ok(self.rows())
    }
}

/// A restarted node's clock starts this far past the wall time of its
/// last save, covering versions issued after it and lost in a crash.
pub const CLOCK_RESTART_MARGIN_MS: u64 = 1_000;

/// The clock a restarted node resumes from: above the highest version it
/// saved and past its last save's wall time by `CLOCK_RESTART_MARGIN_MS`.
pub fn resume_clock(saved_clock: u64, saved_wall_ms: u64) -> u64 {
    if saved_wall_ms == 0 {
        return saved_clock;
    }
    saved_clock.max(crate::distro::hlc::pack(
        saved_wall_ms + CLOCK_RESTART_MARGIN_MS,
        0,
    ))
}

/// Rows in memory, sorted as the store file sorts them.
#[derive(Debug, Default, Clone)]
pub struct MemoryRows {
    pub services: std::collections::BTreeMap<String, Vec<u8>>,
    pub instances: std::collections::BTreeMap<(String, String), Vec<u8>>,
    /// The highest clock and the latest wall time saved.
    pub clock: u64,
    pub wall_ms: u64,
}

impl RowSink for MemoryRows {
    type Error = std::convert::Infallible;
    fn put_service(&mut self, key: &str, row: &[u8]) -> Result<(), Self::Error> {
        self.services.insert(key.to_string(), row.to_vec());
        Ok(())
    }
    fn delete_service(&mut self, key: &str) -> Result<(), Self::Error> {
        self.services.remove(key);
        Ok(())
    }
    fn put_instance(&mut self, svc: &str, inst: &str, row: &[u8]) -> Result<(), Self::Error> {
        self.instances
            .insert((svc.to_string(), inst.to_string()), row.to_vec());
        Ok(())
    }
    fn delete_instance(&mut self, svc: &str, inst: &str) -> Result<(), Self::Error> {
        self.instances.remove(&(svc.to_string(), inst.to_string()));
        Ok(())
    }
    fn clear_instances(&mut self, svc: &str) -> Result<(), Self::Error> {
        self.instances.retain(|(s, _), _| s != svc);
        Ok(())
    }
}

impl MemoryRows {
    /// Saves `changes` taken at wall time `wall_ms`.
    pub fn save(&mut self, changes: &Changes, wall_ms: u64) {
        let Ok(_) = changes.write_to(self);
        self.clock = self.clock.max(changes.clock);
        self.wall_ms = self.wall_ms.max(wall_ms);
    }

    /// Every saved service, as `disk::Opened::load` hands them out.
    pub fn saved(&self) -> Vec<SavedService> {
        let mut out = Vec::new();
        let mut g = Regroup::new(self.services.clone());
        for ((svc, inst), v) in &self.instances {
            g.instance(svc, inst, v, |s| out.push(s));
        }
        g.finish(|s| out.push(s));
        out
    }
}

/// Rows read back in key order, regrouped into whole services: each
/// service's instance rows with its own row, then the services that have
/// only their own row. Used by the store file's `load` and by
/// `MemoryRows`, which both hold instance rows sorted by (service,
/// instance).
pub struct Regroup {
    /// Service rows not yet handed out.
    rows: std::collections::BTreeMap<String, Vec<u8>>,
    current: Option<SavedService>,
    /// Services handed out so far.
    pub services: usize,
}

impl Regroup {
    pub fn new(rows: std::collections::BTreeMap<String, Vec<u8>>) -> Regroup {
        Regroup {
            rows,
            current: None,
            services: 0,
        }
    }

    /// The next instance row; hands the previous service to `out` once
    /// its rows are over.
    pub fn instance(&mut self, svc: &str, inst: &str, row: &[u8], out: impl FnOnce(SavedService)) {
        if self.current.as_ref().is_some_and(|c| c.key != svc) {
            out(self.current.take().expect("checked"));
            self.services += 1;
        }
        let rows = &mut self.rows;
        self.current
            .get_or_insert_with(|| SavedService {
                key: svc.to_string(),
                row: rows.remove(svc),
                instances: Vec::new(),
            })
            .instances
            .push((inst.to_string(), row.to_vec()));
    }

    /// Hands out the last service with instances, then those without.
    pub fn finish(mut self, mut out: impl FnMut(SavedService)) -> usize {
        if let Some(c) = self.current.take() {
            out(c);
            self.services += 1;
        }
        for (key, row) in std::mem::take(&mut self.rows) {
            out(SavedService {
                key,
                row: Some(row),
                instances: Vec::new(),
            });
            self.services += 1;
        }
        self.services
    }
}

/// The service id of a full key `namespace##group@@name`.
pub fn service_id_of_key(key: &str) -> Option<ServiceId> {
    let (ns, rest) = key.split_once("##")?;
    let (group, name) = rest.split_once("@@")?;
    Some(ServiceId::new(ns, group, name))
}

/// A service as saved: its row (None when only its instances were
/// found) and its instance rows.
pub struct SavedService {
    pub key: String,
    pub row: Option<Vec<u8>>,
    pub instances: Vec<(String, Vec<u8>)>,
}

/// Why a saved service could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("service {key}: bad row: {source}")]
    Service {
        key: String,
        source: serde_json::Error,
    },
    #[error("service {key}: bad instance row {instance}: {source}")]
    Instance {
        key: String,
        instance: String,
        source: serde_json::Error,
    },
    #[error("service key {0:?} is not namespace##group@@name")]
    Key(String),
}

impl SavedService {
    /// The datum the rows describe.
    pub fn into_datum(self) -> Result<Datum, RestoreError> {
        let row: ServiceRow = match &self.row {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|source| RestoreError::Service {
                    key: self.key.clone(),
                    source,
                })?
            }
            None => {
                let id = service_id_of_key(&self.key)
                    .ok_or_else(|| RestoreError::Key(self.key.clone()))?;
                ServiceRow {
                    namespace: id.namespace().to_string(),
                    group: id.group().to_string(),
                    name: id.name().to_string(),
                    fields: default_fields(),
                    deleted: None,
                }
            }
        };
        let mut instances = Vec::with_capacity(self.instances.len());
        for (k, bytes) in &self.instances {
            instances.push(
                decode_instance(k, bytes).map_err(|source| RestoreError::Instance {
                    key: self.key.clone(),
                    instance: k.clone(),
                    source,
                })?,
            );
        }
        instances.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Datum {
            namespace: row.namespace,
            group: row.group,
            name: row.name,
            fields: row.fields,
            deleted: row.deleted,
            instances,
        })
    }
}

fn default_fields() -> FieldsRecord {
    FieldsRecord {
        protect_threshold: 0.0,
        metadata: Metadata::new(),
        selector: serde_json::json!({"type": "none"}),
        version: Version::default(),
    }
}

/// Restored records older than the tombstone horizon that a clustered
/// node's peers have not shown it yet. A record this old may have been
/// deleted elsewhere while the node was down, its tombstone purged since:
/// merged in as it is, it would come back. Records the startup snapshot
/// (or any peer's datum) holds, live or deleted, are confirmed and merged
/// by version; the rest are dropped once a snapshot was served, kept when
/// no peer served one (the whole cluster restarting: every node has them).
#[derive(Debug, Default)]
pub struct Unconfirmed {
    keys: super::Map<Rc<str>, super::Map<Arc<str>, Version>>,
}

impl Unconfirmed {
    pub(crate) fn seen(&mut self, svc: &str, inst: &str) {
        if let Some(m) = self.keys.get_mut(svc) {
            m.remove(inst);
            if m.is_empty() {
                self.keys.remove(svc);
            }
        }
    }
}

/// Restored records this much younger than the tombstone TTL are also
/// held back until confirmed (clock skew between nodes, a verify round).
pub const UNCONFIRMED_MARGIN_MS: u64 = 10_000;

impl Store {
    /// For a clustered node that restored its store: holds back every
    /// restored instance older than the tombstone horizon of its kind
    /// (persistent instances: `PERSISTENT_TOMBSTONE_TTL_MS`) until its
    /// peers confirm it (`Unconfirmed`). Returns how many are held back.
    pub fn hold_back_restored(&mut self, now_ms: u64) -> usize {
        // Per kind: a persistent instance's tombstone is kept longer.
        let horizon = |persistent: bool| {
            let ttl = super::ttl_of(self.tombstone_ttl_ms, persistent);
            now_ms.saturating_sub(ttl.saturating_sub(UNCONFIRMED_MARGIN_MS))
        };
        let (short, long) = (horizon(false), horizon(true));
        let mut u = Unconfirmed::default();
        let mut n = 0;
        for s in self.services.values() {
            let old: super::Map<Arc<str>, Version> = s
                .instances
                .values()
                .filter(|i| {
                    let h = if i.ephemeral { short } else { long };
                    crate::distro::hlc::physical_ms(i.version.hlc) < h
                })
                .map(|i| (i.key.clone(), i.version))
                .collect();
            if !old.is_empty() {
                n += old.len();
                u.keys.insert(s.key.clone(), old);
            }
        }
        self.unconfirmed = Some(u);
        n
    }

    /// The startup snapshot is settled: with `served` (a peer served one),
    /// the held-back records it did not confirm are forgotten, silently
    /// (no tombstone: the deletion they missed is everyone's already).
    /// Returns how many went.
    pub fn settle_restored(&mut self, served: bool, now_ms: u64) -> usize {
        let Some(u) = self.unconfirmed.take() else {
            return 0;
        };
        if !served {
            return 0;
        }
        let mut dropped = 0;
        for (svc_key, keys) in u.keys {
            let Some(s) = self.services.get_mut(&svc_key) else {
                continue;
            };
            for (k, v) in keys {
                if s.instances.get(&k).is_some_and(|i| i.version == v) {
                    s.instances.remove(&k);
                    note(&mut self.journal, &svc_key, Some(&k));
                    dropped += 1;
                }
            }
            s.touch(now_ms);
        }
        self.instances -= dropped;
        dropped
    }

    /// From now on, changes are noted for saving.
    pub fn enable_journal(&mut self) {
        if self.journal.is_none() {
            self.journal = Some(Journal::default());
        }
    }

    /// Keys noted since the last save (duplicates counted).
    pub fn journal_len(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.entries.len())
    }

    /// Whether the noted changes hold one that must be synced before it is
    /// acknowledged.
    pub fn journal_durable(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.durable)
    }

    /// Whether `op` would change persistent data (a persistent instance or
    /// a service's fields): refused while the store cannot save.
    pub fn needs_durability(&self, op: &super::Op) -> bool {
        use super::Op;
        let persistent = |svc: &ServiceId, addr: &InstanceAddr| {
            self.services
                .get(svc.full_key())
                .and_then(|s| s.instances.get(addr.key().as_str()))
                .is_some_and(|i| !i.ephemeral)
        };
        match op {
            Op::Register { spec, .. } => !spec.ephemeral,
            Op::Update {
                svc, addr, change, ..
            }
            | Op::Patch { svc, addr, change } => {
                change.ephemeral == Some(false) || persistent(svc, addr)
            }
            Op::Deregister { svc, addr } => persistent(svc, addr),
            Op::CreateService { .. } | Op::UpdateService { .. } | Op::DeleteService { .. } => true,
            Op::Beat { beat, .. } => beat.as_ref().is_some_and(|b| !b.ephemeral),
            Op::List { .. }
            | Op::GetInstance { .. }
            | Op::GetService { .. }
            | Op::Publish { .. } => false,
        }
    }

    /// The rows of everything noted since the last save, in their current
    /// state; None when nothing was noted (or saving is off).
    pub fn take_changes(&mut self) -> Option<Changes> {
        let j = self.journal.as_mut()?;
        if j.entries.is_empty() && j.cleared.is_empty() {
            return None;
        }
        let mut entries = std::mem::take(&mut j.entries);
        let mut cleared = std::mem::take(&mut j.cleared);
        let durable = std::mem::replace(&mut j.durable, false);
        if entries.capacity() > 4 * JOURNAL_ENTRIES_MAX {
            j.entries.shrink_to(JOURNAL_ENTRIES_MAX);
        }
        entries.sort_unstable_by(|a, b| (&*a.0, a.1.as_deref()).cmp(&(&*b.0, b.1.as_deref())));
        entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        cleared.sort_unstable();
        cleared.dedup();
        let mut out: Vec<ServiceChanges> = Vec::new();
        let mut i = 0;
        while i < entries.len() {
            let svc_key = entries[i].0.clone();
            let end = entries[i..]
                .iter()
                .position(|e| e.0 != svc_key)
                .map_or(entries.len(), |n| i + n);
            let clear = cleared.binary_search(&svc_key).is_ok();
            out.push(self.service_changes(&svc_key, &entries[i..end], clear));
            i = end;
        }
        Some(Changes {
            services: out,
            durable,
            clock: self.stamp.clock.last(),
        })
    }

    /// One service's rows for the noted keys `noted` (sorted, the
    /// service's own row first when noted).
    fn service_changes(
        &self,
        svc_key: &Rc<str>,
        noted: &[(Rc<str>, Option<Arc<str>>)],
        clear: bool,
    ) -> ServiceChanges {
        let live = self.services.get(svc_key);
        let row_noted = noted.iter().any(|e| e.1.is_none());
        let row = row_noted.then(|| match live {
            Some(s) => Some(ServiceRow {
                namespace: s.id.namespace().to_string(),
                group: s.id.group().to_string(),
                name: s.id.name().to_string(),
                fields: FieldsRecord {
                    protect_threshold: s.protect_threshold,
                    metadata: s.metadata.clone(),
                    selector: s.selector.clone(),
                    version: s.fields_version,
                },
                deleted: None,
            }),
            None => self
                .service_tombstones
                .get(svc_key)
                .map(|(id, v)| ServiceRow {
                    namespace: id.namespace().to_string(),
                    group: id.group().to_string(),
                    name: id.name().to_string(),
                    fields: default_fields(),
                    deleted: Some(*v),
                }),
        });
        // A service gone whole takes its instance rows with it.
        let clear = clear || (row_noted && live.is_none());
        let row_of = |k: &Arc<str>| -> Option<InstanceRow> {
            let s = live?;
            if let Some(i) = s.instances.get(k) {
                return Some(InstanceRow::Live {
                    data: i.data.clone(),
                    version: i.version,
                    lease: i.conn.as_deref().cloned(),
                });
            }
            s.tombstones.get(k).map(|t| InstanceRow::Tombstone(*t))
        };
        let instances = match (clear, live) {
            // Everything was deleted: write back all that is there now.
            (true, Some(s)) => s
                .instances
                .keys()
                .chain(s.tombstones.keys())
                .map(|k| (k.clone(), row_of(k)))
                .collect(),
            (true, None) => Vec::new(),
            (false, _) => noted
                .iter()
                .filter_map(|e| e.1.as_ref())
                .map(|k| (k.clone(), row_of(k)))
                .collect(),
        };
        ServiceChanges {
            key: svc_key.to_string(),
            clear,
            row,
            instances,
        }
    }

    /// Takes in a service read back from the store at start, as a merge:
    /// restored instances count as heard from now (a full timeout). With
    /// `unbind`, records bound to a gRPC connection come back unbound: on
    /// a standalone node that connection did not survive the restart, and
    /// the instance lives like any other until its client registers it
    /// again on reconnecting. A clustered node keeps the leases: the lease
    /// policy retires its own earlier incarnation's records as every peer
    /// does, and another holder's records stay bound as they are
    /// everywhere (an unbound copy would expire while its connection
    /// lives elsewhere; found by the simulation). Call before
    /// `enable_journal`: what is restored is on disk already.
    pub fn restore(&mut self, mut d: Datum, now_ms: u64, unbind: bool) -> bool {
        if unbind {
            for r in &mut d.instances {
                r.lease = None;
            }
        }
        self.merge(d, now_ms)
    }

    /// Takes in the clock of the store read back at start, so that every
    /// later version is above every version issued before the restart.
    pub fn observe_saved_clock(&mut self, ts: u64, now_ms: u64) {
        self.stamp.clock.observe(ts, now_ms);
    }
}
