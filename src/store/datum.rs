//! A datum: one service's replicated state on the wire (SPEC 4.4): its
//! fields with their version, every instance record with its version, and
//! the tombstones of deleted instances (or of the service itself).

use serde::{Deserialize, Serialize};

use super::instance::{Lease, Metadata};
use crate::distro::hlc::Version;

/// A service's own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldsRecord {
    pub protect_threshold: f64,
    pub metadata: Metadata,
    pub selector: serde_json::Value,
    pub version: Version,
}

/// An instance, or the tombstone of one (`deleted`, only the address and
/// the version meaningful). On the wire a compact array (`WireRecord`):
/// a million of them make a snapshot, and field names were half its bytes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "WireRecord")]
pub struct InstanceRecord {
    /// `ip#port#cluster`.
    pub key: String,
    pub ip: String,
    pub port: u16,
    pub cluster: String,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub ephemeral: bool,
    pub metadata: Metadata,
    pub version: Version,
    pub deleted: bool,
    /// The gRPC connection it is bound to (connection-bound liveness).
    pub lease: Option<Lease>,
}

/// `InstanceRecord` on the wire: ip, port, cluster, weight, healthy,
/// enabled, ephemeral, metadata, version hlc, version writer, deleted,
/// and for a connection-bound instance a 12th element, its lease as
/// `[holder, boot, serial]`. The key (`ip#port#cluster`) is rebuilt from
/// the address.
#[derive(Deserialize)]
struct WireRecord(
    String,
    u16,
    String,
    f64,
    bool,
    bool,
    bool,
    Metadata,
    u64,
    u64,
    bool,
    #[serde(default)] Option<(String, u64, u64)>,
);

impl Serialize for InstanceRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(if self.lease.is_some() { 12 } else { 11 }))?;
        seq.serialize_element(&self.ip)?;
        seq.serialize_element(&self.port)?;
        seq.serialize_element(&self.cluster)?;
        seq.serialize_element(&self.weight)?;
        seq.serialize_element(&self.healthy)?;
        seq.serialize_element(&self.enabled)?;
        seq.serialize_element(&self.ephemeral)?;
        seq.serialize_element(&self.metadata)?;
        seq.serialize_element(&self.version.hlc)?;
        seq.serialize_element(&self.version.writer)?;
        seq.serialize_element(&self.deleted)?;
        if let Some(l) = &self.lease {
            seq.serialize_element(&(&l.holder, l.boot, l.serial))?;
        }
        seq.end()
    }
}

impl From<WireRecord> for InstanceRecord {
    fn from(w: WireRecord) -> InstanceRecord {
        let WireRecord(
            ip,
            port,
            cluster,
            weight,
            healthy,
            enabled,
            ephemeral,
            metadata,
            hlc,
            writer,
            deleted,
            lease,
        ) = w;
        InstanceRecord {
            key: format!("{ip}#{port}#{cluster}"),
            ip,
            port,
            cluster,
            weight,
            healthy,
            enabled,
            ephemeral,
            metadata,
            version: Version { hlc, writer },
            deleted,
            lease: lease.map(|(holder, boot, serial)| Lease {
                holder,
                boot,
                serial,
            }),
        }
    }
}

/// One service's replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    pub namespace: String,
    pub group: String,
    pub name: String,
    pub fields: FieldsRecord,
    /// The service was deleted at this version (a service tombstone).
    pub deleted: Option<Version>,
    /// Instances and instance tombstones, sorted by key.
    pub instances: Vec<InstanceRecord>,
}

impl Datum {
    /// Rewrites the writer of every version in the datum (the default
    /// version, "never written", stays as it is).
    pub fn map_writers(&mut self, f: impl Fn(u64) -> u64) {
        let map = |v: &mut Version| {
            if *v != Version::default() {
                v.writer = f(v.writer);
            }
        };
        map(&mut self.fields.version);
        if let Some(v) = &mut self.deleted {
            map(v);
        }
        for r in &mut self.instances {
            map(&mut r.version);
        }
    }

    /// Every version in the datum, for the receiving clock to observe.
    pub fn max_version(&self) -> Version {
        self.instances
            .iter()
            .map(|r| r.version)
            .chain([self.fields.version])
            .chain(self.deleted)
            .max()
            .unwrap_or_default()
    }
}

impl Datum {
    /// A checksum of the replicated state: equal on two nodes exactly when
    /// they hold the same versions (values travel with their versions).
    pub fn checksum(&self) -> u64 {
        // `instances` is sorted by key in every datum a store exports.
        checksum_of(
            self.fields.version,
            self.deleted,
            self.instances
                .iter()
                .map(|r| (r.key.as_str(), r.deleted, r.version)),
        )
    }
}

/// The checksum of a datum from its parts: the fields version, the service
/// tombstone, and the (key, deleted, version) records sorted by key.
/// Stable across processes: FNV-1a, not a seeded hasher.
pub fn checksum_of<'a>(
    fields: Version,
    deleted: Option<Version>,
    records: impl Iterator<Item = (&'a str, bool, Version)>,
) -> u64 {
    fn eat(h: &mut u64, bytes: &[u8]) {
        for b in bytes {
            *h ^= u64::from(*b);
            *h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn version(h: &mut u64, v: Version) {
        eat(h, &v.hlc.to_le_bytes());
        eat(h, &v.writer.to_le_bytes());
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    version(&mut h, fields);
    if let Some(d) = deleted {
        eat(&mut h, b"deleted");
        version(&mut h, d);
    }
    for (key, deleted, v) in records {
        eat(&mut h, key.as_bytes());
        eat(&mut h, &[u8::from(deleted)]);
        version(&mut h, v);
    }
    h
}
