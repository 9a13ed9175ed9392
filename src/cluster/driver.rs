//! The node-wide cluster loops, run by shard 0: the startup snapshot load
//! (SPEC 4.6), the member reports (SPEC 4.1) and the verify rounds
//! (SPEC 4.4). Each loop decides nothing itself: `Membership`, the store
//! and `distro::verify` do; the loops send and feed back.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::client::{PeerError, PeerRequest};
use super::peer_api::{merge_everywhere, Checksums};
use crate::distro::hlc;
use crate::shard::{now_ms, ShardCtx};
use crate::store::datum::Datum;

/// A snapshot transfer gives up after this long.
pub const SNAPSHOT_TIMEOUT_MS: u64 = 60_000;
/// Pause between snapshot load attempts (SPEC 4.6).
pub const SNAPSHOT_RETRY_MS: u64 = 1_000;
/// With no snapshot from any peer for this long, the node serves alone.
pub const STARTUP_ALONE_MS: u64 = 10_000;

fn stopping(ctx: &ShardCtx) -> bool {
    ctx.shared.shutdown.load(Ordering::Relaxed)
}

/// Starts the loops on shard 0 of a clustered node.
pub fn spawn(ctx: &Rc<ShardCtx>) {
    if ctx.id != 0 || ctx.shared.cluster.is_none() {
        return;
    }
    monoio::spawn(startup_then_report(ctx.clone()));
    monoio::spawn(verify_loop(ctx.clone()));
}

async fn startup_then_report(ctx: Rc<ShardCtx>) {
    load_snapshot(&ctx).await;
    report_loop(&ctx).await;
}

/// Loads the snapshot from the first peer that serves one; retries every
/// second. Ready when loaded, when every peer that answered is itself
/// starting (the cluster starts together), or after `STARTUP_ALONE_MS`.
async fn load_snapshot(ctx: &Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let started = Instant::now();
    let others: Vec<String> = shared
        .all
        .iter()
        .filter(|a| **a != shared.me)
        .cloned()
        .collect();
    loop {
        if stopping(ctx) {
            return;
        }
        let mut starting = 0;
        for peer in &others {
            let req = PeerRequest {
                method: "GET",
                target: "/nacos/v1/ns/distro/datums",
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
                    let datums: Vec<Datum> = match serde_json::from_slice(&r.body) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "bad snapshot");
                            continue;
                        }
                    };
                    let services = datums.len();
                    let instances: usize = datums.iter().map(|d| d.instances.len()).sum();
                    let parsed_ms = t0.elapsed().as_millis() as u64;
                    match merge_everywhere(ctx, datums).await {
                        Ok(_) => {
                            shared.ready.store(true, Ordering::Release);
                            tracing::info!(%peer, services, instances, bytes = r.body.len(), received_ms, parsed_ms, ms = t0.elapsed().as_millis() as u64, "snapshot loaded; ready");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(%peer, status = e.status, "snapshot merge failed")
                        }
                    }
                }
                Ok(r) if r.status == 503 => starting += 1,
                Ok(r) => tracing::warn!(%peer, status = r.status, "snapshot refused"),
                Err(e) => tracing::debug!(%peer, error = %e, "no snapshot"),
            }
        }
        if starting > 0 {
            shared.ready.store(true, Ordering::Release);
            tracing::info!(
                starting,
                "every peer that answered is starting too; ready with what arrives"
            );
            return;
        }
        if started.elapsed() >= Duration::from_millis(STARTUP_ALONE_MS) {
            shared.ready.store(true, Ordering::Release);
            tracing::warn!("no peer served a snapshot for {STARTUP_ALONE_MS} ms; ready alone");
            return;
        }
        monoio::time::sleep(Duration::from_millis(SNAPSHOT_RETRY_MS)).await;
    }
}

/// Every `report_interval_ms`, this node's Member JSON to one other member,
/// round robin; the outcome moves the member's state.
async fn report_loop(ctx: &Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let interval = Duration::from_millis(ctx.shared.config.report_interval_ms);
    let (ip, port) = shared.me.rsplit_once(':').unwrap_or((&shared.me, "0"));
    let body = serde_json::to_vec(&serde_json::json!({
        "ip": ip,
        "port": port.parse::<u16>().unwrap_or(0),
        "address": shared.me,
        "state": "UP",
        "extendInfo": {},
    }))
    .expect("member JSON");
    loop {
        if stopping(ctx) {
            return;
        }
        if let Some(target) = shared.with_members(|m| m.next_report_target()) {
            let req = PeerRequest::json("POST", "/nacos/v1/core/cluster/report", &body);
            let outcome = cl.client.send(&target, &req).await;
            let (changed, what) = match &outcome {
                Ok(r) if r.status == 200 => (shared.with_members(|m| m.report_ok(&target)), "UP"),
                // A member still loading its snapshot must not own
                // anything yet: DOWN until it answers 200.
                Ok(r) if r.status == 503 => (
                    shared.with_members(|m| m.report_failed(&target, true)),
                    "DOWN (starting)",
                ),
                Err(PeerError::Refused) => (
                    shared.with_members(|m| m.report_failed(&target, true)),
                    "DOWN (refused)",
                ),
                _ => (
                    shared.with_members(|m| m.report_failed(&target, false)),
                    "failed",
                ),
            };
            if changed {
                let healthy = shared.with_members(|m| m.healthy());
                tracing::info!(member = %target, state = what, ?healthy, "membership changed");
            } else if what != "UP" {
                tracing::debug!(member = %target, state = what, result = ?outcome.map(|r| r.status), "report failed");
            }
        }
        monoio::time::sleep(interval).await;
    }
}

/// Every `verify_interval_ms`: the checksums of every service this node
/// owns, to every other healthy member.
async fn verify_loop(ctx: Rc<ShardCtx>) {
    let shared = ctx.shared.cluster.as_ref().expect("clustered");
    let cl = ctx.cluster.as_ref().expect("clustered");
    let interval = Duration::from_millis(ctx.shared.config.verify_interval_ms);
    loop {
        monoio::time::sleep(interval).await;
        if stopping(&ctx) {
            return;
        }
        if !shared.is_ready() {
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
        ctx.refresh_view(now_ms());
        let view = cl.state.borrow().view.clone();
        let msg = Checksums {
            round,
            healthy: view.healthy.clone(),
            checksums: parts.into_iter().flatten().collect(),
        };
        let body = Rc::new(serde_json::to_vec(&msg).expect("checksums serialize"));
        let target = format!(
            "/nacos/v1/ns/distro/checksum?source={}",
            form_urlencoded::byte_serialize(shared.me.as_bytes()).collect::<String>()
        );
        for peer in view.others() {
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
