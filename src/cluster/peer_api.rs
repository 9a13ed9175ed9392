//! The peer endpoints (SPEC 4.4-4.6), the forwarding of client writes to
//! the owner (SPEC 4.3), and the cluster's operator views. Every peer
//! endpoint checks the cluster token first; a standalone node serves none.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::client::PeerRequest;
use super::shard::RelayedBeat;
use super::ClusterShared;
use crate::api::{validate, Endpoint};
use crate::distro::members::{Member, NOT_ANOTHER_MEMBER};
use crate::http::params::Params;
use crate::http::request::{Method, Request};
use crate::reply::Reply;
use crate::shard::router::shard_of;
use crate::shard::{now_ms, ShardCtx};
use crate::store::datum::Datum;
use crate::store::service::ServiceId;
use crate::store::Op;

/// Keys asked for in one `GET /distro/datum` of a verify round.
pub const FETCH_KEYS_MAX: usize = 1_000;

/// A verify round's message (`PUT /distro/checksum?source=`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Checksums {
    /// The source's round: every version it wrote before has a lower hlc.
    pub round: u64,
    /// The source's healthy list (a drop needs the same view of owners).
    pub healthy: Vec<String>,
    /// (full key, checksum) of every service the source owns.
    pub checksums: Vec<(String, u64)>,
}

/// A member report's body (Nacos sends its Member JSON).
#[derive(Debug, Deserialize)]
struct ReportBody {
    ip: Option<String>,
    port: Option<u16>,
    address: Option<String>,
    /// The reporter's member-list digest (distro-registry nodes send it;
    /// Nacos does not).
    #[serde(rename = "memberListDigest", default)]
    digest: Option<String>,
}

fn forbidden() -> Reply {
    Reply::text(403, "peer request without a valid cluster token")
}

fn json_array<T: Serialize>(items: &[T]) -> Reply {
    Reply::json(serde_json::to_vec(items).unwrap_or_else(|_| b"[]".to_vec()))
}

/// Answers a peer endpoint.
pub async fn handle(ctx: &Rc<ShardCtx>, endpoint: Endpoint, req: &Request<'_>) -> Reply {
    let Some(shared) = ctx.shared.cluster.as_ref() else {
        return Reply::not_found("Not Found");
    };
    if !shared.authorized(req.token) {
        return forbidden();
    }
    match endpoint {
        Endpoint::ClusterReport => report(shared, &req.body, ctx.shared.config.report_interval_ms),
        Endpoint::DistroDatumPut => match serde_json::from_slice::<Vec<Datum>>(&req.body) {
            Ok(datums) => {
                // The sender, to be sent back what it had older (read
                // repair); older nodes do not say.
                let params = Params::parse(req.query, None);
                let source = params
                    .get("source")
                    .filter(|s| *s != shared.me && shared.is_member(s))
                    .map(str::to_string);
                match merge_everywhere(ctx, datums, source).await {
                    Ok(n) => Reply::text(200, n.to_string()),
                    Err(r) => r,
                }
            }
            Err(e) => Reply::bad_request(format!("not a datum list: {e}")),
        },
        Endpoint::DistroDatumGet => {
            let keys: Vec<String> = if req.body.is_empty() {
                let params = Params::parse(req.query, None);
                params
                    .get("keys")
                    .unwrap_or("")
                    .split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_string)
                    .collect()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(k) => k,
                    Err(e) => return Reply::bad_request(format!("not a key list: {e}")),
                }
            };
            match datums_of(ctx, keys).await {
                Ok(d) => json_array(&d),
                Err(r) => r,
            }
        }
        Endpoint::DistroSnapshot => {
            if !shared.is_ready() {
                return Reply::text(503, "starting: no snapshot yet");
            }
            // `part=i&parts=n`: only the services the asking node's shard i
            // of n holds (each shard of a joining node loads its own part,
            // in parallel). Each shard writes its piece of the JSON array;
            // the pieces are joined here (one copy), never cloned into
            // `Datum`s.
            let params = Params::parse(req.query, None);
            let part = match (params.get("part"), params.get("parts")) {
                (None, None) => None,
                (Some(i), Some(n)) => match (i.parse::<usize>(), n.parse::<usize>()) {
                    (Ok(i), Ok(n)) if i < n => Some((i, n)),
                    _ => return Reply::bad_request("part must be a number below parts"),
                },
                _ => return Reply::bad_request("part and parts go together"),
            };
            let parts = ctx
                .run_on_all(move |c| {
                    let mut piece = Vec::new();
                    let keep = |k: &str| part.is_none_or(|(i, n)| shard_of(k, n) == i);
                    c.state
                        .borrow()
                        .store
                        .write_snapshot(&mut piece, true, keep);
                    piece
                })
                .await;
            match parts {
                Ok(parts) => {
                    let len: usize = parts.iter().map(|p| p.len() + 1).sum();
                    let mut body = Vec::with_capacity(len + 2);
                    body.push(b'[');
                    for p in parts.iter().filter(|p| !p.is_empty()) {
                        if body.len() > 1 {
                            body.push(b',');
                        }
                        body.extend_from_slice(p);
                    }
                    body.push(b']');
                    Reply::json(body)
                }
                Err(r) => r,
            }
        }
        Endpoint::DistroChecksum => {
            let params = Params::parse(req.query, None);
            let Some(source) = params.get("source").map(str::to_string) else {
                return Reply::bad_request("source is required");
            };
            let source_node = match crate::distro::hlc::node_id(&source) {
                Some(id) if shared.is_member(&source) => id,
                _ => return Reply::bad_request(format!("{source} is not a member")),
            };
            let msg: Checksums = match serde_json::from_slice(&req.body) {
                Ok(m) => m,
                Err(e) => return Reply::bad_request(format!("not a checksum list: {e}")),
            };
            if ctx.begin_verify(&source) {
                monoio::spawn(verify_from(ctx.clone(), source, source_node, msg));
            }
            Reply::ok()
        }
        Endpoint::DistroBeats => match serde_json::from_slice::<Vec<RelayedBeat>>(&req.body) {
            Ok(beats) => {
                let cores = ctx.shared.inboxes.len();
                let mut per: Vec<Vec<RelayedBeat>> = vec![Vec::new(); cores];
                for b in beats {
                    let id = ServiceId::new(&b.0, &b.1, &b.2);
                    per[shard_of(id.full_key(), cores)].push(b);
                }
                for (shard, beats) in per.into_iter().enumerate() {
                    if beats.is_empty() {
                        continue;
                    }
                    let done = ctx
                        .run_on(shard, move |c| {
                            let now = now_ms();
                            for b in beats {
                                c.execute(b.op(), None, now);
                            }
                        })
                        .await;
                    if let Err(r) = done {
                        return r;
                    }
                }
                Reply::ok()
            }
            Err(e) => Reply::bad_request(format!("not a beat list: {e}")),
        },
        _ => Reply::not_found("Not Found"),
    }
}

fn report(shared: &ClusterShared, body: &[u8], report_interval_ms: u64) -> Reply {
    let parsed: ReportBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return Reply::bad_request(format!("not a member JSON: {e}")),
    };
    let address = match (parsed.address, parsed.ip, parsed.port) {
        (Some(a), _, _) => a,
        (None, Some(ip), Some(port)) => format!("{ip}:{port}"),
        _ => return Reply::bad_request("member address is required"),
    };
    let address = match address.parse::<std::net::SocketAddr>() {
        Ok(a) => a.to_string(),
        Err(_) => return Reply::bad_request(format!("{address} is not ip:port")),
    };
    if address == shared.me {
        return Reply::bad_request(format!("{address} {NOT_ANOTHER_MEMBER}"));
    }
    if !shared.is_member(&address) {
        shared.lists_disagree(
            &address,
            "a report from a node that is no member here",
            now_ms(),
            report_interval_ms,
        );
        return Reply::bad_request(format!("{address} {NOT_ANOTHER_MEMBER}"));
    }
    if parsed.digest.is_some_and(|d| d != shared.list_digest()) {
        shared.lists_disagree(
            &address,
            "a report with another member list",
            now_ms(),
            report_interval_ms,
        );
    }
    if shared.with_members(|m| m.report_received(&address)) {
        tracing::info!(from = %address, "member UP (report received)");
    }
    if !shared.is_ready() {
        // The reporter counts this node DOWN until it has loaded its
        // snapshot, so nobody forwards to it meanwhile.
        return Reply::text(503, "starting: loading snapshot");
    }
    Reply::json_value(&serde_json::json!({"code": 200, "message": null, "data": "ok"}))
}

/// Merges datums into the shards that hold their services.
/// With `source` (the peer they came from), what it had older than this
/// node is sent back to it.
pub async fn merge_everywhere(
    ctx: &Rc<ShardCtx>,
    datums: Vec<Datum>,
    source: Option<String>,
) -> Result<usize, Reply> {
    let cores = ctx.shared.inboxes.len();
    let mut per: Vec<Vec<Datum>> = vec![Vec::new(); cores];
    for d in datums {
        let id = ServiceId::new(&d.namespace, &d.group, &d.name);
        per[shard_of(id.full_key(), cores)].push(d);
    }
    let mut merged = 0;
    for (shard, ds) in per.into_iter().enumerate() {
        if ds.is_empty() {
            continue;
        }
        let source = source.clone();
        merged += ctx
            .run_on(shard, move |c| {
                c.merge_datums(ds, source.as_deref(), now_ms())
            })
            .await?;
    }
    Ok(merged)
}

async fn datums_of(ctx: &Rc<ShardCtx>, keys: Vec<String>) -> Result<Vec<Datum>, Reply> {
    let cores = ctx.shared.inboxes.len();
    let mut per: Vec<Vec<String>> = vec![Vec::new(); cores];
    for k in keys {
        per[shard_of(&k, cores)].push(k);
    }
    let mut out = Vec::new();
    for (shard, ks) in per.into_iter().enumerate() {
        if ks.is_empty() {
            continue;
        }
        let part = ctx
            .run_on(shard, move |c| {
                let st = c.state.borrow();
                ks.iter()
                    .filter_map(|k| st.store.datum(k))
                    .collect::<Vec<_>>()
            })
            .await?;
        out.extend(part);
    }
    Ok(out)
}

/// The receiving side of a verify round: compare per shard (dropping what
/// the source owns, no longer lists and alone wrote), then fetch what
/// differs from the source and merge it.
async fn verify_from(ctx: Rc<ShardCtx>, source: String, source_node: u64, msg: Checksums) {
    let result = verify_inner(&ctx, &source, source_node, msg).await;
    ctx.end_verify(&source);
    if let Err(e) = result {
        tracing::debug!(shard = ctx.id, %source, error = %e, "verify round failed");
    }
}

async fn verify_inner(
    ctx: &Rc<ShardCtx>,
    source: &str,
    source_node: u64,
    msg: Checksums,
) -> Result<(), String> {
    let cores = ctx.shared.inboxes.len();
    let same_view = ctx
        .cluster
        .as_ref()
        .map(|cl| cl.state.borrow().view.healthy == msg.healthy)
        .unwrap_or(false);
    let mut per: Vec<Vec<(String, u64)>> = vec![Vec::new(); cores];
    for (k, sum) in msg.checksums {
        per[shard_of(&k, cores)].push((k, sum));
    }
    let sums: std::collections::HashMap<String, u64> = per.iter().flatten().cloned().collect();
    let mut fetch = Vec::new();
    for (shard, theirs) in per.into_iter().enumerate() {
        let src = source.to_string();
        let round = msg.round;
        let keys = ctx
            .run_on(shard, move |c| {
                c.verify_shard(&src, source_node, round, same_view, theirs)
            })
            .await
            .map_err(|r| format!("shard {shard}: status {}", r.status))?;
        fetch.extend(keys);
    }
    if fetch.is_empty() {
        return Ok(());
    }
    ctx.stats()
        .verify_fetches
        .fetch_add(fetch.len() as u64, Ordering::Relaxed);
    let cl = ctx.cluster.as_ref().ok_or("standalone")?;
    for keys in fetch.chunks(FETCH_KEYS_MAX) {
        let body = serde_json::to_vec(keys).map_err(|e| e.to_string())?;
        let req = PeerRequest::json("GET", "/nacos/v1/ns/distro/datum", &body);
        let reply = cl
            .client
            .send(source, &req)
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != 200 {
            return Err(format!("fetch: status {}", reply.status));
        }
        let datums: Vec<Datum> = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
        merge_everywhere(ctx, datums, Some(source.to_string()))
            .await
            .map_err(|r| format!("merge: status {}", r.status))?;
        // Whatever still differs holds records the source lacks.
        let mut per: Vec<Vec<(String, u64)>> = vec![Vec::new(); cores];
        for k in keys {
            if let Some(sum) = sums.get(k) {
                per[shard_of(k, cores)].push((k.clone(), *sum));
            }
        }
        for (shard, theirs) in per.into_iter().enumerate() {
            if theirs.is_empty() {
                continue;
            }
            let src = source.to_string();
            ctx.run_on(shard, move |c| c.repair_owner(&src, &theirs))
                .await
                .map_err(|r| format!("repair: status {}", r.status))?;
        }
    }
    Ok(())
}

/// SPEC 4.3: a client write or beat for a service another node owns.
/// `Ok(reply)` when the owner (or the beat relay) answered; `Err(op)` when
/// this node must apply the op itself (it owns the service, the op is not
/// forwarded, or the owner could not be reached).
pub async fn to_owner(ctx: &Rc<ShardCtx>, op: Op, req: &Request<'_>) -> Result<Reply, Op> {
    let forwardable = matches!(
        op,
        Op::Register { .. }
            | Op::Deregister { .. }
            | Op::Update { .. }
            | Op::Patch { .. }
            | Op::Beat { .. }
    );
    if !forwardable {
        return Err(op);
    }
    let Some(owner) = ctx.remote_owner(op.service().grouped()) else {
        return Err(op);
    };
    if let Op::Beat { .. } = op {
        let shard = shard_of(op.service().full_key(), ctx.shared.inboxes.len());
        let (o, owner2) = (op.clone(), owner.clone());
        if let Ok(Some(reply)) = ctx.run_on(shard, move |c| c.relay_beat(o, owner2)).await {
            return Ok(reply);
        }
    }
    let Some(cl) = ctx.cluster.as_ref() else {
        return Err(op);
    };
    let target = if req.query.is_empty() {
        req.path.to_string()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let method = match req.method {
        Method::Post => "POST",
        Method::Delete => "DELETE",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        _ => "POST",
    };
    let preq = PeerRequest {
        method,
        target: &target,
        body: &req.body,
        json: !req.form_body,
        forwarded: true,
        user_agent: Some(req.user_agent),
        timeout_ms: None,
    };
    match cl.client.send(&owner, &preq).await {
        Ok(r) if r.status < 500 && r.status != 403 => {
            ctx.stats().forwarded.fetch_add(1, Ordering::Relaxed);
            Ok(Reply {
                status: r.status,
                kind: if r.json {
                    crate::reply::Body::Json
                } else {
                    crate::reply::Body::Text
                },
                body: r.body,
            })
        }
        other => {
            // AP: a write is never refused because a peer is down (SPEC
            // 4.3); replication settles it.
            ctx.stats().forward_failures.fetch_add(1, Ordering::Relaxed);
            let why = match other {
                Ok(r) => format!("status {}", r.status),
                Err(e) => e.to_string(),
            };
            tracing::debug!(shard = ctx.id, %owner, %why, "owner unreachable, applying locally");
            Err(op)
        }
    }
}

fn member_json(m: &Member) -> serde_json::Value {
    let (ip, port) = m.address.rsplit_once(':').unwrap_or((&m.address, "0"));
    serde_json::json!({
        "ip": ip,
        "port": port.parse::<u16>().unwrap_or(0),
        "address": m.address,
        "state": m.state.name(),
        "failAccessCnt": m.fail_count,
        "extendInfo": if m.token_refused {
            serde_json::json!({ "lastRefusal": super::driver::TOKEN_REFUSED })
        } else {
            serde_json::json!({})
        },
    })
}

/// Operator and cluster views of a clustered node (None: standalone, the
/// caller answers).
pub fn views(ctx: &ShardCtx, endpoint: Endpoint, req: &Request<'_>) -> Option<Reply> {
    let shared = ctx.shared.cluster.as_ref()?;
    match endpoint {
        Endpoint::OperatorServers | Endpoint::ClusterNodes => {
            let (members, version, changed) = shared.with_members(|m| {
                let members: Vec<serde_json::Value> = m.members().iter().map(member_json).collect();
                (members, m.list_version(), m.list_changed_ms())
            });
            // The member list's version and change time (issue 14), beside
            // what Nacos answers.
            Some(if endpoint == Endpoint::OperatorServers {
                Reply::json_value(&serde_json::json!({
                    "servers": members,
                    "memberListVersion": version,
                    "memberListChangedMs": changed,
                }))
            } else {
                Reply::json_value(&serde_json::json!({
                    "code": 200,
                    "message": null,
                    "data": members,
                    "memberListVersion": version,
                    "memberListChangedMs": changed,
                }))
            })
        }
        Endpoint::DistroServer => {
            let params = Params::parse(req.query, req.form_body.then_some(&*req.body));
            Some(match validate::service_id(&params) {
                Ok(svc) => {
                    ctx.refresh_view(now_ms());
                    let cl = ctx.cluster.as_ref()?;
                    let owner = cl.state.borrow().view.owner(svc.grouped()).to_string();
                    Reply::json_value(&serde_json::json!({ "responsibleServer": owner }))
                }
                Err(r) => r,
            })
        }
        Endpoint::Readiness => Some(if shared.is_ready() {
            Reply::static_text(200, "OK")
        } else {
            Reply::static_text(500, "not ready: loading the cluster snapshot")
        }),
        _ => None,
    }
}
