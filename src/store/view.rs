//! Read views: an immutable snapshot of one service that any core may read
//! (docs/design.md, read views).
//!
//! The owner shard builds a service's view when something reads it after
//! a change, and publishes it in the service's `ViewSlot`; every change
//! empties the slot before its reply leaves, so a core that finds a view
//! there may answer from it (read-your-writes on one node), and a core
//! that finds none asks the owner, which builds it again. A view shares
//! its instances' data (`Arc<InstanceData>`) with the store: it costs one
//! pointer per instance, plus the list renderings it caches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use super::instance::{InstanceData, Metadata};
use super::render;
use super::service::{ListVariant, Service, ServiceId};

/// Rendered list variants a view keeps (a service's filters in use).
pub const LIST_CACHE_ENTRIES_MAX: usize = 8;

/// One service as of one revision.
#[derive(Debug)]
pub struct ServiceView {
    pub id: ServiceId,
    pub revision: u64,
    /// The list's `lastRefTime`.
    pub modified_ms: u64,
    pub protect_threshold: f64,
    pub metadata: Metadata,
    pub selector: serde_json::Value,
    /// Sorted by key.
    pub instances: Vec<Arc<InstanceData>>,
    /// Rendered lists of this revision, by variant.
    lists: Mutex<Vec<(ListVariant, Bytes)>>,
}

impl ServiceView {
    /// The view of `s` as it is now.
    pub fn of(s: &Service) -> ServiceView {
        let mut instances: Vec<Arc<InstanceData>> =
            s.instances.values().map(|i| i.data.clone()).collect();
        instances.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        ServiceView {
            id: s.id.clone(),
            revision: s.revision,
            modified_ms: s.modified_ms,
            protect_threshold: s.protect_threshold,
            metadata: s.metadata.clone(),
            selector: s.selector.clone(),
            instances,
            lists: Mutex::new(Vec::new()),
        }
    }

    /// The instance with key `ip#port#cluster`.
    pub fn instance(&self, key: &str) -> Option<&InstanceData> {
        self.instances
            .binary_search_by(|i| (*i.key).cmp(key))
            .ok()
            .map(|at| &*self.instances[at])
    }

    /// The list body for `variant`, rendered once per view and variant.
    pub fn list(&self, variant: &ListVariant) -> Bytes {
        let cached = self
            .lists
            .lock()
            .ok()
            .and_then(|l| l.iter().find(|(v, _)| v == variant).map(|(_, b)| b.clone()));
        if let Some(body) = cached {
            return body;
        }
        // Rendered outside the lock: two cores may both render a new
        // variant once; both results are the same.
        let body = Bytes::from(render::list_json(&self.id, Some(self), variant, 0));
        if let Ok(mut l) = self.lists.lock() {
            if !l.iter().any(|(v, _)| v == variant) {
                if l.len() >= LIST_CACHE_ENTRIES_MAX {
                    l.remove(0);
                }
                l.push((variant.clone(), body.clone()));
            }
        }
        body
    }
}

/// Where the owner publishes a service's current view. Shared by the
/// service (owner) and the read tables of other cores.
#[derive(Debug, Default)]
pub struct ViewSlot {
    view: ArcSwapOption<ServiceView>,
    /// The service is gone from its owner: readers drop the slot.
    dead: AtomicBool,
}

impl ViewSlot {
    /// The current view, if the owner has published one since the last
    /// change.
    pub fn load(&self) -> Option<Arc<ServiceView>> {
        self.view.load_full()
    }

    /// Runs `f` on the current view without taking a reference count (the
    /// count is a cache line every reading core would write).
    pub fn with<R>(&self, f: impl FnOnce(&ServiceView) -> R) -> Option<R> {
        let guard = self.view.load();
        guard.as_deref().map(f)
    }

    pub fn publish(&self, view: Arc<ServiceView>) {
        self.view.store(Some(view));
    }

    /// Empties the slot (a change happened): readers ask the owner.
    pub fn clear(&self) {
        self.view.store(None);
    }

    /// The owner dropped the service.
    pub fn kill(&self) {
        self.clear();
        self.dead.store(true, Ordering::Release);
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}
