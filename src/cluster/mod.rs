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
use crate::distro::members::{Member, Membership};

/// Shard id bits in a writer id: writer = node index << 8 | shard.
pub const WRITER_SHARD_BITS: u32 = 8;

/// What every shard of a clustered node shares.
pub struct ClusterShared {
    /// This node's address as the members list names it.
    pub me: String,
    /// Every configured member, this node included, sorted (the index of
    /// an address is its node index in writer ids).
    pub all: Vec<String>,
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
}

impl ClusterShared {
    pub fn new(me: &str, peers: &[String], token: &str) -> ClusterShared {
        let members = Membership::new(me, peers);
        let all = members
            .members()
            .iter()
            .map(|m| m.address.clone())
            .collect();
        ClusterShared {
            me: me.to_string(),
            all,
            token: token.to_string(),
            epoch: AtomicU64::new(members.epoch()),
            members: Mutex::new(members),
            ready: AtomicBool::new(false),
            parts_settled: AtomicUsize::new(0),
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

    /// Index of a member address in the sorted member list.
    pub fn node_index(&self, address: &str) -> Option<u32> {
        self.all.iter().position(|a| a == address).map(|i| i as u32)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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
}

/// A shard's copy of the healthy list: ownership is computed from it
/// without a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub epoch: u64,
    pub healthy: Vec<String>,
    pub me: String,
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
