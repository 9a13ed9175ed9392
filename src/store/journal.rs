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

/// A noted key: (service key, instance key or None for the service's
/// own row, the instance's version before the change).
type Noted = (Rc<str>, Option<Arc<str>>, Option<Version>);

/// Keys noted since the last save.
#[derive(Debug, Default)]
pub struct Journal {
    /// (service key, instance key; None: the service's own row, the
    /// version the instance had before the change: its saved row's key,
    /// when the first note since the last save carries it).
    entries: Vec<Noted>,
    /// Rows of services removed whole since the last save: (service key,
    /// instance key, version), deleted.
    cleared: Vec<(Rc<str>, Arc<str>, Version)>,
    /// A change in it is to persistent data: saved and synced before it
    /// is acknowledged.
    durable: bool,
}

/// Notes a service's own row to save (a free function: the store's maps
/// are borrowed where it is called).
pub(crate) fn note(j: &mut Option<Journal>, svc: &Rc<str>) {
    if let Some(j) = j {
        j.entries.push((svc.clone(), None, None));
    }
}

/// Notes an instance record to save: `old` is the version of the record
/// (live or tombstone) it had before this change, None when there was
/// none. Rows are keyed by version, so the row to delete is found by it.
pub(crate) fn note_instance(
    j: &mut Option<Journal>,
    svc: &Rc<str>,
    inst: &Arc<str>,
    old: Option<Version>,
) {
    if let Some(j) = j {
        j.entries.push((svc.clone(), Some(inst.clone()), old));
    }
}

/// Notes a service removed with all its instances and tombstones.
pub(crate) fn note_cleared(j: &mut Option<Journal>, gone: &super::service::Service) {
    if let Some(j) = j {
        let rows = gone
            .instances
            .values()
            .map(|i| (i.key.clone(), i.version))
            .chain(gone.tombstones.iter().map(|(k, t)| (k.clone(), t.version)));
        j.cleared
            .extend(rows.map(|(k, v)| (gone.key.clone(), k, v)));
        j.entries.push((gone.key.clone(), None, None));
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

/// An instance row's value (row format 3, postcard): what its key does
/// not say. The key holds the version, the service and the address
/// (`ip#port#cluster`), so the value is the rest of the record, about 15
/// bytes for an instance without metadata (the JSON record of format 2
/// was about 85, with the address and the version twice).
#[derive(Serialize)]
struct DiskRow<'a> {
    weight: f64,
    healthy: bool,
    enabled: bool,
    ephemeral: bool,
    deleted: bool,
    metadata: MetaPairs<'a>,
    lease: Option<(&'a str, u64, u64)>,
}

/// `DiskRow` read back.
#[derive(Deserialize)]
struct DiskRowOwned {
    weight: f64,
    healthy: bool,
    enabled: bool,
    ephemeral: bool,
    deleted: bool,
    metadata: Vec<(String, String)>,
    lease: Option<(String, u64, u64)>,
}

/// Metadata as a sequence of pairs (postcard has no self-describing maps,
/// which `Metadata`'s own deserializer needs).
struct MetaPairs<'a>(&'a Metadata);

impl Serialize for MetaPairs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl DiskRow<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(self, buf).expect("a row serializes");
    }
}

impl InstanceRow {
    /// The version of the record: with the keys, the row's key.
    pub fn version(&self) -> Version {
        match self {
            InstanceRow::Live { version, .. } => *version,
            InstanceRow::Tombstone(t) => t.version,
        }
    }

    /// The row's value (`DiskRow`), appended to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let empty = Metadata::new();
        match self {
            InstanceRow::Live { data, lease, .. } => DiskRow {
                weight: data.weight,
                healthy: data.healthy,
                enabled: data.enabled,
                ephemeral: data.ephemeral,
                deleted: false,
                metadata: MetaPairs(&data.metadata),
                lease: lease
                    .as_ref()
                    .map(|l| (l.holder.as_str(), l.boot, l.serial)),
            },
            InstanceRow::Tombstone(t) => DiskRow {
                weight: 0.0,
                healthy: false,
                enabled: false,
                ephemeral: !t.persistent,
                deleted: true,
                metadata: MetaPairs(&empty),
                lease: None,
            },
        }
        .write(out)
    }
}

/// A record's row value (`DiskRow`), appended to `out` (rewriting an
/// older format's rows).
pub fn encode_record(r: &InstanceRecord, out: &mut Vec<u8>) {
    DiskRow {
        weight: r.weight,
        healthy: r.healthy,
        enabled: r.enabled,
        ephemeral: r.ephemeral,
        deleted: r.deleted,
        metadata: MetaPairs(&r.metadata),
        lease: r
            .lease
            .as_ref()
            .map(|l| (l.holder.as_str(), l.boot, l.serial)),
    }
    .write(out)
}

/// Why an instance row cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("{0}")]
    Value(#[from] postcard::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("instance key {0:?} is not ip#port#cluster")]
    Key(String),
}

/// Decodes the row of instance `key` saved under `version` (format 3).
pub fn decode_instance(
    key: &str,
    version: Version,
    bytes: &[u8],
) -> Result<InstanceRecord, RowError> {
    let addr = InstanceAddr::from_key(key).ok_or_else(|| RowError::Key(key.to_string()))?;
    let r: DiskRowOwned = postcard::from_bytes(bytes)?;
    Ok(InstanceRecord {
        key: key.to_string(),
        ip: addr.ip,
        port: addr.port,
        cluster: addr.cluster,
        weight: r.weight,
        healthy: r.healthy,
        enabled: r.enabled,
        ephemeral: r.ephemeral,
        metadata: r.metadata.into_iter().collect(),
        version,
        deleted: r.deleted,
        lease: r.lease.map(|(holder, boot, serial)| Lease {
            holder,
            boot,
            serial,
        }),
    })
}

/// Decodes an instance row of formats 1 and 2 (a datum record, JSON)
/// saved under `key`.
pub fn decode_instance_json(key: &str, bytes: &[u8]) -> Result<InstanceRecord, RowError> {
    let mut r: InstanceRecord = serde_json::from_slice(bytes)?;
    r.key = key.to_string();
    Ok(r)
}

/// An instance row's key in the store file (format 3): version hlc and
/// writer (big-endian, so that bytes sort as versions do and new records
/// are appended), the service key's length (u32, big-endian), the
/// service key, the instance key. One byte string: redb compares it with
/// one `memcmp`, where a tuple key parsed four fields at every compare.
pub fn row_key_bytes(k: RowKey<'_>, out: &mut Vec<u8>) {
    let (hlc, writer, svc, inst) = k;
    out.clear();
    out.reserve(20 + svc.len() + inst.len());
    out.extend_from_slice(&hlc.to_be_bytes());
    out.extend_from_slice(&writer.to_be_bytes());
    out.extend_from_slice(&(svc.len() as u32).to_be_bytes());
    out.extend_from_slice(svc.as_bytes());
    out.extend_from_slice(inst.as_bytes());
}

/// `row_key_bytes` read back; None for bytes that are not such a key.
pub fn parse_row_key(b: &[u8]) -> Option<RowKey<'_>> {
    let hlc = u64::from_be_bytes(b.get(0..8)?.try_into().ok()?);
    let writer = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?);
    let len = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?) as usize;
    let svc = std::str::from_utf8(b.get(20..20usize.checked_add(len)?)?).ok()?;
    let inst = std::str::from_utf8(&b[20 + len..]).ok()?;
    Some((hlc, writer, svc, inst))
}

/// One service's rows to write.
#[derive(Debug, Clone)]
pub struct ServiceChanges {
    /// `namespace##group@@name`.
    pub key: String,
    /// The service's own row: `Some(Some)` write it, `Some(None)` delete
    /// it, `None` leave it.
    pub row: Option<Option<ServiceRow>>,
    /// Instance rows to delete first: (instance key, the version of the
    /// saved record).
    pub deletes: Vec<(Arc<str>, Version)>,
    /// Instance rows to write, each under its record's version.
    pub instances: Vec<(Arc<str>, InstanceRow)>,
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
            .map(|s| s.deletes.len() + s.instances.len() + usize::from(s.row.is_some()))
            .sum()
    }
}

/// Where rows are written: the store file's tables, or a map in memory
/// (the simulation's disk, tests).
pub trait RowSink {
    type Error;
    fn put_service(&mut self, key: &str, row: &[u8]) -> Result<(), Self::Error>;
    fn delete_service(&mut self, key: &str) -> Result<(), Self::Error>;
    /// Instance rows are keyed by (version, service, instance): a change
    /// writes a new row and deletes the old one, and new records land
    /// next to each other (a B-tree touches few pages per commit).
    fn put_instance(&mut self, key: RowKey<'_>, row: &[u8]) -> Result<(), Self::Error>;
    fn delete_instance(&mut self, key: RowKey<'_>) -> Result<(), Self::Error>;
}

/// An instance row's key: (version hlc, version writer, service key,
/// instance key).
pub type RowKey<'a> = (u64, u64, &'a str, &'a str);

impl Changes {
    /// Writes the rows to `sink`, in order. Returns the rows written.
    pub fn write_to<S: RowSink>(&self, sink: &mut S) -> Result<usize, S::Error> {
        let mut buf = Vec::with_capacity(256);
        for sc in &self.services {
            let key = sc.key.as_str();
            for (inst, v) in &sc.deletes {
                sink.delete_instance((v.hlc, v.writer, key, inst))?;
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
            for (inst, r) in &sc.instances {
                buf.clear();
                r.encode(&mut buf);
                let v = r.version();
                sink.put_instance((v.hlc, v.writer, key, inst), &buf)?;
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
    /// By (version hlc, version writer, service key, instance key).
    pub instances: std::collections::BTreeMap<(u64, u64, String, String), Vec<u8>>,
    /// The highest clock and the latest wall time saved.
    pub clock: u64,
    pub wall_ms: u64,
}

fn owned(k: RowKey<'_>) -> (u64, u64, String, String) {
    (k.0, k.1, k.2.to_string(), k.3.to_string())
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
    fn put_instance(&mut self, key: RowKey<'_>, row: &[u8]) -> Result<(), Self::Error> {
        self.instances.insert(owned(key), row.to_vec());
        Ok(())
    }
    fn delete_instance(&mut self, key: RowKey<'_>) -> Result<(), Self::Error> {
        self.instances.remove(&owned(key));
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
        let mut g = Regroup::new(self.services.clone());
        for ((hlc, writer, svc, inst), v) in &self.instances {
            g.instance((*hlc, *writer, svc, inst), v);
        }
        let mut out = Vec::new();
        g.finish(|s| out.push(s));
        out
    }

    /// Instance rows of `svc` (any version).
    pub fn instance_keys(&self, svc: &str) -> Vec<String> {
        self.instances
            .keys()
            .filter(|k| k.2 == svc)
            .map(|k| k.3.clone())
            .collect()
    }
}

/// Rows read back, regrouped into whole services: each service's
/// instance rows with its own row, then the services that have only
/// their own row. Of two rows of one instance (a crash between the
/// commits of a change can not leave them, but an older build's could),
/// the newer version stays; the others are `leftovers`, to delete. Used
/// by the store file's `load` and by `MemoryRows`.
pub struct Regroup {
    /// Service rows not yet handed out.
    rows: std::collections::BTreeMap<String, Vec<u8>>,
    /// service key -> (instance key, version, row), in reading order.
    groups: super::Map<String, Vec<(String, Version, Vec<u8>)>>,
    /// Rows superseded by a newer row of the same instance (filled by
    /// `finish`).
    pub leftovers: Vec<(u64, u64, String, String)>,
    /// Services handed out so far.
    pub services: usize,
}

impl Regroup {
    pub fn new(rows: std::collections::BTreeMap<String, Vec<u8>>) -> Regroup {
        Regroup {
            rows,
            groups: Default::default(),
            leftovers: Vec::new(),
            services: 0,
        }
    }

    /// The next instance row, in any order.
    pub fn instance(&mut self, key: RowKey<'_>, row: &[u8]) {
        let (hlc, writer, svc, inst) = key;
        let group = match self.groups.get_mut(svc) {
            Some(g) => g,
            None => self.groups.entry(svc.to_string()).or_default(),
        };
        group.push((inst.to_string(), Version { hlc, writer }, row.to_vec()));
    }

    /// Hands out every service with instances, then those without.
    /// Returns how many, and the superseded rows (to delete).
    pub fn finish(
        mut self,
        mut out: impl FnMut(SavedService),
    ) -> (usize, Vec<(u64, u64, String, String)>) {
        let mut leftovers = std::mem::take(&mut self.leftovers);
        for (key, mut insts) in std::mem::take(&mut self.groups) {
            // Of two rows of one instance, the newer stays.
            insts.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
            let mut kept: Vec<(String, Version, Vec<u8>)> = Vec::with_capacity(insts.len());
            let mut it = insts.into_iter().peekable();
            while let Some((inst, v, row)) = it.next() {
                if it.peek().is_some_and(|n| n.0 == inst) {
                    leftovers.push((v.hlc, v.writer, key.clone(), inst));
                } else {
                    kept.push((inst, v, row));
                }
            }
            let row = self.rows.remove(&key);
            out(SavedService {
                key,
                row,
                instances: kept,
            });
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
        (self.services, leftovers)
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
    /// (instance key, version: both from the row's key, row value).
    pub instances: Vec<(String, Version, Vec<u8>)>,
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
        source: RowError,
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
        for (k, v, bytes) in &self.instances {
            instances.push(decode_instance(k, *v, bytes).map_err(|source| {
                RestoreError::Instance {
                    key: self.key.clone(),
                    instance: k.clone(),
                    source,
                }
            })?);
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
                    note_instance(&mut self.journal, &svc_key, &k, Some(v));
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
            Op::Deregister {
                svc,
                addr,
                persistent: said,
            } => *said || persistent(svc, addr),
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
        // Stable, and the first note of a key stays: it carries the
        // version the key had at the last save (its row's key).
        entries.sort_by(|a, b| (&*a.0, a.1.as_deref()).cmp(&(&*b.0, b.1.as_deref())));
        entries.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
        cleared.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<ServiceChanges> = Vec::new();
        let (mut i, mut c) = (0, 0);
        while i < entries.len() {
            let svc_key = entries[i].0.clone();
            let end = entries[i..]
                .iter()
                .position(|e| e.0 != svc_key)
                .map_or(entries.len(), |n| i + n);
            while c < cleared.len() && cleared[c].0 < svc_key {
                c += 1; // (every cleared service has a noted entry)
            }
            let c_end = cleared[c..]
                .iter()
                .position(|e| e.0 != svc_key)
                .map_or(cleared.len(), |n| c + n);
            out.push(self.service_changes(&svc_key, &entries[i..end], &cleared[c..c_end]));
            i = end;
            c = c_end;
        }
        Some(Changes {
            services: out,
            durable,
            clock: self.stamp.clock.last(),
        })
    }

    /// One service's rows for the noted keys `noted` (sorted, the
    /// service's own row first when noted) and the rows of its records
    /// removed with it (`cleared`).
    fn service_changes(
        &self,
        svc_key: &Rc<str>,
        noted: &[Noted],
        cleared: &[(Rc<str>, Arc<str>, Version)],
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
        let mut deletes: Vec<(Arc<str>, Version)> =
            cleared.iter().map(|(_, k, v)| (k.clone(), *v)).collect();
        let mut instances = Vec::new();
        for (_, k, old) in noted {
            let Some(k) = k else { continue };
            let now = row_of(k);
            match (old, &now) {
                // Unchanged since the last save (noted, then put back).
                (Some(v), Some(r)) if *v == r.version() => continue,
                (Some(v), _) => deletes.push((k.clone(), *v)),
                (None, _) => {}
            }
            if let Some(r) = now {
                instances.push((k.clone(), r));
            }
        }
        ServiceChanges {
            key: svc_key.to_string(),
            row,
            deletes,
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
