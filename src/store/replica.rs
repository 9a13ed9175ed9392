//! A store's replicated state: exporting a service as a `Datum` and merging
//! a peer's datum in (per record, the higher version wins; docs/distro.md).
//! Pure like the rest of the store.

use std::rc::Rc;
use std::sync::Arc;

use super::datum::{checksum_of, Datum, FieldsRecord, InstanceRecord};
use super::instance::{split_key, Instance, InstanceData, LeasePolicy, Metadata};
use super::service::{Service, ServiceId, Tomb};
use super::Store;
use crate::distro::hlc::{self, Version};

fn record(i: &Instance) -> InstanceRecord {
    InstanceRecord {
        key: i.key.to_string(),
        ip: i.ip().to_string(),
        port: i.port(),
        cluster: i.cluster().to_string(),
        weight: i.weight,
        healthy: i.healthy,
        enabled: i.enabled,
        ephemeral: i.ephemeral,
        metadata: i.metadata.clone(),
        version: i.version,
        deleted: false,
        lease: i.conn.as_deref().cloned(),
    }
}

fn tombstone(key: &str, tomb: Tomb) -> InstanceRecord {
    // The wire form carries the address, from which the key is rebuilt.
    let (ip, port, cluster) = split_key(key).unwrap_or((key, 0, ""));
    InstanceRecord {
        key: key.to_string(),
        ip: ip.to_string(),
        port,
        cluster: cluster.to_string(),
        weight: 0.0,
        healthy: false,
        enabled: false,
        ephemeral: !tomb.persistent,
        metadata: Metadata::new(),
        version: tomb.version,
        deleted: true,
        lease: None,
    }
}

fn fields(s: &Service) -> FieldsRecord {
    FieldsRecord {
        protect_threshold: s.protect_threshold,
        metadata: s.metadata.clone(),
        selector: s.selector.clone(),
        version: s.fields_version,
    }
}

/// The newest version of anything a local service holds.
fn newest(s: &Service) -> Version {
    s.instances
        .values()
        .map(|i| i.version)
        .chain(s.tombstones.values().map(|t| t.version))
        .chain([s.fields_version])
        .max()
        .unwrap_or_default()
}

impl Store {
    /// The replicated state of a service, or of its deletion; None when
    /// this shard knows neither.
    pub fn datum(&self, full_key: &str) -> Option<Datum> {
        if let Some(s) = self.services.get(full_key) {
            let mut instances: Vec<InstanceRecord> = s.instances.values().map(record).collect();
            instances.extend(s.tombstones.iter().map(|(k, t)| tombstone(k, *t)));
            instances.sort_by(|a, b| a.key.cmp(&b.key));
            return Some(Datum {
                namespace: s.id.namespace().to_string(),
                group: s.id.group().to_string(),
                name: s.id.name().to_string(),
                fields: fields(s),
                deleted: None,
                instances,
            });
        }
        let (id, version) = self.service_tombstones.get(full_key)?;
        Some(Datum {
            namespace: id.namespace().to_string(),
            group: id.group().to_string(),
            name: id.name().to_string(),
            fields: FieldsRecord {
                protect_threshold: 0.0,
                metadata: Metadata::new(),
                selector: serde_json::json!({"type": "none"}),
                version: Version::default(),
            },
            deleted: Some(*version),
            instances: Vec::new(),
        })
    }

    /// Merges a peer's copy of a service. Returns whether anything a list
    /// or a push can see changed.
    /// Versions more than `hlc::DRIFT_MAX_MS` ahead of `now_ms` are not
    /// taken in (counted in `future_versions_refused`): such records, a
    /// service delete or fields are left out, and arrive with a later
    /// verify round once the local clock has caught up.
    pub fn merge(&mut self, d: Datum, now_ms: u64) -> bool {
        self.merge_from_peer(d, now_ms).0
    }

    /// `merge`, and whether the peer's copy was older than this one
    /// somewhere (a record, the fields, a delete it predates): the peer
    /// has missed a change and is to be sent this copy back (read repair:
    /// a node cut off longer than the tombstone TTL would otherwise keep
    /// what was deleted meanwhile and bring it back once every tombstone
    /// is purged; simulation seed 30823).
    pub fn merge_from_peer(&mut self, d: Datum, now_ms: u64) -> (bool, bool) {
        self.merged_stale = false;
        let changed = self.merge_inner(d, now_ms);
        (changed, std::mem::take(&mut self.merged_stale))
    }

    fn merge_inner(&mut self, mut d: Datum, now_ms: u64) -> bool {
        let ok = |v: Version| hlc::acceptable(v.hlc, now_ms);
        let records = d.instances.len();
        d.instances.retain(|r| ok(r.version));
        let mut refused = records - d.instances.len();
        if !ok(d.fields.version) {
            d.fields.version = Version::default();
            refused += 1;
        }
        let delete_refused = d.deleted.is_some_and(|v| !ok(v));
        if delete_refused {
            d.deleted = None;
            refused += 1;
        }
        self.future_versions_refused += refused as u64;
        if delete_refused && d.instances.is_empty() {
            return false; // nothing left to merge
        }
        self.stamp.clock.observe(d.max_version().hlc, now_ms);
        let id = ServiceId::new(&d.namespace, &d.group, &d.name);
        let key = id.full_key();
        if let Some(deleted) = d.deleted {
            return self.merge_service_delete(id, deleted, now_ms);
        }
        if let Some((_, tomb)) = self.service_tombstones.get(key) {
            if d.max_version() <= *tomb {
                self.merged_stale |= d.max_version() < *tomb;
                return false; // everything in it predates the delete
            }
            self.service_tombstones.remove(key);
        }
        let defaults = self.defaults;
        let ttl = self.tombstone_ttl_ms;
        let new_here = !self.services.contains_key(key);
        let s = self.service_mut(&id, now_ms);
        if new_here {
            // Only tombstones and default fields: hidden here as where it
            // came from (see `Service::hidden`).
            s.hidden =
                d.fields.version == Version::default() && d.instances.iter().all(|r| r.deleted);
        }
        let Store {
            services,
            timers,
            purge_timers,
            purges_long,
            instances,
            stamp,
            lease_policy,
            reasserted,
            journal,
            merged_stale,
            unconfirmed,
            ..
        } = self;
        let s = services.get_mut(key).expect("created above");
        let svc_key = s.key.clone();
        let mut changed = false;
        if d.fields.version > s.fields_version {
            s.hidden = false;
            s.protect_threshold = d.fields.protect_threshold;
            s.metadata = d.fields.metadata;
            s.selector = d.fields.selector;
            s.fields_version = d.fields.version;
            changed = true;
            super::journal::note(journal, &svc_key);
        } else if d.fields.version < s.fields_version {
            *merged_stale = true;
        }
        let mut reassert = false;
        for mut r in d.instances {
            if let Some(u) = unconfirmed.as_mut() {
                u.seen(&svc_key, &r.key);
            }
            // A record bound to a connection whose holder is gone arrives
            // as its retirement.
            if let (Some(l), Some(p)) = (&r.lease, lease_policy.as_ref()) {
                if !r.deleted && !p.keeps(l) {
                    // This node's earlier incarnation: only it knows, so
                    // it tells the others.
                    reassert |= l.holder == p.me;
                    r.deleted = true;
                    r.version = r.version.retired();
                    r.lease = None;
                }
            }
            let local = s
                .instances
                .get(r.key.as_str())
                .map(|i| i.version)
                .or_else(|| s.tombstones.get(r.key.as_str()).map(|t| t.version));
            if let Some(v) = local.filter(|v| *v >= r.version) {
                *merged_stale |= v > r.version;
                continue;
            }
            // A peer retired the record of a connection this node still
            // holds (it thought this node gone: a partition): the record
            // stays, under a new version that outranks the retirement.
            if r.deleted && r.version.is_retirement() {
                if let (Some(i), Some(p)) = (s.instances.get_mut(r.key.as_str()), &lease_policy) {
                    if i.conn
                        .as_deref()
                        .is_some_and(|l| l.holder == p.me && p.keeps(l))
                    {
                        let old = Some(i.version);
                        i.version = stamp.next(now_ms);
                        super::journal::note_instance(journal, &svc_key, &i.key, old);
                        reassert = true;
                        continue;
                    }
                }
            }
            changed = true;
            let inst_key: Arc<str> = Arc::from(r.key.as_str());
            super::journal::note_instance(journal, &svc_key, &inst_key, local);
            if r.deleted {
                if s.instances.remove(&inst_key).is_some() {
                    *instances -= 1;
                }
                // A persistent instance's tombstone keeps its kind: also
                // a record deleted here by a peer that held it persistent.
                let tomb = Tomb::new(r.version, !r.ephemeral, now_ms, ttl);
                s.tombstones.insert(inst_key.clone(), tomb);
                super::file_purge(purge_timers, purges_long, s, inst_key, &tomb);
                continue;
            }
            s.tombstones.remove(&inst_key);
            s.hidden = false;
            let existing = s.instances.get(&inst_key);
            let inst = Instance {
                data: Arc::new(InstanceData {
                    key: inst_key.clone(),
                    weight: r.weight,
                    healthy: r.healthy,
                    enabled: r.enabled,
                    ephemeral: r.ephemeral,
                    timeouts: defaults.for_metadata(&r.metadata).into(),
                    metadata: r.metadata,
                }),
                // A copy from a peer counts as heard from now; the owner
                // decides expiry (docs/distro.md, ownership grace).
                last_beat_ms: existing.map(|i| i.last_beat_ms).unwrap_or(now_ms),
                version: r.version,
                // A connection held here keeps its instances bound to it.
                conn: match (r.lease, existing.and_then(|i| i.conn.as_ref())) {
                    (Some(l), Some(mine)) if **mine == l => Some(mine.clone()),
                    (l, _) => l.map(std::sync::Arc::new),
                },
            };
            Store::arm(timers, &svc_key, &mut s.expiry_due, &inst);
            if s.instances.insert(inst).is_none() {
                *instances += 1;
            }
        }
        if changed {
            s.touch(now_ms);
        }
        if reassert {
            reasserted.push(key.to_string());
        }
        changed
    }

    /// Services whose merge this node has to tell its peers about (see
    /// `merge`): records of its live connections re-versioned against a
    /// retirement, records of its earlier incarnation retired.
    pub fn take_reasserted(&mut self) -> Vec<String> {
        std::mem::take(&mut self.reasserted)
    }

    /// The holders of the connections this store's records are bound to,
    /// sorted (one pass over the instances).
    pub fn lease_holders(&self) -> Vec<String> {
        let mut out: std::collections::BTreeSet<&str> = Default::default();
        for s in self.services.values() {
            for i in s.instances.values() {
                if let Some(l) = &i.conn {
                    out.insert(&l.holder);
                }
            }
        }
        out.into_iter().map(str::to_string).collect()
    }

    /// Sets which connection leases stay and retires every record bound
    /// to one that no longer does (its tombstone's version is
    /// `Version::retired`, the same on every node). Returns the services
    /// changed. Cost: one pass over the instances, only when the policy
    /// differs from the last one.
    pub fn set_lease_policy(&mut self, policy: LeasePolicy, now_ms: u64) -> Vec<String> {
        if self.lease_policy.as_ref() == Some(&policy) {
            return Vec::new();
        }
        let mut retire: Vec<(Rc<str>, Arc<str>, Version)> = Vec::new();
        for s in self.services.values() {
            for i in s.instances.values() {
                if i.conn.as_deref().is_some_and(|l| !policy.keeps(l)) {
                    retire.push((s.key.clone(), i.key.clone(), i.version));
                }
            }
        }
        self.lease_policy = Some(policy);
        let mut changed: Vec<String> = Vec::new();
        for (svc_key, inst_key, version) in retire {
            let s = self.services.get_mut(&svc_key).expect("listed above");
            s.instances.remove(&inst_key);
            s.touch(now_ms);
            self.instances -= 1;
            let tomb = Tomb::new(version.retired(), false, now_ms, self.tombstone_ttl_ms);
            self.bury_at(&svc_key, inst_key, Some(version), tomb);
            // `retire` holds each service's instances together.
            if changed.last().map(String::as_str) != Some(&*svc_key) {
                changed.push(svc_key.to_string());
            }
        }
        changed
    }

    fn merge_service_delete(&mut self, id: ServiceId, deleted: Version, now_ms: u64) -> bool {
        let key = id.full_key();
        let mut removed = false;
        if let Some(s) = self.services.get(key) {
            if newest(s) > deleted {
                return false; // written again after the delete
            }
            let gone = self.services.remove(key).expect("present");
            super::journal::note_cleared(&mut self.journal, &gone);
            self.instances -= gone.instances.len();
            removed = true;
        }
        let newer_tomb = matches!(self.service_tombstones.get(key), Some((_, v)) if *v >= deleted);
        if !newer_tomb {
            let k: Rc<str> = Rc::from(key);
            super::journal::note(&mut self.journal, &k);
            self.service_tombstones.insert(k.clone(), (id, deleted));
            self.schedule_service_purge(k, deleted, now_ms);
        }
        removed || !newer_tomb
    }
}

impl Store {
    /// Ownership-change grace (SPEC 3): for every service this shard has
    /// just become the owner of (`newly_owned(grouped name)`), treat every
    /// instance as having beaten at `now_ms`, so that nothing is expired
    /// merely because the previous owner held the fresh beats. Returns how
    /// many instances were refreshed.
    pub fn grant_ownership_grace(
        &mut self,
        now_ms: u64,
        newly_owned: impl Fn(&str) -> bool,
    ) -> usize {
        let mut refreshed = 0;
        let Store {
            services, timers, ..
        } = self;
        for s in services.values_mut() {
            if !newly_owned(s.id.grouped()) {
                continue;
            }
            let svc_key = s.key.clone();
            for inst in s.instances.values_mut() {
                if inst.last_beat_ms < now_ms {
                    inst.last_beat_ms = now_ms;
                    refreshed += 1;
                }
                Store::arm(timers, &svc_key, &mut s.expiry_due, inst);
            }
        }
        refreshed
    }
}

impl Store {
    /// Every service and service tombstone this shard holds, as datums
    /// (the snapshot, SPEC 4.6).
    pub fn snapshot(&self) -> Vec<Datum> {
        self.services
            .keys()
            .chain(self.service_tombstones.keys())
            .filter_map(|k| self.datum(k))
            .collect()
    }

    /// Services whose grouped name `owns` accepts, and their instances.
    pub fn owned_counts(&self, owns: impl Fn(&str) -> bool) -> (usize, usize) {
        self.services
            .values()
            .filter(|s| owns(s.id.grouped()))
            .fold((0, 0), |(s, i), svc| (s + 1, i + svc.instances.len()))
    }

    /// Checksums of the services (and service tombstones) whose grouped
    /// name `owns` accepts: what a verify round sends.
    pub fn checksums(&self, owns: impl Fn(&str) -> bool) -> Vec<(String, u64)> {
        let live = self
            .services
            .values()
            .filter(|s| owns(s.id.grouped()))
            .map(|s| s.key.clone());
        let dead = self
            .service_tombstones
            .iter()
            .filter(|(_, (id, _))| owns(id.grouped()))
            .map(|(k, _)| k.clone());
        live.chain(dead)
            .filter_map(|k| self.checksum(&k).map(|sum| (k.to_string(), sum)))
            .collect()
    }

    /// The checksum of `datum(full_key)` without building it; cached per
    /// service revision.
    pub fn checksum(&self, full_key: &str) -> Option<u64> {
        if let Some(s) = self.services.get(full_key) {
            if let Some((rev, sum)) = s.checksum_cache.get() {
                if rev == s.revision {
                    return Some(sum);
                }
            }
            let mut records: Vec<(&str, bool, Version)> = s
                .instances
                .values()
                .map(|i| (&*i.key, false, i.version))
                .chain(s.tombstones.iter().map(|(k, t)| (&**k, true, t.version)))
                .collect();
            records.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let sum = checksum_of(s.fields_version, None, records.into_iter());
            s.checksum_cache.set(Some((s.revision, sum)));
            return Some(sum);
        }
        let (_, version) = self.service_tombstones.get(full_key)?;
        Some(checksum_of(
            Version::default(),
            Some(*version),
            std::iter::empty(),
        ))
    }

    /// The verify round's conditional drop (SPEC 4.4): services that
    /// `source_owns` (grouped name) but the source did not list
    /// (`listed(full key)`) are dropped only when every record of the local
    /// copy was written by the source (`writer >> shard_bits ==
    /// source_node`) and all of it is older than the source's round.
    /// Returns the keys dropped.
    pub fn drop_unlisted(
        &mut self,
        source_node: u64,
        shard_bits: u32,
        round_hlc: u64,
        source_owns: impl Fn(&str) -> bool,
        listed: impl Fn(&str) -> bool,
    ) -> Vec<Rc<str>> {
        let from_source = |v: Version| v.writer >> shard_bits == source_node && v.hlc < round_hlc;
        let doomed: Vec<Rc<str>> = self
            .services
            .values()
            .filter(|s| source_owns(s.id.grouped()) && !listed(&s.key))
            .filter(|s| {
                s.instances.values().all(|i| from_source(i.version))
                    && s.tombstones.values().all(|t| from_source(t.version))
                    && (s.fields_version == Version::default() || from_source(s.fields_version))
            })
            .map(|s| s.key.clone())
            .collect();
        for k in &doomed {
            if let Some(gone) = self.services.remove(k) {
                super::journal::note_cleared(&mut self.journal, &gone);
                self.instances -= gone.instances.len();
            }
        }
        let tombs: Vec<Rc<str>> = self
            .service_tombstones
            .iter()
            .filter(|(k, (id, v))| source_owns(id.grouped()) && !listed(k) && from_source(*v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &tombs {
            self.service_tombstones.remove(k);
            super::journal::note(&mut self.journal, k);
        }
        doomed
    }

    /// The beat interval of a known instance, or None when this shard does
    /// not hold it (a relayed beat's test, SPEC 4.3).
    pub fn known_instance(&self, full_key: &str, instance_key: &str) -> Option<u64> {
        self.services
            .get(full_key)?
            .instances
            .get(instance_key)
            .map(|i| i.timeouts.get().beat_interval_ms)
    }
}

/// Borrowed mirrors of the datum types: the snapshot is serialized
/// straight from the store, without cloning a million records first. The
/// field names must match `Datum`'s (`snapshot_json_parses_as_datums`).
mod borrowed {
    use serde::Serialize;

    use super::super::instance::Metadata;
    use crate::distro::hlc::Version;

    #[derive(Serialize)]
    pub struct Fields<'a> {
        pub protect_threshold: f64,
        pub metadata: &'a Metadata,
        pub selector: &'a serde_json::Value,
        pub version: Version,
    }

    /// `datum::WireRecord`'s order: ip, port, cluster, weight, healthy,
    /// enabled, ephemeral, metadata, hlc, writer, deleted.
    #[derive(Serialize)]
    pub struct Record<'a>(
        pub &'a str,
        pub u16,
        pub &'a str,
        pub f64,
        pub bool,
        pub bool,
        pub bool,
        pub &'a Metadata,
        pub u64,
        pub u64,
        pub bool,
        /// Sort key only, not sent (the receiver rebuilds it).
        #[serde(skip)]
        pub &'a str,
    );

    #[derive(Serialize)]
    pub struct Datum<'a> {
        pub namespace: &'a str,
        pub group: &'a str,
        pub name: &'a str,
        pub fields: Fields<'a>,
        pub deleted: Option<Version>,
        pub instances: Vec<Record<'a>>,
    }
}

/// Bytes reserved per instance when a snapshot is serialized.
const SNAPSHOT_BYTES_PER_INSTANCE: usize = 256;

impl Store {
    /// Appends every service (as in `snapshot`) to `out` as JSON datums
    /// separated by commas, without the enclosing brackets; `first` says
    /// whether `out` holds no datum yet. Returns the new `first`.
    /// Only the services whose full key `keep` accepts are written.
    pub fn write_snapshot(
        &self,
        out: &mut Vec<u8>,
        mut first: bool,
        keep: impl Fn(&str) -> bool,
    ) -> bool {
        out.reserve(self.instances * SNAPSHOT_BYTES_PER_INSTANCE);
        let empty = Metadata::new();
        let no_selector = serde_json::json!({"type": "none"});
        for s in self.services.values().filter(|s| keep(&s.key)) {
            let mut instances: Vec<borrowed::Record> = s
                .instances
                .values()
                .map(|i| {
                    borrowed::Record(
                        i.ip(),
                        i.port(),
                        i.cluster(),
                        i.weight,
                        i.healthy,
                        i.enabled,
                        i.ephemeral,
                        &i.metadata,
                        i.version.hlc,
                        i.version.writer,
                        false,
                        &i.key,
                    )
                })
                .chain(s.tombstones.iter().map(|(k, t)| {
                    // The tombstone's key is `ip#port#cluster` (from_key).
                    let mut parts = k.splitn(3, '#');
                    let ip = parts.next().unwrap_or("");
                    let port = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let cluster = parts.next().unwrap_or("");
                    let (v, ephemeral) = (t.version, !t.persistent);
                    borrowed::Record(
                        ip, port, cluster, 0.0, false, false, ephemeral, &empty, v.hlc, v.writer,
                        true, k,
                    )
                }))
                .collect();
            instances.sort_unstable_by(|a, b| a.11.cmp(b.11));
            let d = borrowed::Datum {
                namespace: s.id.namespace(),
                group: s.id.group(),
                name: s.id.name(),
                fields: borrowed::Fields {
                    protect_threshold: s.protect_threshold,
                    metadata: &s.metadata,
                    selector: &s.selector,
                    version: s.fields_version,
                },
                deleted: None,
                instances,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut *out, &d).expect("datum serializes");
        }
        for (id, v) in self
            .service_tombstones
            .values()
            .filter(|(id, _)| keep(id.full_key()))
        {
            let d = borrowed::Datum {
                namespace: id.namespace(),
                group: id.group(),
                name: id.name(),
                fields: borrowed::Fields {
                    protect_threshold: 0.0,
                    metadata: &empty,
                    selector: &no_selector,
                    version: Version::default(),
                },
                deleted: Some(*v),
                instances: Vec::new(),
            };
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut *out, &d).expect("datum serializes");
        }
        first
    }
}
