//! The cluster's I/O side (docs/distro.md): the state every shard shares
//! (membership behind a lock touched a few times a second, readiness), the
//! per-shard view used on the hot path, the peer client, the peer
//! endpoints and the loops that report, replicate, verify and load the
//! startup snapshot. The decisions are made by the pure `distro` modules
//! and the `Store`; this code moves their messages.

pub mod client;
pub mod driver;
pub mod peer_api;
pub mod shard;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use crate::distro::hash::owner_index;
use crate::distro::members::{ListChange, Member, Membership};

pub use crate::distro::hlc::WRITER_SHARD_BITS;

/// How often a node started with `--cluster-conf` looks at the file for a
/// new member list (issue 14; SIGHUP makes it look at once).
pub const CONF_POLL_MS: u64 = 1_000;
/// A cluster.conf larger than this is refused (a member is one short line).
pub const CONF_BYTES_MAX: u64 = 1024 * 1024;

/// Member-list reloads, by result.
#[derive(Default)]
pub struct ReloadStats {
    pub applied: AtomicU64,
    pub unchanged: AtomicU64,
    pub refused: AtomicU64,
}

/// What every shard of a clustered node shares.
pub struct ClusterShared {
    /// This node's address as the members list names it.
    pub me: String,
    /// Its node id (`hlc::node_id`), in every version it writes.
    pub node_id: u64,
    /// The member list this node started with, sorted: the positions that
    /// old (store format 1) writer ids name.
    pub start_sorted: Vec<String>,
    /// The `--cluster-conf` file, re-read when it changes (None: `--peers`,
    /// a fixed list).
    pub conf: Option<std::path::PathBuf>,
    pub reloads: ReloadStats,
    /// What the file held (or why it could not be read) when last read.
    conf_last: Mutex<Option<Result<String, String>>>,
    token: String,
    members: Mutex<Membership>,
    /// Mirror of the membership epoch: shards compare it with their view's.
    epoch: AtomicU64,
    /// Readiness (SPEC 4.6): false until the startup snapshot is loaded
    /// or no peer answered for long enough.
    pub ready: AtomicBool,
    /// Shards whose part of the startup snapshot is settled (loaded, or
    /// given up on); the node is ready when all are.
    parts_settled: AtomicUsize,
    /// The latest sign, while it holds expiry back, that another node works
    /// from another member list (`lists_disagree`); 0 before any.
    pub disagreed_ms: AtomicU64,
    /// The end of the current disagreement's hold was logged.
    hold_over_logged: AtomicBool,
}

impl ClusterShared {
    /// `source=<this node>` for a peer request's query.
    pub fn source_param(&self) -> String {
        let me: String = form_urlencoded::byte_serialize(self.me.as_bytes()).collect();
        format!("source={me}")
    }

    pub fn new(me: &str, peers: &[String], token: &str) -> ClusterShared {
        let members = Membership::new(me, peers);
        let start_sorted = members
            .members()
            .iter()
            .map(|m| m.address.clone())
            .collect();
        ClusterShared {
            me: me.to_string(),
            node_id: crate::distro::hlc::node_id(me).unwrap_or(0),
            start_sorted,
            conf: None,
            reloads: ReloadStats::default(),
            conf_last: Mutex::new(None),
            token: token.to_string(),
            epoch: AtomicU64::new(members.epoch()),
            members: Mutex::new(members),
            ready: AtomicBool::new(false),
            parts_settled: AtomicUsize::new(0),
            disagreed_ms: AtomicU64::new(0),
            hold_over_logged: AtomicBool::new(false),
        }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Constant-time check of a request's token header (SPEC 4.5).
    pub fn authorized(&self, token: Option<&[u8]>) -> bool {
        match token {
            Some(t) => bool::from(t.ct_eq(self.token.as_bytes())),
            None => false,
        }
    }

    /// Whether an address is in the current member list.
    pub fn is_member(&self, address: &str) -> bool {
        self.with_members(|m| m.is_member(address))
    }

    /// The other members, whatever their state.
    pub fn other_members(&self) -> Vec<String> {
        self.with_members(|m| {
            m.members()
                .iter()
                .filter(|x| x.address != self.me)
                .map(|x| x.address.clone())
                .collect()
        })
    }

    /// Applies a new member list (issue 14) and logs what changed.
    pub fn apply_list(&self, list: &[String], now_ms: u64, source: &str) -> Option<ListChange> {
        match self.with_members(|m| m.set_list(list, now_ms).map(|c| (c, m.list_version()))) {
            Ok((change, _)) if change.is_empty() => {
                self.reloads.unchanged.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%source, "member list unchanged");
                Some(change)
            }
            Ok((change, version)) => {
                self.reloads.applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    %source,
                    version,
                    added = ?change.added,
                    removed = ?change.removed,
                    members = ?self.with_members(|m| m.members().iter().map(|x| x.address.clone()).collect::<Vec<_>>()),
                    "member list changed"
                );
                Some(change)
            }
            Err(e) => {
                self.reloads.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%source, "member list refused: {e}");
                None
            }
        }
    }

    /// Reads the `--cluster-conf` file and applies its list (issue 14). A
    /// file that cannot be read or parsed is refused with a logged reason
    /// and the old list kept. What was read last is remembered: the same
    /// text (or the same error) is not looked at again unless `force`
    /// (SIGHUP).
    pub fn reload_conf(&self, force: bool, now_ms: u64) {
        let Some(path) = self.conf.as_ref() else {
            if force {
                tracing::info!("SIGHUP: the member list is fixed (--peers)");
            }
            return;
        };
        let read = read_conf(path);
        {
            let mut last = self.conf_last.lock().unwrap_or_else(|p| p.into_inner());
            if !force && last.as_ref() == Some(&read) {
                return;
            }
            *last = Some(read.clone());
        }
        let source = path.display().to_string();
        let parsed = read.and_then(|text| {
            crate::distro::conf::parse_cluster_conf(&text).map_err(|e| e.to_string())
        });
        match parsed {
            Ok(list) => {
                self.apply_list(&list, now_ms, &source);
            }
            Err(e) => {
                self.reloads.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%source, "member list refused: {e}; the old list is kept");
            }
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A sign that `from` works from another member list than this node
    /// (`why`: see `distro::members::Disagreement`). While the
    /// disagreement holds expiry back, each shard gives the instances of
    /// the services it owns a fresh timeout (`ShardCtx::cluster_tick`).
    pub fn lists_disagree(&self, from: &str, why: &str, now_ms: u64, report_interval_ms: u64) {
        let (started, holding) =
            self.with_members(|m| m.lists_disagree(now_ms, report_interval_ms));
        if started {
            self.hold_over_logged.store(false, Ordering::Relaxed);
            tracing::info!(%from, why, "member lists disagree: owned instances get fresh timeouts while they do");
        }
        if holding {
            self.disagreed_ms.fetch_max(now_ms, Ordering::Release);
        } else if !self.hold_over_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %from,
                why,
                hold_ms = crate::distro::members::DISAGREEMENT_HOLD_MAX_MS,
                "member lists still disagree: instances expire again; give every node the same member list"
            );
        }
    }

    /// This node's member-list digest, for its reports.
    pub fn list_digest(&self) -> String {
        self.with_members(|m| m.list_digest())
    }

    /// Runs `f` on the membership; publishes the epoch if it changed.
    pub fn with_members<R>(&self, f: impl FnOnce(&mut Membership) -> R) -> R {
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut m);
        self.epoch.store(m.epoch(), Ordering::Release);
        r
    }

    pub fn snapshot_members(&self) -> Vec<Member> {
        self.with_members(|m| m.members().to_vec())
    }

    pub fn view(&self) -> View {
        self.with_members(|m| View {
            epoch: m.epoch(),
            healthy: m.healthy(),
            me: m.me().to_string(),
            down: m
                .members()
                .iter()
                .filter(|x| x.state == crate::distro::members::State::Down)
                .map(|x| x.address.clone())
                .collect(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// One shard's part of the startup snapshot is settled; returns true
    /// when that made the node ready (every one of `parts` settled).
    pub fn part_settled(&self, parts: usize) -> bool {
        let n = self.parts_settled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == parts {
            self.ready.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Sets the `--cluster-conf` file to watch (before the node starts).
    pub fn set_conf(&mut self, path: std::path::PathBuf) {
        self.conf_last = Mutex::new(Some(read_conf(&path)));
        self.conf = Some(path);
    }
}

fn read_conf(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut text = String::new();
    f.take(CONF_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > CONF_BYTES_MAX {
        return Err(format!("it is larger than {CONF_BYTES_MAX} bytes"));
    }
    Ok(text)
}

/// Watches the `--cluster-conf` file (every `CONF_POLL_MS`) on its own
/// thread until shutdown, applying each new member list.
pub fn watch_conf(shared: std::sync::Arc<crate::shard::Shared>) -> std::io::Result<()> {
    if shared.cluster.as_ref().is_none_or(|c| c.conf.is_none()) {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("cluster-conf".into())
        .spawn(move || {
            let c = shared.cluster.as_ref().expect("clustered");
            while !shared.shutdown.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(CONF_POLL_MS));
                c.reload_conf(false, crate::shard::now_ms());
            }
        })
        .map(|_| ())
}

/// A shard's copy of the healthy list: ownership is computed from it
/// without a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub epoch: u64,
    pub healthy: Vec<String>,
    pub me: String,
    /// Members that are DOWN: what is written meanwhile is kept for them
    /// (`ShardCluster::missed`).
    pub down: Vec<String>,
}

impl View {
    /// The member that owns a grouped service name (SPEC 4.2).
    pub fn owner(&self, grouped: &str) -> &str {
        if self.healthy.is_empty() {
            return &self.me;
        }
        &self.healthy[owner_index(grouped, self.healthy.len())]
    }

    pub fn owns(&self, grouped: &str) -> bool {
        self.owner(grouped) == self.me
    }

    /// The healthy members other than this node.
    pub fn others(&self) -> Vec<String> {
        self.healthy
            .iter()
            .filter(|a| **a != self.me)
            .cloned()
            .collect()
    }
}
