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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use bytes::Bytes;

use super::instance::{InstanceData, Metadata};
use super::render;
use super::service::{ListVariant, Service, ServiceId};

/// Rendered list variants a view keeps (a service's filters in use).
pub const LIST_CACHE_ENTRIES_MAX: usize = 8;

/// Bytes of rendered lists that all views of the process may keep. A
/// rendered host is about 400 bytes of JSON: without a bound, a node of
/// 1,000,000 instances read once each kept 400 MB of lists. Beyond it,
/// lists are rendered for each read.
pub const LIST_CACHE_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Where the bytes of cached lists are counted against a bound.
#[derive(Debug)]
pub struct ListBudget {
    used: AtomicUsize,
    max: usize,
}

impl ListBudget {
    pub const fn new(max: usize) -> ListBudget {
        ListBudget {
            used: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: usize) -> bool {
        if self.used.fetch_add(n, Ordering::Relaxed) + n > self.max {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// The process's list budget (`LIST_CACHE_BYTES_MAX`).
pub static LISTS: ListBudget = ListBudget::new(LIST_CACHE_BYTES_MAX);

/// A list variant read from a view: its body once read twice (a list
/// read once, as when a burst of clients each reads its own service, is
/// not kept).
#[derive(Debug)]
struct Rendered {
    variant: ListVariant,
    body: Option<Bytes>,
}

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
    /// (hash of the key, index in `instances`), sorted: a lookup searches
    /// this contiguous array and reads one record, where a binary search
    /// of `instances` read a record and its key at every step (cache
    /// misses on every beat and detail answered from the view).
    by_hash: Vec<(u32, u32)>,
    /// List variants read at this revision, and the bodies kept.
    lists: Mutex<Vec<Rendered>>,
    /// What the kept bodies count against.
    budget: &'static ListBudget,
}

impl ServiceView {
    /// The view of `s` as it is now.
    pub fn of(s: &Service) -> ServiceView {
        Self::of_in(s, &LISTS)
    }

    /// The view of `s`, its cached lists counted in `budget`.
    pub fn of_in(s: &Service, budget: &'static ListBudget) -> ServiceView {
        let mut instances: Vec<Arc<InstanceData>> =
            s.instances.values().map(|i| i.data.clone()).collect();
        instances.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let mut by_hash: Vec<(u32, u32)> = instances
            .iter()
            .enumerate()
            .map(|(at, i)| (key_hash(&i.key), at as u32))
            .collect();
        by_hash.sort_unstable();
        ServiceView {
            id: s.id.clone(),
            revision: s.revision,
            modified_ms: s.modified_ms,
            protect_threshold: s.protect_threshold,
            metadata: s.metadata.clone(),
            selector: s.selector.clone(),
            instances,
            by_hash,
            lists: Mutex::new(Vec::new()),
            budget,
        }
    }

    /// The instance with key `ip#port#cluster`.
    pub fn instance(&self, key: &str) -> Option<&InstanceData> {
        let h = key_hash(key);
        let from = self.by_hash.partition_point(|e| e.0 < h);
        self.by_hash[from..]
            .iter()
            .take_while(|e| e.0 == h)
            .map(|e| &*self.instances[e.1 as usize])
            .find(|i| &*i.key == key)
    }

    /// The list body for `variant`: rendered for its first read, and
    /// kept from its second while the budget allows.
    pub fn list(&self, variant: &ListVariant) -> Bytes {
        let seen = match self.lists.lock() {
            Ok(l) => match l.iter().find(|r| &r.variant == variant) {
                Some(Rendered { body: Some(b), .. }) => return b.clone(),
                Some(_) => true,
                None => false,
            },
            Err(_) => false,
        };
        // Rendered outside the lock: two cores may both render a variant;
        // both results are the same. Copied to an allocation of its own
        // length (the rendered `Vec` grew by doubling).
        let body = Bytes::copy_from_slice(&render::list_json(&self.id, Some(self), variant, 0));
        if let Ok(mut l) = self.lists.lock() {
            match l.iter_mut().find(|r| &r.variant == variant) {
                Some(r) => {
                    if seen && r.body.is_none() && self.budget.reserve(body.len()) {
                        r.body = Some(body.clone());
                    }
                }
                None => {
                    if l.len() >= LIST_CACHE_ENTRIES_MAX {
                        let gone = l.remove(0);
                        self.budget.release(gone.body.map_or(0, |b| b.len()));
                    }
                    l.push(Rendered {
                        variant: variant.clone(),
                        body: None,
                    });
                }
            }
        }
        body
    }

    /// Bytes of list bodies this view keeps.
    pub fn kept_bytes(&self) -> usize {
        self.lists.lock().map_or(0, |l| {
            l.iter()
                .map(|r| r.body.as_ref().map_or(0, |b| b.len()))
                .sum()
        })
    }
}

impl Drop for ServiceView {
    fn drop(&mut self) {
        self.budget.release(self.kept_bytes());
    }
}

/// 32 bits of a key's hash, seeded once per process (keys come from the
/// network; equal hashes only cost a comparison more).
fn key_hash(key: &str) -> u32 {
    use std::hash::BuildHasher;
    static SEED: std::sync::LazyLock<foldhash::fast::FixedState> = std::sync::LazyLock::new(|| {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        foldhash::fast::FixedState::with_seed(seed)
    });
    SEED.hash_one(key) as u32
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
