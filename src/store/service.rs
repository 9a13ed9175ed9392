//! A service: its own fields, its instances, and the cache of its rendered
//! instance lists.

use std::rc::Rc;
use std::sync::Arc;

use super::instance::Metadata;
use super::view::{ServiceView, ViewSlot};

/// Names a service: one string `namespace##group@@name` and the offsets
/// of its parts (one allocation; every shard lookup uses the whole key).
/// `group` and `name` never contain `@@`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    key: String,
    /// Length of the namespace prefix.
    namespace_len: usize,
    /// Length of the group.
    group_len: usize,
}

impl ServiceId {
    pub fn new(namespace: &str, group: &str, name: &str) -> ServiceId {
        ServiceId {
            key: format!("{namespace}##{group}@@{name}"),
            namespace_len: namespace.len(),
            group_len: group.len(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.key[..self.namespace_len]
    }

    pub fn group(&self) -> &str {
        let start = self.namespace_len + 2;
        &self.key[start..start + self.group_len]
    }

    pub fn name(&self) -> &str {
        &self.key[self.namespace_len + 2 + self.group_len + 2..]
    }

    /// `group@@name`.
    pub fn grouped(&self) -> &str {
        &self.key[self.namespace_len + 2..]
    }

    /// `namespace##group@@name`: the key a node stores the service under.
    pub fn full_key(&self) -> &str {
        &self.key
    }
}

/// Which rendering of the list a cached body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListVariant {
    /// The `clusters` parameter as given (after trimming).
    pub clusters: String,
    pub healthy_only: bool,
    pub cache_millis: u32,
}

/// A stored service.
#[derive(Debug)]
pub struct Service {
    pub id: ServiceId,
    /// Full key, shared with expiry timers.
    pub key: Rc<str>,
    pub protect_threshold: f64,
    pub metadata: Metadata,
    /// The selector as given (a JSON object), `{"type":"none"}` by default.
    pub selector: serde_json::Value,
    /// Instances by `ip#port#cluster`.
    pub instances: super::instances::InstanceMap,
    /// When the service's expiry timer fires (`Store::arm`); None: no
    /// instance here is kept by beats, or none has been armed.
    pub expiry_due: Option<u64>,
    /// When the purge timer of its ephemeral tombstones fires
    /// (`file_purge`); None: none armed.
    pub purge_due: Option<u64>,
    /// Bumped on every change that a list or a push can see.
    pub revision: u64,
    /// Time of the last change, strictly increasing; the list's `lastRefTime`.
    pub modified_ms: u64,
    /// The read view of the current revision, once something read it.
    view: Option<Arc<ServiceView>>,
    /// Where the view is published for other cores.
    pub slot: Arc<ViewSlot>,
    /// Version of `protect_threshold`, `metadata` and `selector`.
    pub fields_version: crate::distro::hlc::Version,
    /// Tombstones of deleted instances by key, kept until purged.
    pub tombstones: super::Map<Arc<str>, Tomb>,
    /// The replication checksum and the revision it was computed at.
    pub checksum_cache: std::cell::Cell<Option<(u64, u64)>>,
    /// Exists only to hold the tombstone of a deregister that arrived
    /// before the service did: not listed, not found, until something is
    /// registered in it or it is created.
    pub hidden: bool,
}

/// A deleted instance's tombstone: the delete's version, and whether the
/// instance was persistent (its tombstone is kept for
/// `PERSISTENT_TOMBSTONE_TTL_MS`, an ephemeral one for the tombstone TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tomb {
    pub version: crate::distro::hlc::Version,
    pub persistent: bool,
    /// When it is purged (`Tomb::new`).
    pub purge_at_ms: u64,
}

impl Tomb {
    /// A tombstone made at `now_ms`, kept for its kind's TTL (`ttl_ms`
    /// for an ephemeral instance's).
    pub fn new(
        version: crate::distro::hlc::Version,
        persistent: bool,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Tomb {
        Tomb {
            version,
            persistent,
            purge_at_ms: now_ms + super::ttl_of(ttl_ms, persistent),
        }
    }
}

impl Service {
    pub fn new(id: ServiceId, now_ms: u64) -> Service {
        let key: Rc<str> = Rc::from(id.full_key());
        Service {
            id,
            key,
            protect_threshold: 0.0,
            metadata: Metadata::new(),
            selector: serde_json::json!({"type": "none"}),
            instances: Default::default(),
            expiry_due: None,
            purge_due: None,
            revision: 0,
            modified_ms: now_ms,
            view: None,
            slot: Arc::new(ViewSlot::default()),
            fields_version: Default::default(),
            tombstones: super::Map::default(),
            checksum_cache: std::cell::Cell::new(None),
            hidden: false,
        }
    }

    /// Records a visible change: new revision; the view is withdrawn
    /// (from the slot too, before any reply to the change leaves).
    pub fn touch(&mut self, now_ms: u64) {
        // Every removal touches: a map emptied by one gives its room back.
        if super::mostly_room(self.instances.capacity(), self.instances.len()) {
            self.instances.shrink_to(2 * self.instances.len());
        }
        self.revision += 1;
        self.modified_ms = now_ms.max(self.modified_ms + 1);
        if self.view.take().is_some() {
            self.slot.clear();
        }
    }

    /// The view of the current revision: built and published if none is.
    pub fn view(&mut self) -> Arc<ServiceView> {
        if let Some(v) = &self.view {
            return v.clone();
        }
        let v = Arc::new(ServiceView::of(self));
        self.slot.publish(v.clone());
        self.view = Some(v.clone());
        v
    }

    /// Whether a view of the current revision exists.
    pub fn has_view(&self) -> bool {
        self.view.is_some()
    }
}

/// A service the owner drops takes its view with it: readers that still
/// hold the slot find it empty and dead, and ask the owner.
impl Drop for Service {
    fn drop(&mut self) {
        self.slot.kill();
    }
}
