//! A clustered shard's own part: its view of the healthy list, its task
//! map, its beat-relay queues, its peer client, and the sending of what
//! they decide. All of it lives on the shard's thread.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::client::{PeerClient, PeerRequest};
use super::{ClusterShared, View, WRITER_SHARD_BITS};
use crate::distro::leases::{HolderWatch, LEASE_HOLDER_GRACE_MS, STRANGER_SCAN_MS};
use crate::distro::tasks::{TaskConfig, TaskMap};
use crate::distro::verify::keys_to_fetch;
use crate::reply::Reply;
use crate::shard::{now_ms, ShardCtx};
use crate::store::datum::Datum;
use crate::store::instance::InstanceAddr;
use crate::store::instance::LeasePolicy;
use crate::store::service::ServiceId;
use crate::store::Op;

/// Replication batch body, bytes: a batch is cut before it grows past
/// this (one datum larger than it is still sent, alone).
pub const DATUM_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Relayed beats waiting for one owner on one shard; past it new ones are
/// dropped and counted (the client beats again within 5 s).
pub const RELAY_QUEUE_MAX: usize = 100_000;
/// Relayed beats per request to the owner.
pub const RELAY_BATCH_MAX: usize = 10_000;
/// Services kept per DOWN member for when it turns UP; past it the rest
/// reaches it with the verify rounds.
pub const MISSED_KEYS_MAX: usize = 100_000;
/// Relayed beats are sent at least this often (SPEC 4.3: within 500 ms).
pub const RELAY_FLUSH_MS: u64 = 200;

/// A beat relayed to the owner: (namespace, group, service, ip, port,
/// cluster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayedBeat(
    pub String,
    pub String,
    pub String,
    pub String,
    pub u16,
    pub String,
);

impl RelayedBeat {
    pub fn op(self) -> Op {
        let RelayedBeat(ns, group, name, ip, port, cluster) = self;
        Op::Beat {
            svc: ServiceId::new(&ns, &group, &name),
            addr: InstanceAddr { ip, port, cluster },
            beat: None,
        }
    }
}

/// A shard's mutable cluster state.
pub struct ShardCluster {
    pub view: View,
    pub tasks: TaskMap,
    relay: HashMap<String, Vec<RelayedBeat>>,
    relay_flushed_ms: u64,
    /// Services changed here while a member was DOWN, per member, handed to
    /// it when it turns UP (issue 14, item 5): an owner's early verify
    /// round does not list a service that moved away from it meanwhile.
    missed: HashMap<String, HashSet<String>>,
    /// Failed replication sends in a row, per peer (the backoff exponent).
    peer_failures: HashMap<String, u32>,
    /// Since when members are out of the healthy list (for the leases of
    /// the connections they hold).
    holders: HolderWatch,
    /// When this shard last looked for holders that are not members.
    strangers_scanned_ms: u64,
    /// The sign of a member-list disagreement (`ClusterShared::disagreed_ms`)
    /// this shard last gave its owned instances a fresh timeout for.
    disagreement_granted_ms: u64,
}

/// What a clustered shard holds besides its store.
pub struct ClusterCtx {
    pub state: RefCell<ShardCluster>,
    pub client: PeerClient,
    /// Sources whose verify round this shard is processing (one at a time
    /// per source; a round arriving meanwhile is skipped).
    verifying: RefCell<HashSet<String>>,
}

impl ClusterCtx {
    pub fn new(shared: &ClusterShared, sync_delay_ms: u64) -> ClusterCtx {
        ClusterCtx {
            state: RefCell::new(ShardCluster {
                view: shared.view(),
                tasks: TaskMap::new(TaskConfig {
                    sync_delay_ms,
                    ..TaskConfig::default()
                }),
                relay: HashMap::new(),
                relay_flushed_ms: 0,
                missed: HashMap::new(),
                peer_failures: HashMap::new(),
                holders: HolderWatch::default(),
                strangers_scanned_ms: 0,
                disagreement_granted_ms: 0,
            }),
            client: PeerClient::new(shared.token()),
            verifying: RefCell::new(HashSet::new()),
        }
    }
}

impl ShardCtx {
    /// The writer id of this shard's versions.
    pub fn writer_id(&self) -> u64 {
        let node = self.shared.cluster.as_ref().map_or(0, |c| c.node_id);
        crate::distro::hlc::writer_id(node, self.id)
    }

    /// Brings the shard's view up to the membership's epoch. Services this
    /// node has just become the owner of get the ownership grace.
    pub fn refresh_view(&self, now_ms: u64) {
        let (Some(shared), Some(cl)) = (&self.shared.cluster, &self.cluster) else {
            return;
        };
        if cl.state.borrow().view.epoch == shared.epoch() {
            return;
        }
        let new = shared.view();
        let old = std::mem::replace(&mut cl.state.borrow_mut().view, new.clone());
        let granted = self
            .state
            .borrow_mut()
            .store
            .grant_ownership_grace(now_ms, |g| new.owns(g) && !old.owns(g));
        let mut st = cl.state.borrow_mut();
        let mut handed = 0;
        for peer in new.healthy.iter().filter(|p| !old.healthy.contains(p)) {
            if let Some(keys) = st.missed.remove(peer) {
                handed += keys.len();
                for k in keys {
                    st.tasks.mark(&k, std::slice::from_ref(peer), now_ms);
                }
            }
        }
        st.missed.retain(|p, _| new.down.contains(p));
        for gone in old.healthy.iter().filter(|p| !new.healthy.contains(p)) {
            st.tasks.forget_peer(gone);
            st.relay.remove(gone);
            cl.client.forget(gone);
        }
        tracing::info!(shard = self.id, epoch = new.epoch, healthy = ?new.healthy, granted, handed, "member view changed");
    }

    /// The owner of a grouped service when it is another node.
    pub fn remote_owner(&self, grouped: &str) -> Option<String> {
        let cl = self.cluster.as_ref()?;
        self.refresh_view(now_ms());
        let st = cl.state.borrow();
        let owner = st.view.owner(grouped);
        (owner != st.view.me).then(|| owner.to_string())
    }

    /// A local change to a service: replicate it to every healthy peer
    /// after the sync delay.
    pub fn mark_changed(&self, full_key: &str, now_ms: u64) {
        if let Some(cl) = &self.cluster {
            let mut st = cl.state.borrow_mut();
            let others = st.view.others();
            st.tasks.mark(full_key, &others, now_ms);
            let st = &mut *st;
            for p in &st.view.down {
                let keys = st.missed.entry(p.clone()).or_default();
                if keys.len() < MISSED_KEYS_MAX && !keys.contains(full_key) {
                    keys.insert(full_key.to_string());
                }
            }
        }
    }

    /// SPEC 4.3: a beat for a service owned by `owner`. When this shard
    /// knows the instance, the beat is queued for the owner and answered
    /// now; otherwise None (the caller forwards it synchronously).
    pub fn relay_beat(&self, op: Op, owner: String) -> Option<Reply> {
        let cl = self.cluster.as_ref()?;
        let Op::Beat { svc, addr, .. } = op else {
            return None;
        };
        let interval = self
            .state
            .borrow()
            .store
            .known_instance(svc.full_key(), &addr.key())?;
        let mut st = cl.state.borrow_mut();
        let queue = st.relay.entry(owner).or_default();
        if queue.len() < RELAY_QUEUE_MAX {
            queue.push(RelayedBeat(
                svc.namespace().to_string(),
                svc.group().to_string(),
                svc.name().to_string(),
                addr.ip,
                addr.port,
                addr.cluster,
            ));
            self.stats().beats_relayed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats().relay_dropped.fetch_add(1, Ordering::Relaxed);
        }
        Some(crate::store::beat_reply(10200, interval))
    }

    /// Starts processing a verify round from `source`; false when one is
    /// still running.
    pub fn begin_verify(&self, source: &str) -> bool {
        match &self.cluster {
            Some(cl) => cl.verifying.borrow_mut().insert(source.to_string()),
            None => false,
        }
    }

    pub fn end_verify(&self, source: &str) {
        if let Some(cl) = &self.cluster {
            cl.verifying.borrow_mut().remove(source);
        }
    }

    /// Checksums of the services this shard holds and this node owns.
    pub fn owned_checksums(&self) -> Vec<(String, u64)> {
        let Some(cl) = &self.cluster else {
            return Vec::new();
        };
        self.refresh_view(now_ms());
        let view = cl.state.borrow().view.clone();
        let st = self.state.borrow();
        let (services, instances) = st.store.owned_counts(|g| view.owns(g));
        let stats = self.stats();
        stats
            .responsible_services
            .store(services as u64, Ordering::Relaxed);
        stats
            .responsible_instances
            .store(instances as u64, Ordering::Relaxed);
        st.store.checksums(|g| view.owns(g))
    }

    /// This shard's part of a verify round from `source`: the keys to
    /// fetch, after the conditional drop (only when both nodes see the
    /// same healthy list, so agree on what `source` owns).
    pub fn verify_shard(
        &self,
        source: &str,
        source_node: u64,
        round: u64,
        same_view: bool,
        theirs: Vec<(String, u64)>,
    ) -> Vec<String> {
        let Some(cl) = &self.cluster else {
            return Vec::new();
        };
        let view = cl.state.borrow().view.clone();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let fetch = keys_to_fetch(&theirs, |k| st.store.checksum(k));
        if same_view {
            let listed: HashSet<&str> = theirs.iter().map(|(k, _)| k.as_str()).collect();
            let dropped = st.store.drop_unlisted(
                source_node,
                WRITER_SHARD_BITS,
                round,
                |g| view.owner(g) == source,
                |k| listed.contains(k),
            );
            let now = now_ms();
            for k in &dropped {
                tracing::info!(shard = self.id, service = %k, %source, "dropped: its owner no longer lists it");
                st.push.changed(k, now);
            }
            // What the owner does not list but this node keeps (written
            // elsewhere while the owner was away): the owner has to learn
            // it, so it is replicated back.
            let missing: Vec<String> = st
                .store
                .checksums(|g| view.owner(g) == source)
                .into_iter()
                .filter(|(k, _)| !listed.contains(k.as_str()))
                .map(|(k, _)| k)
                .collect();
            let mut cs = cl.state.borrow_mut();
            for k in missing {
                cs.tasks.mark(&k, &[source.to_string()], now);
            }
        }
        fetch
    }

    /// After a verify fetch from `source` was merged: services whose copy
    /// here still differs from the source's checksum hold records the
    /// source lacks (written here or elsewhere while it was away), so they
    /// are replicated back to it.
    pub fn repair_owner(&self, source: &str, theirs: &[(String, u64)]) -> usize {
        let Some(cl) = &self.cluster else {
            return 0;
        };
        let st = self.state.borrow();
        let now = now_ms();
        let mut tasks = cl.state.borrow_mut();
        let mut n = 0;
        for (k, sum) in theirs {
            if st.store.checksum(k).is_some_and(|mine| mine != *sum) {
                tasks.tasks.mark(k, &[source.to_string()], now);
                n += 1;
            }
        }
        n
    }

    /// Merges peers' datums into this shard's store. Services of which
    /// `source` (the sender) had an older copy are replicated back to it
    /// (read repair, `Store::merge_from_peer`).
    pub fn merge_datums(&self, datums: Vec<Datum>, source: Option<&str>, now_ms: u64) -> usize {
        let mut merged = 0;
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let mut stale = Vec::new();
        for d in datums {
            let key = ServiceId::new(&d.namespace, &d.group, &d.name);
            let (changed, older) = st.store.merge_from_peer(d, now_ms);
            if changed {
                merged += 1;
                st.push.changed(key.full_key(), now_ms);
            }
            if older {
                stale.push(key.full_key().to_string());
            }
        }
        if let (Some(source), Some(cl), false) = (source, &self.cluster, stale.is_empty()) {
            let mut cs = cl.state.borrow_mut();
            let to = [source.to_string()];
            for k in &stale {
                cs.tasks.mark(k, &to, now_ms);
            }
            self.stats()
                .read_repairs
                .fetch_add(stale.len() as u64, Ordering::Relaxed);
        }
        self.stats()
            .datums_merged
            .fetch_add(merged as u64, Ordering::Relaxed);
        merged
    }

    /// Retires the instances of connections whose holder is gone (or is
    /// this node's earlier incarnation), and replicates again what merges
    /// re-versioned for this node's live connections.
    fn apply_lease_policy(&self, now_ms: u64) {
        let (Some(shared), Some(cl)) = (&self.shared.cluster, &self.cluster) else {
            return;
        };
        let policy = {
            let mut st = cl.state.borrow_mut();
            let st = &mut *st;
            let members: Vec<String> =
                shared.with_members(|m| m.members().iter().map(|x| x.address.clone()).collect());
            st.holders.observe(&members, &st.view.healthy, now_ms);
            if now_ms >= st.strangers_scanned_ms + STRANGER_SCAN_MS {
                st.strangers_scanned_ms = now_ms;
                let holders = self.state.borrow().store.lease_holders();
                st.holders.observe_holders(&holders, &shared.me, now_ms);
            }
            LeasePolicy {
                me: shared.me.clone(),
                boot: self.shared.boot_ms,
                gone: st.holders.gone(now_ms, LEASE_HOLDER_GRACE_MS),
            }
        };
        let (retired, reasserted) = {
            let mut st = self.state.borrow_mut();
            let retired = st.store.set_lease_policy(policy, now_ms);
            for k in &retired {
                st.push.changed(k, now_ms);
            }
            (retired, st.store.take_reasserted())
        };
        if !retired.is_empty() {
            tracing::info!(
                shard = self.id,
                services = retired.len(),
                "retired the instances of connections whose holder is gone"
            );
        }
        for k in retired.iter().chain(&reasserted) {
            self.mark_changed(k, now_ms);
        }
    }

    /// While another node works from another member list, a service may
    /// have two owners and the beats reach only one: each new sign of the
    /// disagreement gives the instances of the services this shard owns a
    /// fresh timeout (docs/distro.md, membership changes).
    fn grant_while_lists_disagree(&self, now_ms: u64) {
        let (Some(shared), Some(cl)) = (&self.shared.cluster, &self.cluster) else {
            return;
        };
        let seen = shared.disagreed_ms.load(Ordering::Acquire);
        let view = {
            let mut st = cl.state.borrow_mut();
            if seen <= st.disagreement_granted_ms {
                return;
            }
            st.disagreement_granted_ms = seen;
            st.view.clone()
        };
        let refreshed = self
            .state
            .borrow_mut()
            .store
            .grant_ownership_grace(now_ms, |g| view.owns(g));
        tracing::debug!(
            shard = self.id,
            refreshed,
            "member lists disagree: owned instances get a fresh timeout"
        );
    }

    /// The cluster's part of the housekeeping tick: view, due replication,
    /// relayed beats.
    pub fn cluster_tick(self: &Rc<Self>, now_ms: u64) {
        let Some(cl) = &self.cluster else {
            return;
        };
        self.refresh_view(now_ms);
        self.grant_while_lists_disagree(now_ms);
        self.apply_lease_policy(now_ms);
        let batches = cl.state.borrow_mut().tasks.due(now_ms);
        for (peer, services) in batches {
            let state = self.state.borrow();
            let store = &state.store;
            let mut body = Vec::with_capacity(4096);
            let mut in_body = Vec::new();
            for key in services {
                let Some(d) = store.datum(&key) else {
                    continue;
                };
                if !in_body.is_empty() && body.len() >= DATUM_BATCH_BYTES_MAX {
                    body.push(b']');
                    let chunk = std::mem::take(&mut in_body);
                    monoio::spawn(send_datums(self.clone(), peer.clone(), chunk, body));
                    body = Vec::with_capacity(4096);
                }
                body.push(if in_body.is_empty() { b'[' } else { b',' });
                serde_json::to_writer(&mut body, &d).expect("datum serializes");
                in_body.push(key);
            }
            if !in_body.is_empty() {
                body.push(b']');
                monoio::spawn(send_datums(self.clone(), peer.clone(), in_body, body));
            }
        }
        let flush = {
            let mut st = cl.state.borrow_mut();
            if now_ms.saturating_sub(st.relay_flushed_ms) < RELAY_FLUSH_MS {
                Vec::new()
            } else {
                st.relay_flushed_ms = now_ms;
                let mut out = Vec::new();
                for (owner, queue) in st.relay.iter_mut() {
                    while !queue.is_empty() {
                        let n = queue.len().min(RELAY_BATCH_MAX);
                        out.push((owner.clone(), queue.drain(..n).collect::<Vec<_>>()));
                    }
                }
                out
            }
        };
        for (owner, beats) in flush {
            monoio::spawn(send_beats(self.clone(), owner, beats));
        }
    }
}

async fn send_datums(ctx: Rc<ShardCtx>, peer: String, services: Vec<String>, body: Vec<u8>) {
    let cl = ctx.cluster.as_ref().expect("clustered");
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let path = format!("/nacos/v1/ns/distro/datum?{}", shared.source_param());
    let req = PeerRequest::json("PUT", &path, &body);
    let result = cl.client.send(&peer, &req).await;
    let stats = ctx.stats();
    let mut st = cl.state.borrow_mut();
    match result {
        Ok(r) if r.status == 200 => {
            stats
                .datums_sent
                .fetch_add(services.len() as u64, Ordering::Relaxed);
            st.peer_failures.remove(&peer);
        }
        other => {
            stats.datum_send_failures.fetch_add(1, Ordering::Relaxed);
            let why = match other {
                Ok(r) => format!("status {}", r.status),
                Err(e) => e.to_string(),
            };
            tracing::debug!(shard = ctx.id, %peer, services = services.len(), %why, "replication failed");
            // Retried with backoff while the peer is a healthy member; a
            // member that comes back is repaired by the verify rounds.
            if st.view.healthy.contains(&peer) {
                let attempts = st.peer_failures.entry(peer.clone()).or_insert(0);
                let a = *attempts;
                *attempts += 1;
                st.tasks.failed(&peer, services, a, now_ms());
            }
        }
    }
}

async fn send_beats(ctx: Rc<ShardCtx>, owner: String, beats: Vec<RelayedBeat>) {
    let cl = ctx.cluster.as_ref().expect("clustered");
    let body = serde_json::to_vec(&beats).expect("beats serialize");
    let req = PeerRequest::json("PUT", "/nacos/v1/ns/distro/beats", &body);
    match cl.client.send(&owner, &req).await {
        Ok(r) if r.status == 200 => {}
        other => {
            // Not retried: the clients beat again; if the owner is gone the
            // new owner grants a full timeout (ownership grace).
            ctx.stats()
                .relay_dropped
                .fetch_add(beats.len() as u64, Ordering::Relaxed);
            tracing::debug!(shard = ctx.id, %owner, result = ?other.map(|r| r.status), "beat relay failed");
        }
    }
}
