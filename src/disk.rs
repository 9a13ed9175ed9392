//! The node's store on disk (issue 12, docs/durability.md): one redb file
//! in the data directory, written by one storage thread.
//!
//! Shards hand it the rows of what they changed (`journal::Changes`): rows
//! of persistent data with a waiter, answered once their transaction is
//! committed and synced; ephemeral changes without one, saved behind at the
//! shard's next tick. The thread drains everything queued into one
//! transaction and one fsync (group commit). At start, before any shard
//! serves, `load` reads every row back and hands each service to the
//! shard that owns it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use futures_channel::oneshot;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::journal::{
    parse_row_key, row_key_bytes, Changes, Regroup, RowKey, RowSink, SavedService,
};

/// The store file in the data directory.
pub const STORE_FILE: &str = "registry.redb";
/// The layout of the rows; a file of format 1 is rewritten at start,
/// one of another layout refused.
pub const FORMAT_VERSION: u64 = 3;
/// Instance rows: `journal::row_key_bytes` (version hlc, version writer,
/// service key, instance key, as one byte string) -> `journal::DiskRow`
/// (postcard). Keyed by version first, so that new records land next to
/// each other: a commit of thousands of new instances rewrites a few leaf
/// pages, not one per instance (with the service key first, storage cost
/// 8.2 us per register, by version 2.1; docs/performance.md).
const INSTANCE_ROWS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("instance_rows_3");
/// Format 2's instance rows: (version hlc, version writer, service key,
/// instance key) -> datum record (JSON).
const INSTANCES_V2: TableDefinition<(u64, u64, &str, &str), &[u8]> =
    TableDefinition::new("instance_rows");
/// Format 1's instance rows: (service key, instance key) -> record (JSON).
const INSTANCES_V1: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("instances");
/// Service rows: service key -> `journal::ServiceRow` (JSON).
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// `format`, `clock` (highest version issued), `wall_ms` (of the last commit).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Jobs queued for the storage thread; past it a persistent write gets 503
/// and a save-behind waits `SAVE_BEHIND_WAIT_MS` for room.
pub const STORAGE_QUEUE_JOBS_MAX: usize = 16_384;
/// How long a shard waits for room in a full queue before it drops a
/// save-behind (counted in `registry_store_dropped_total`).
pub const SAVE_BEHIND_WAIT_MS: u64 = 1_000;
/// A commit of changes saved behind (none waits for it) comes at least
/// this long after the previous commit, so that the shards' saves of
/// that time share it; a persistent change commits at once. With the
/// shards' tick (at most 100 ms) an ephemeral change is saved within
/// about 200 ms.
pub const COMMIT_GAP_BEHIND_MS: u64 = 100;
/// Rows waiting for the storage thread past which every write, ephemeral
/// too, waits for its save (back-pressure: the clients slow down to what
/// the disk takes, and a crash loses at most about this many ephemeral
/// changes, however long a burst runs).
pub const UNSAVED_ROWS_MAX: u64 = 100_000;
/// Jobs one transaction takes at most.
pub const GROUP_COMMIT_JOBS_MAX: usize = 4_096;
/// Jobs kept for retry while the disk fails; the oldest go past it.
pub const RETRY_JOBS_MAX: usize = 65_536;
/// After a failed commit the thread tries again this often.
pub const RETRY_MS: u64 = 1_000;
/// Commits a stopping store tries while its disk fails, before it gives up.
const STOP_TRIES_MAX: u32 = 3;
/// Page cache redb may keep (its default is 1 GiB).
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Services queued per shard while the store is read back.
pub const RESTORE_QUEUE_SERVICES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create data directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store file {file} is in use by another process (one node per data directory: give \
         each node its own --data-dir)"
    )]
    InUse { file: PathBuf },
    #[error(
        "store file {file} cannot be read: {reason}. To start empty, move it away (or start \
         with another --data-dir, or --data-dir none to keep everything in memory)"
    )]
    Unreadable { file: PathBuf, reason: String },
}

/// Counters and health of the store, read by `/metrics` on any core.
#[derive(Debug, Default)]
pub struct DiskStats {
    pub commits: AtomicU64,
    pub rows_written: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub file_bytes: AtomicU64,
    /// Set while commits fail; persistent writes are refused meanwhile.
    pub failing: AtomicBool,
    pub last_error: Mutex<String>,
    /// Sum of commit durations, microseconds (with `commits`: the mean).
    pub commit_us: AtomicU64,
    /// Rows handed to the storage thread and not committed yet.
    pub unsaved_rows: AtomicU64,
}

/// A shard's way to the storage thread.
#[derive(Clone)]
pub struct DiskHandle {
    tx: Sender<Job>,
    pub stats: Arc<DiskStats>,
}

/// What a persistent write waits for: Ok once synced, or why not.
pub type Saved = oneshot::Receiver<Result<(), String>>;

struct Job {
    changes: Changes,
    wall_ms: u64,
    done: Option<oneshot::Sender<Result<(), String>>>,
    /// The last job: save what is queued, close the file, stop.
    stop: bool,
}

/// The storage thread's end of the queue, until it starts.
pub struct DiskQueue {
    rx: Receiver<Job>,
    stats: Arc<DiskStats>,
}

/// The queue to the storage thread: handles for the shards now, the
/// thread once the store is read back (`Opened::start`).
pub fn queue() -> (DiskHandle, DiskQueue) {
    let (tx, rx) = crossbeam_channel::bounded(STORAGE_QUEUE_JOBS_MAX);
    let stats = Arc::new(DiskStats::default());
    (
        DiskHandle {
            tx,
            stats: stats.clone(),
        },
        DiskQueue { rx, stats },
    )
}

impl DiskHandle {
    /// Whether commits fail now (the last one did).
    pub fn failing(&self) -> bool {
        self.stats.failing.load(Relaxed)
    }

    pub fn last_error(&self) -> String {
        self.stats
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Whether more rows wait for the storage thread than
    /// `UNSAVED_ROWS_MAX` (and it is not failing): then every write waits
    /// for its save.
    pub fn behind(&self) -> bool {
        // A failing store pauses saving behind; it does not stop writes.
        !self.failing() && self.stats.unsaved_rows.load(Relaxed) > UNSAVED_ROWS_MAX
    }

    /// Saves `changes` and answers once they are committed and synced.
    pub fn save_durable(&self, changes: Changes, wall_ms: u64) -> Result<Saved, String> {
        self.stats
            .unsaved_rows
            .fetch_add(changes.rows() as u64, Relaxed);
        let (tx, rx) = oneshot::channel();
        let job = Job {
            changes,
            wall_ms,
            done: Some(tx),
            stop: false,
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(j)) => {
                self.stats
                    .unsaved_rows
                    .fetch_sub(j.changes.rows() as u64, Relaxed);
                Err("the store's queue is full".into())
            }
            Err(TrySendError::Disconnected(_)) => Err("the store is closed".into()),
        }
    }

    /// Asks the storage thread to save what is queued and stop.
    pub fn stop(&self) {
        let _ = self.tx.send(Job {
            changes: Changes::default(),
            wall_ms: 0,
            done: None,
            stop: true,
        });
    }

    /// Saves `changes` behind: no one waits for them.
    pub fn save_behind(&self, changes: Changes, wall_ms: u64) {
        let rows = changes.rows() as u64;
        self.stats.unsaved_rows.fetch_add(rows, Relaxed);
        let job = Job {
            changes,
            wall_ms,
            done: None,
            stop: false,
        };
        if self
            .tx
            .send_timeout(job, Duration::from_millis(SAVE_BEHIND_WAIT_MS))
            .is_err()
        {
            self.stats.unsaved_rows.fetch_sub(rows, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
            tracing::warn!("store queue full: a save-behind batch was dropped");
        }
    }
}

/// An open store: the database, and what the last run left in it.
pub struct Opened {
    file: PathBuf,
    db: Database,
    /// The clock to observe: above every version issued before.
    pub clock: u64,
}

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(CACHE_BYTES);
    // A damaged file is an error at start, not a panic.
    b.set_check_integrity_on_open(true);
    b
}

/// The error of a store file that cannot be read, with how to start empty.
pub fn unreadable(file: &Path, e: impl std::fmt::Display) -> DiskError {
    DiskError::Unreadable {
        file: file.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Opens (or creates) the store in `dir` and checks its format.
pub fn open(dir: &Path) -> Result<Opened, DiskError> {
    std::fs::create_dir_all(dir).map_err(|source| DiskError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let file = dir.join(STORE_FILE);
    let db = match builder().create(&file) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(DiskError::InUse { file }),
        Err(redb::DatabaseError::UpgradeRequired(v)) => {
            return Err(unreadable(
                &file,
                format!("it was written by an incompatible redb (file format {v})"),
            ))
        }
        Err(e) => return Err(unreadable(&file, e)),
    };
    let bad = |e: redb::Error| unreadable(&file, e);
    let txn = db.begin_write().map_err(|e| bad(e.into()))?;
    let (format, clock, wall) = {
        let mut meta = txn.open_table(META).map_err(|e| bad(e.into()))?;
        let get =
            |k: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(k)?.map(|v| v.value())) };
        let format = get("format").map_err(bad)?;
        let clock = get("clock").map_err(bad)?.unwrap_or(0);
        let wall = get("wall_ms").map_err(bad)?.unwrap_or(0);
        if format.is_none() {
            meta.insert("format", FORMAT_VERSION)
                .map_err(|e| bad(e.into()))?;
        }
        (format, clock, wall)
    };
    match format {
        Some(FORMAT_VERSION) => {}
        // A new file: create the tables.
        None => {
            txn.open_table(INSTANCE_ROWS).map_err(|e| bad(e.into()))?;
            txn.open_table(SERVICES).map_err(|e| bad(e.into()))?;
        }
        Some(from @ (1 | 2)) => {
            let n = upgrade(&txn, from).map_err(|e| unreadable(&file, e))?;
            tracing::info!(
                file = %file.display(),
                rows = n,
                "store rewritten from row format {from} to {FORMAT_VERSION}"
            );
        }
        Some(other) => {
            return Err(unreadable(
                &file,
                format!(
                    "its row format is {other}, this node reads format {FORMAT_VERSION} \
                     (written by an incompatible version of distro-registry)"
                ),
            ))
        }
    }
    txn.commit().map_err(|e| bad(e.into()))?;
    Ok(Opened {
        file,
        db,
        clock: crate::store::journal::resume_clock(clock, wall),
    })
}

/// Rewrites the instance rows of format 1 (keyed by service and
/// instance) or 2 (keyed by version, JSON records) as format 3's.
fn upgrade(txn: &redb::WriteTransaction, from: u64) -> Result<usize, String> {
    let err = |e: redb::Error| e.to_string();
    let mut n = 0;
    {
        let mut new = txn.open_table(INSTANCE_ROWS).map_err(|e| err(e.into()))?;
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let mut put = |svc: &str, inst: &str, row: &[u8]| -> Result<(), String> {
            let r = crate::store::journal::decode_instance_json(inst, row)
                .map_err(|e| format!("service {svc}: bad instance row {inst}: {e}"))?;
            row_key_bytes((r.version.hlc, r.version.writer, svc, inst), &mut key);
            value.clear();
            crate::store::journal::encode_record(&r, &mut value);
            new.insert(key.as_slice(), value.as_slice())
                .map_err(|e| err(e.into()))?;
            n += 1;
            Ok(())
        };
        if from == 1 {
            let old = txn.open_table(INSTANCES_V1).map_err(|e| err(e.into()))?;
            for e in old.iter().map_err(|e| err(e.into()))? {
                let (k, v) = e.map_err(|e| err(e.into()))?;
                let (svc, inst) = k.value();
                put(svc, inst, v.value())?;
            }
        } else {
            let old = txn.open_table(INSTANCES_V2).map_err(|e| err(e.into()))?;
            for e in old.iter().map_err(|e| err(e.into()))? {
                let (k, v) = e.map_err(|e| err(e.into()))?;
                let (_, _, svc, inst) = k.value();
                put(svc, inst, v.value())?;
            }
        }
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert("format", FORMAT_VERSION)
            .map_err(|e| err(e.into()))?;
    }
    let deleted = if from == 1 {
        txn.delete_table(INSTANCES_V1)
    } else {
        txn.delete_table(INSTANCES_V2)
    };
    deleted.map_err(|e| err(e.into()))?;
    Ok(n)
}

/// What `load` read back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Loaded {
    pub services: usize,
    pub rows: usize,
}

impl Opened {
    /// Reads every row back and hands each service, whole, to
    /// `dispatch` (which routes it to its shard). Rows superseded by a
    /// newer row of the same instance are deleted.
    pub fn load(&self, mut dispatch: impl FnMut(SavedService)) -> Result<Loaded, DiskError> {
        let bad = |e: redb::Error| unreadable(&self.file, e);
        let txn = self.db.begin_read().map_err(|e| bad(e.into()))?;
        let services = txn.open_table(SERVICES).map_err(|e| bad(e.into()))?;
        let instances = txn.open_table(INSTANCE_ROWS).map_err(|e| bad(e.into()))?;
        let mut rows: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
        for e in services.iter().map_err(|e| bad(e.into()))? {
            let (k, v) = e.map_err(|e| bad(e.into()))?;
            rows.insert(k.value().to_string(), v.value().to_vec());
        }
        let mut loaded = Loaded {
            services: 0,
            rows: rows.len(),
        };
        let mut group = Regroup::new(rows);
        for e in instances.iter().map_err(|e| bad(e.into()))? {
            let (k, v) = e.map_err(|e| bad(e.into()))?;
            loaded.rows += 1;
            let key = parse_row_key(k.value()).ok_or_else(|| {
                unreadable(
                    &self.file,
                    format!("an instance row has a malformed key ({:02x?})", k.value()),
                )
            })?;
            group.instance(key, v.value());
        }
        let (services, leftovers) = group.finish(&mut dispatch);
        loaded.services = services;
        drop((instances, services, txn));
        if !leftovers.is_empty() {
            let txn = self.db.begin_write().map_err(|e| bad(e.into()))?;
            {
                let mut t = txn.open_table(INSTANCE_ROWS).map_err(|e| bad(e.into()))?;
                let mut key = Vec::new();
                for (h, w, s, i) in &leftovers {
                    row_key_bytes((*h, *w, s.as_str(), i.as_str()), &mut key);
                    t.remove(key.as_slice()).map_err(|e| bad(e.into()))?;
                }
            }
            txn.commit().map_err(|e| bad(e.into()))?;
            tracing::info!(rows = leftovers.len(), "superseded instance rows deleted");
        }
        Ok(loaded)
    }

    /// Starts the storage thread on `queue`; it stops at a handle's
    /// `stop` (or once every handle is gone), after saving what was queued.
    pub fn start(self, queue: DiskQueue) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || storage_loop(self, queue.rx, queue.stats))
    }
}

fn storage_loop(opened: Opened, rx: Receiver<Job>, stats: Arc<DiskStats>) {
    let Opened { file, db, .. } = opened;
    let mut db = Some(db);
    let mut pending: Vec<Job> = Vec::new();
    let file_len = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    stats.file_bytes.store(file_len(&file), Relaxed);
    let mut open = true;
    let mut last_commit = Instant::now();
    // Tries of a failing disk left once told to stop.
    let mut tries_left = STOP_TRIES_MAX;
    while open || !pending.is_empty() {
        let first = if pending.is_empty() {
            match rx.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            }
        } else {
            // Failing: wait before the next try, taking what arrives.
            match rx.recv_timeout(Duration::from_millis(RETRY_MS)) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            }
        };
        pending.extend(first);
        let mut taken = 1;
        while taken < GROUP_COMMIT_JOBS_MAX {
            match rx.try_recv() {
                Ok(j) => pending.push(j),
                Err(_) => break,
            }
            taken += 1;
        }
        // Changes saved behind wait for the others of their commit gap:
        // fewer, larger commits (each rewrites every page it touches).
        let due = last_commit + Duration::from_millis(COMMIT_GAP_BEHIND_MS);
        while open && pending.iter().all(|j| j.done.is_none() && !j.stop) {
            match rx.recv_deadline(due) {
                Ok(j) => pending.push(j),
                Err(_) => break,
            }
        }
        if pending.iter().any(|j| j.stop) {
            open = false;
            pending.retain(|j| !j.stop);
        }
        if pending.is_empty() {
            continue;
        }
        if !open {
            tries_left = tries_left.saturating_sub(1);
            if tries_left == 0 {
                tracing::error!(
                    unsaved = pending.len(),
                    "store stopping while it cannot write: changes lost"
                );
                break;
            }
        }
        if pending.len() > RETRY_JOBS_MAX {
            let over = pending.len() - RETRY_JOBS_MAX;
            for j in pending.drain(..over) {
                stats
                    .unsaved_rows
                    .fetch_sub(j.changes.rows() as u64, Relaxed);
                if let Some(done) = j.done {
                    let _ = done.send(Err("the store could not keep up".into()));
                }
            }
            stats.dropped.fetch_add(over as u64, Relaxed);
            tracing::error!(
                dropped = over,
                "store failing: oldest unsaved changes dropped"
            );
        }
        if db.is_none() {
            db = match builder().create(&file) {
                Ok(d) => Some(d),
                Err(e) => {
                    fail(
                        &stats,
                        &mut pending,
                        &format!("cannot reopen {}: {e}", file.display()),
                    );
                    continue;
                }
            };
        }
        let started = Instant::now();
        last_commit = started;
        let result = commit(db.as_ref().expect("opened above"), &pending);
        match result {
            Ok(rows) => {
                stats.commits.fetch_add(1, Relaxed);
                stats.rows_written.fetch_add(rows as u64, Relaxed);
                stats
                    .commit_us
                    .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                stats.file_bytes.store(file_len(&file), Relaxed);
                if stats.failing.swap(false, Relaxed) {
                    tracing::warn!(file = %file.display(), "store writable again");
                }
                stats.unsaved_rows.fetch_sub(rows as u64, Relaxed);
                for j in pending.drain(..) {
                    if let Some(done) = j.done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                // redb wants a reopen after an I/O error.
                db = None;
                fail(&stats, &mut pending, &format!("{}: {e}", file.display()));
            }
        }
    }
    if let Some(db) = db {
        if let Err(e) = db.close() {
            tracing::warn!(error = %e, "store close failed");
        }
    }
}

/// A commit failed: waiters hear why; the jobs stay for the next try.
fn fail(stats: &DiskStats, pending: &mut [Job], why: &str) {
    stats.errors.fetch_add(1, Relaxed);
    if !stats.failing.swap(true, Relaxed) {
        tracing::warn!(
            error = why,
            "store cannot write: persistent writes refused (503), ephemeral saving paused"
        );
    }
    if let Ok(mut e) = stats.last_error.lock() {
        *e = why.to_string();
    }
    for j in pending.iter_mut() {
        if let Some(done) = j.done.take() {
            let _ = done.send(Err(why.to_string()));
        }
    }
}

/// The store file's tables as a `RowSink`.
struct Tables<'t> {
    instances: redb::Table<'t, &'static [u8], &'static [u8]>,
    /// The key being written (`row_key_bytes`).
    key: Vec<u8>,
    services: redb::Table<'t, &'static str, &'static [u8]>,
}

impl RowSink for Tables<'_> {
    type Error = redb::Error;
    fn put_service(&mut self, key: &str, row: &[u8]) -> Result<(), Self::Error> {
        self.services.insert(key, row)?;
        Ok(())
    }
    fn delete_service(&mut self, key: &str) -> Result<(), Self::Error> {
        self.services.remove(key)?;
        Ok(())
    }
    fn put_instance(&mut self, key: RowKey<'_>, row: &[u8]) -> Result<(), Self::Error> {
        row_key_bytes(key, &mut self.key);
        self.instances.insert(self.key.as_slice(), row)?;
        Ok(())
    }
    fn delete_instance(&mut self, key: RowKey<'_>) -> Result<(), Self::Error> {
        row_key_bytes(key, &mut self.key);
        self.instances.remove(self.key.as_slice())?;
        Ok(())
    }
}

/// Writes every job's rows in one transaction and syncs it. Returns the
/// rows written.
fn commit(db: &Database, jobs: &[Job]) -> Result<usize, redb::Error> {
    let txn = db.begin_write()?;
    let mut rows = 0;
    {
        let mut tables = Tables {
            instances: txn.open_table(INSTANCE_ROWS)?,
            key: Vec::with_capacity(128),
            services: txn.open_table(SERVICES)?,
        };
        let mut meta = txn.open_table(META)?;
        let mut clock = meta.get("clock")?.map(|v| v.value()).unwrap_or(0);
        let mut wall = 0;
        for job in jobs {
            clock = clock.max(job.changes.clock);
            wall = wall.max(job.wall_ms);
            rows += job.changes.write_to(&mut tables)?;
        }
        meta.insert("clock", clock)?;
        if wall > 0 {
            meta.insert("wall_ms", wall)?;
        }
    }
    txn.commit()?;
    Ok(rows)
}
