//! The cluster loops: every shard's load of its part of the startup
//! snapshot (SPEC 4.6); on shard 0, the member reports (SPEC 4.1) and the
//! verify rounds (SPEC 4.4). Each loop decides nothing itself: `Membership`, the store
//! and `distro::verify` do; the loops send and feed back.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{PeerError, PeerRequest};
use super::peer_api::{merge_everywhere, Checksums};
use crate::distro::hlc;
use crate::distro::members::{ReportOutcome, NOT_ANOTHER_MEMBER};
use crate::distro::startup::{self, Answer, Decision, STARTUP_ALONE_MS};
use crate::shard::router::shard_of;
use crate::shard::{now_ms, ShardCtx};
use crate::store::datum::Datum;
use crate::store::service::ServiceId;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};

/// A snapshot transfer gives up after this long.
pub const SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
/// Pause between snapshot load attempts (SPEC 4.6).
pub const SNAPSHOT_RETRY_MS: u64 = 1_000;

fn stopping(ctx: &ShardCtx) -> bool {
    ctx.shared.shutdown.load(Ordering::Relaxed)
}

/// Starts the loops of a clustered node: every shard loads its part of
/// the startup snapshot; shard 0 also reports and verifies.
pub fn spawn(ctx: &Rc<ShardCtx>) {
    if ctx.shared.cluster.is_none() {
        return;
    }
    monoio::spawn(load_part(ctx.clone()));
    if ctx.id == 0 {
        monoio::spawn(report_when_ready(ctx.clone()));
        monoio::spawn(verify_loop(ctx.clone()));
    }
}

/// How often a loop waiting for readiness looks again.
const READY_POLL_MS: u64 = 20;

async fn report_when_ready(ctx: Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    while !shared.is_ready() {
        if stopping(&ctx) {
            return;
        }
        monoio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
    }
    report_loop(&ctx).await;
}

/// Loads this shard's part of the snapshot (the services it holds) from
/// the first peer that serves one; retries every second. The part is
/// settled when loaded, when every peer that answered is itself starting
/// (the cluster starts together), or after `STARTUP_ALONE_MS`.
async fn load_part(ctx: Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let parts = ctx.shared.inboxes.len();
    let started = Instant::now();
    let target = format!("/nacos/v1/ns/distro/datums?part={}&parts={parts}", ctx.id);
    let others: Vec<String> = shared.other_members();
    let settle = |how: &str, served: bool| {
        let dropped = ctx
            .state
            .borrow_mut()
            .store
            .settle_restored(served, crate::shard::now_ms());
        if dropped > 0 {
            tracing::warn!(
                shard = ctx.id,
                dropped,
                "restored instances no peer holds any more (deleted while this node was down) \
                 dropped"
            );
        }
        if shared.part_settled(parts) {
            tracing::info!(
                shard = ctx.id,
                ms = started.elapsed().as_millis() as u64,
                "startup snapshot settled ({how}); ready"
            );
        }
    };
    loop {
        if stopping(&ctx) {
            return;
        }
        let mut answers = Vec::with_capacity(others.len());
        for peer in &others {
            let req = PeerRequest {
                method: "GET",
                target: &target,
                body: b"",
                json: false,
                forwarded: false,
                user_agent: None,
                timeout_ms: Some(SNAPSHOT_TIMEOUT_MS),
            };
            let t0 = Instant::now();
            match cl.client.send(peer, &req).await {
                Ok(r) if r.status == 200 => {
                    let received_ms = t0.elapsed().as_millis() as u64;
                    match merge_stream(&ctx, &r.body).await {
                        Ok((services, instances)) => {
                            tracing::info!(shard = ctx.id, %peer, services, instances, bytes = r.body.len(), received_ms, ms = t0.elapsed().as_millis() as u64, "snapshot loaded");
                            answers.push(Answer::Served);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(shard = ctx.id, %peer, error = %e, "bad snapshot");
                            answers.push(Answer::Nothing);
                        }
                    }
                }
                Ok(r) if r.status == 503 => answers.push(Answer::Starting),
                Ok(r) if r.status == 403 => {
                    apply_outcome(shared, peer, ReportOutcome::TokenRefused, "snapshot");
                    answers.push(Answer::Nothing);
                }
                Ok(r) => {
                    tracing::warn!(shard = ctx.id, %peer, status = r.status, "snapshot refused");
                    answers.push(Answer::Nothing);
                }
                Err(e) => {
                    tracing::debug!(shard = ctx.id, %peer, error = %e, "no snapshot");
                    answers.push(Answer::Nothing);
                }
            }
        }
        match startup::decide(&answers, started.elapsed().as_millis() as u64) {
            Decision::Loaded => return settle("loaded", true),
            Decision::StartingTogether => {
                return settle("every peer that answered is starting too", false)
            }
            Decision::Alone => {
                tracing::warn!(
                    shard = ctx.id,
                    "no peer served a snapshot for {STARTUP_ALONE_MS} ms"
                );
                return settle("alone", false);
            }
            Decision::Retry => {}
        }
        monoio::time::sleep(Duration::from_millis(SNAPSHOT_RETRY_MS)).await;
    }
}

/// Parses a snapshot datum by datum, merging each into this shard as it
/// comes (the memory of one is reused by the next); datums another shard
/// holds (a peer that cut the parts differently) are handed over after.
/// Returns (services, instances) read.
async fn merge_stream(ctx: &Rc<ShardCtx>, body: &[u8]) -> Result<(usize, usize), String> {
    let cores = ctx.shared.inboxes.len();
    let mut elsewhere: Vec<Datum> = Vec::new();
    let (mut services, mut instances) = (0, 0);
    {
        let now = now_ms();
        let mut st = ctx.state.borrow_mut();
        let st = &mut *st;
        let mut merged = 0u64;
        let each = |d: Datum| {
            services += 1;
            instances += d.instances.len();
            let id = ServiceId::new(&d.namespace, &d.group, &d.name);
            if shard_of(id.full_key(), cores) != ctx.id {
                elsewhere.push(d);
            } else if st.store.merge(d, now) {
                merged += 1;
                st.push.changed(id.full_key(), now);
            }
        };
        let mut de = serde_json::Deserializer::from_slice(body);
        EachDatum(each)
            .deserialize(&mut de)
            .and_then(|_| de.end())
            .map_err(|e| e.to_string())?;
        ctx.stats()
            .datums_merged
            .fetch_add(merged, Ordering::Relaxed);
    }
    if !elsewhere.is_empty() {
        merge_everywhere(ctx, elsewhere, None)
            .await
            .map_err(|r| format!("merge: status {}", r.status))?;
    }
    Ok((services, instances))
}

/// Feeds every element of a JSON array of datums to a closure, one at a
/// time, instead of building the whole `Vec` first.
struct EachDatum<F>(F);

impl<'de, F: FnMut(Datum)> DeserializeSeed<'de> for EachDatum<F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(Datum)> Visitor<'de> for EachDatum<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of datums")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while let Some(d) = seq.next_element::<Datum>()? {
            (self.0)(d);
        }
        Ok(())
    }
}

/// What a member shows (`extendInfo.lastRefusal`) while it refuses our
/// cluster token.
pub const TOKEN_REFUSED: &str =
    "this member refused our cluster token (403): every node of a cluster must be started \
     with the same --cluster-token";

/// Applies how a peer request to `peer` went to its member state, and
/// logs an error when the peer newly refuses our cluster token (`what`
/// names the request). Returns whether the healthy list changed, and it.
fn apply_outcome(
    shared: &crate::cluster::ClusterShared,
    peer: &str,
    outcome: ReportOutcome,
    what: &str,
) -> (bool, Vec<String>) {
    let (newly_refused, changed, healthy) = shared.with_members(|m| {
        let newly = outcome == ReportOutcome::TokenRefused && !m.token_refused(peer);
        let changed = m.report_outcome(peer, outcome);
        (newly, changed, m.healthy())
    });
    if newly_refused {
        tracing::error!(%peer, request = what, "{TOKEN_REFUSED}");
    }
    (changed, healthy)
}

/// Every `report_interval_ms`, this node's Member JSON to one other member,
/// round robin; the outcome moves the member's state.
async fn report_loop(ctx: &Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let report_interval_ms = ctx.shared.config.report_interval_ms;
    let interval = Duration::from_millis(report_interval_ms);
    let (ip, port) = shared.me.rsplit_once(':').unwrap_or((&shared.me, "0"));
    loop {
        if stopping(ctx) {
            return;
        }
        if let Some(target) = shared.with_members(|m| m.next_report_target()) {
            let body = serde_json::to_vec(&serde_json::json!({
                "ip": ip,
                "port": port.parse::<u16>().unwrap_or(0),
                "address": shared.me,
                "state": "UP",
                "extendInfo": {},
                "memberListDigest": shared.list_digest(),
            }))
            .expect("member JSON");
            let req = PeerRequest::json("POST", "/nacos/v1/core/cluster/report", &body);
            let result = cl.client.send(&target, &req).await;
            let outcome = match &result {
                Ok(r) if r.status == 200 => ReportOutcome::Accepted,
                Ok(r) if r.status == 503 => ReportOutcome::Starting,
                Ok(r) if r.status == 403 => ReportOutcome::TokenRefused,
                Err(PeerError::Refused) => ReportOutcome::Refused,
                _ => ReportOutcome::Failed,
            };
            if let Ok(r) = &result {
                let refused = NOT_ANOTHER_MEMBER.as_bytes();
                if r.status == 400 && r.body.windows(refused.len()).any(|w| w == refused) {
                    let why = "our report refused: we are no member there";
                    shared.lists_disagree(&target, why, now_ms(), report_interval_ms);
                }
            }
            let (changed, healthy) = apply_outcome(shared, &target, outcome, "member report");
            if changed {
                tracing::info!(member = %target, ?outcome, ?healthy, "membership changed");
            } else if outcome != ReportOutcome::Accepted {
                tracing::debug!(member = %target, ?outcome, result = ?result.map(|r| r.status), "report failed");
            }
        }
        monoio::time::sleep(interval).await;
    }
}

/// A member that turns UP gets a verify round at once, and again this
/// many times one report interval apart (it may not count this node UP
/// yet and refuse the first): what it missed while it was not UP (writes
/// replicate only to UP members) reaches it within about a report
/// interval instead of a verify interval (issue 14, item 5).
const VERIFY_ROUNDS_ON_UP: u32 = 2;
/// How often the verify loop looks for members that turned UP.
const VERIFY_UP_CHECK_MS: u64 = 100;

/// Every `verify_interval_ms`: the checksums of every service this node
/// owns, to every other healthy member; and at once to a member that has
/// just turned UP (`VERIFY_ROUNDS_ON_UP`).
async fn verify_loop(ctx: Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let interval = Duration::from_millis(ctx.shared.config.verify_interval_ms);
    let report = Duration::from_millis(ctx.shared.config.report_interval_ms);
    // Members UP at the last look, and those owed an early round:
    // (member, when, rounds left).
    let mut up: std::collections::BTreeSet<String> = Default::default();
    let mut owed: Vec<(String, Instant, u32)> = Vec::new();
    let mut next_round = Instant::now() + interval;
    loop {
        monoio::time::sleep(Duration::from_millis(VERIFY_UP_CHECK_MS).min(interval)).await;
        if stopping(&ctx) {
            return;
        }
        if !shared.is_ready() {
            continue;
        }
        ctx.refresh_view(now_ms());
        let view = cl.state.borrow().view.clone();
        let peers: std::collections::BTreeSet<String> = view.others().into_iter().collect();
        let now = Instant::now();
        for p in peers.difference(&up) {
            tracing::debug!(member = %p, "member UP: a verify round at once");
            owed.push((p.clone(), now, VERIFY_ROUNDS_ON_UP));
        }
        owed.retain(|(p, ..)| peers.contains(p));
        up = peers;
        let mut targets: Vec<String> = Vec::new();
        if now >= next_round {
            next_round = now + interval;
            targets.extend(up.iter().cloned());
        }
        for (p, at, left) in owed.iter_mut() {
            if *at <= now {
                if !targets.contains(p) {
                    targets.push(p.clone());
                }
                *left -= 1;
                *at = now + report;
            }
        }
        owed.retain(|(_, _, left)| *left > 0);
        if targets.is_empty() {
            continue;
        }
        // Everything any shard wrote before this instant has a lower hlc.
        let round = hlc::pack(now_ms(), 0);
        let parts = match ctx.run_on_all(|c| c.owned_checksums()).await {
            Ok(p) => p,
            Err(r) => {
                tracing::debug!(status = r.status, "verify: a shard did not answer");
                continue;
            }
        };
        let msg = Checksums {
            round,
            healthy: view.healthy.clone(),
            checksums: parts.into_iter().flatten().collect(),
        };
        let body = Rc::new(serde_json::to_vec(&msg).expect("checksums serialize"));
        let target = format!("/nacos/v1/ns/distro/checksum?{}", shared.source_param());
        for peer in targets {
            let (ctx, body, target) = (ctx.clone(), body.clone(), target.clone());
            monoio::spawn(async move {
                let cl = ctx.cluster.as_ref().expect("clustered");
                let req = PeerRequest::json("PUT", &target, &body);
                if let Err(e) = cl.client.send(&peer, &req).await {
                    tracing::debug!(%peer, error = %e, "verify send failed");
                }
            });
        }
    }
}
