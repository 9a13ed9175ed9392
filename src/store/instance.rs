//! One registered instance and the values a write supplies for it.

use std::sync::Arc;

/// Metadata: sorted, so that serialization is deterministic; a sorted
/// vector, not a B-tree (whose first node costs 500 bytes an instance).
///
/// Always a JSON object on the wire, empty or not: litemap's own serde
/// writes an empty map as `[]`, which Java (Jackson into a `Map`) and Go
/// (`map[string]string`) clients cannot read. An empty `[]` from an older
/// peer is still accepted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata(litemap::LiteMap<String, String>);

impl Metadata {
    pub fn new() -> Metadata {
        Metadata(litemap::LiteMap::new())
    }
}

impl std::ops::Deref for Metadata {
    type Target = litemap::LiteMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Metadata {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl FromIterator<(String, String)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Metadata {
        Metadata(iter.into_iter().collect())
    }
}

impl serde::Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Metadata;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Metadata, A::Error> {
                let mut m = Metadata::new();
                while let Some((k, v)) = a.next_entry::<String, String>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
            /// `[]` (an empty map as litemap wrote it) or `[[k, v], ...]`.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Metadata, A::Error> {
                let mut m = Metadata::new();
                while let Some((k, v)) = a.next_element::<(String, String)>()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_any(V)
    }
}

pub const META_BEAT_INTERVAL: &str = "preserved.heart.beat.interval";
pub const META_BEAT_TIMEOUT: &str = "preserved.heart.beat.timeout";
pub const META_DELETE_TIMEOUT: &str = "preserved.ip.delete.timeout";

/// Node-wide heartbeat defaults; an instance's `preserved.*` metadata
/// overrides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub beat_interval_ms: u64,
    pub unhealthy_timeout_ms: u64,
    pub delete_timeout_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            beat_interval_ms: 5_000,
            unhealthy_timeout_ms: 15_000,
            delete_timeout_ms: 30_000,
        }
    }
}

impl Timeouts {
    /// The defaults overridden by whatever `preserved.*` keys hold digits.
    pub fn for_metadata(self, metadata: &Metadata) -> Timeouts {
        let get = |key: &str, default: u64| {
            metadata
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Timeouts {
            beat_interval_ms: get(META_BEAT_INTERVAL, self.beat_interval_ms),
            unhealthy_timeout_ms: get(META_BEAT_TIMEOUT, self.unhealthy_timeout_ms),
            delete_timeout_ms: get(META_DELETE_TIMEOUT, self.delete_timeout_ms),
        }
    }
}

/// `Timeouts` as an instance keeps them: milliseconds as `u32`, 12 bytes
/// instead of 24 (with the rest of `InstanceData`, 80 bytes a record
/// instead of 96). A timeout over `u32::MAX` ms (49 days) is kept as that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedTimeouts([u32; 3]);

impl From<Timeouts> for PackedTimeouts {
    fn from(t: Timeouts) -> Self {
        let ms = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        PackedTimeouts([
            ms(t.beat_interval_ms),
            ms(t.unhealthy_timeout_ms),
            ms(t.delete_timeout_ms),
        ])
    }
}

impl PackedTimeouts {
    pub fn get(self) -> Timeouts {
        Timeouts {
            beat_interval_ms: self.0[0].into(),
            unhealthy_timeout_ms: self.0[1].into(),
            delete_timeout_ms: self.0[2].into(),
        }
    }
}

/// The gRPC connection an instance is bound to, as every node knows it:
/// the node that holds the connection (its member address; `""` on a
/// standalone node), that node's incarnation (its start time, ms) and the
/// connection's serial there. One `Arc` per connection, shared by its
/// instances; on the wire the 12th element of a datum record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub holder: String,
    pub boot: u64,
    pub serial: u64,
}

/// Which leases a node still keeps: the others' instances are retired
/// (docs/distro.md, connection-bound instances). Pure data: the cluster
/// code computes it from the member view and hands it to each store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeasePolicy {
    /// This node's address and incarnation.
    pub me: String,
    pub boot: u64,
    /// Members out of the healthy list, or removed from the member list,
    /// for longer than the holder grace.
    pub gone: Vec<String>,
}

impl LeasePolicy {
    /// A lease stays while its holder is this node in this incarnation, or
    /// another node that is not gone. A lease of this node's earlier
    /// incarnation died with it. A holder that is no member is gone only
    /// once it has been seen for the grace (`HolderWatch`): it may be a
    /// member added on the other nodes first (issue 14).
    pub fn keeps(&self, lease: &Lease) -> bool {
        if lease.holder == self.me {
            return lease.boot == self.boot;
        }
        !self.gone.contains(&lease.holder)
    }
}

/// Identity of an instance inside a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceAddr {
    pub ip: String,
    pub port: u16,
    pub cluster: String,
}

impl InstanceAddr {
    /// `ip#port#cluster`: the key in the service's instance map, and the
    /// prefix of the instance id.
    pub fn key(&self) -> String {
        format!("{}#{}#{}", self.ip, self.port, self.cluster)
    }

    /// The address a key names; None for a malformed key.
    pub fn from_key(key: &str) -> Option<InstanceAddr> {
        let (ip, port, cluster) = split_key(key)?;
        Some(InstanceAddr {
            ip: ip.to_string(),
            port,
            cluster: cluster.to_string(),
        })
    }
}

/// (ip, port, cluster) of a key `ip#port#cluster`, split from the right:
/// a cluster name holds no `#` and a port is a number. None for a key
/// that is not one.
pub fn split_key(key: &str) -> Option<(&str, u16, &str)> {
    let mut it = key.rsplitn(3, '#');
    let cluster = it.next()?;
    let port = it.next()?.parse().ok()?;
    let ip = it.next()?;
    Some((ip, port, cluster))
}

/// Everything a register carries.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub addr: InstanceAddr,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub ephemeral: bool,
    pub metadata: Metadata,
}

/// What lists, details and read views show of an instance. Shared,
/// immutable, with the read views of other cores (`store::view`): a
/// change through `Instance`'s `DerefMut` copies it first when a view
/// still holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceData {
    /// `ip#port#cluster`, shared with the instance map and the expiry
    /// timer that watches it; the address is read from it (`ip()`,
    /// `port()`, `cluster()`), not kept twice.
    pub key: Arc<str>,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub ephemeral: bool,
    pub metadata: Metadata,
    /// Effective timeouts: node defaults overridden by metadata.
    pub timeouts: PackedTimeouts,
}

/// A stored instance: its shown data, and what only its owner shard uses.
#[derive(Debug, Clone)]
pub struct Instance {
    pub data: Arc<InstanceData>,
    /// Server time of the last beat (or of the register), ms since epoch.
    pub last_beat_ms: u64,
    /// The gRPC connection that published it: such an instance needs no
    /// beats and is never expired; it lives until that connection releases
    /// it, or until its holder is gone (`LeasePolicy`). None: registered
    /// over HTTP, kept by beats.
    pub conn: Option<Arc<Lease>>,
    /// Version of the last state change (not bumped by plain beats).
    pub version: crate::distro::hlc::Version,
}

impl InstanceData {
    /// `split_key` of the key (always one: records are keyed by
    /// `InstanceAddr::key`); a malformed one reads as all ip.
    fn parts(&self) -> (&str, u16, &str) {
        split_key(&self.key).unwrap_or((&self.key, 0, ""))
    }

    pub fn ip(&self) -> &str {
        self.parts().0
    }

    pub fn port(&self) -> u16 {
        self.parts().1
    }

    pub fn cluster(&self) -> &str {
        self.parts().2
    }
}

impl std::ops::Deref for Instance {
    type Target = InstanceData;
    fn deref(&self) -> &InstanceData {
        &self.data
    }
}

/// Writes copy the shown data when a read view still shares it.
impl std::ops::DerefMut for Instance {
    fn deref_mut(&mut self) -> &mut InstanceData {
        Arc::make_mut(&mut self.data)
    }
}
