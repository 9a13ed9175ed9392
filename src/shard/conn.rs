//! Accepting connections and serving one: read, frame, dispatch (locally
//! or to the owning shard), write. Pipelined requests are answered in
//! order, with one write per batch.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle};
use monoio::net::{TcpListener, TcpStream};

use super::router::shard_of;
use super::{now_ms, ShardCtx, ShardMsg};
use crate::api::{self, Action, Endpoint};
use crate::http::params::Params;
use crate::http::request::{self, Parsed};
use crate::http::response;
use crate::reply::Reply;

/// Requests answered before the connection's output is flushed.
const PIPELINE_DEPTH_MAX: usize = 128;
/// Bodies this large (a big service's cached list) go to the socket from
/// their shared buffer instead of being copied into the output buffer.
const ZERO_COPY_BODY_MIN_BYTES: usize = 64 * 1024;
/// Read buffer grows by at least this much before a read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Which front end a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// The 1.x HTTP API (this module).
    Http,
    /// The 2.x/3.x gRPC protocol (`grpc::server`).
    Grpc,
}

/// Accepts connections until shutdown; both front ends count against the
/// node's one `max_connections`.
pub async fn accept_loop(
    ctx: Rc<ShardCtx>,
    listener: TcpListener,
    cancel: CancelHandle,
    front: Front,
) {
    loop {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                let open = ctx.shared.open_connections.fetch_add(1, Ordering::Relaxed);
                if open >= ctx.shared.config.max_connections {
                    match front {
                        Front::Http => {
                            monoio::spawn(refuse(ctx.clone(), stream));
                        }
                        // gRPC has no answer before the HTTP/2 preface: close.
                        Front::Grpc => {
                            ctx.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                monoio::spawn(async move {
                    match front {
                        Front::Http => {
                            let mut stream = stream;
                            serve_inner(&ctx, &mut stream, peer).await
                        }
                        Front::Grpc => crate::grpc::server::serve(&ctx, stream, peer).await,
                    }
                    ctx.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                if ctx.shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                tracing::warn!(shard = ctx.id, ?front, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Over the connection cap: one 503 and close.
async fn refuse(ctx: Rc<ShardCtx>, mut stream: TcpStream) {
    let mut out = Vec::new();
    let reply = Reply::text(503, "too many connections");
    response::write(&mut out, &reply, false, false);
    let _ = stream.write_all(out).await;
    ctx.stats().record(Endpoint::Invalid, 503, 0);
    ctx.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
}

async fn serve_inner(ctx: &Rc<ShardCtx>, stream: &mut TcpStream, peer: SocketAddr) {
    let idle = Duration::from_millis(ctx.shared.config.idle_timeout_ms);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let mut consumed = 0;
        let mut close = false;
        let mut answered = 0;
        while answered < PIPELINE_DEPTH_MAX {
            match request::parse(&buf[consumed..], ctx.limits) {
                Parsed::Complete(req, used) => {
                    consumed += used;
                    answered += 1;
                    let started = Instant::now();
                    ctx.stats().inflight.fetch_add(1, Ordering::Relaxed);
                    let endpoint = api::route(req.method, req.path);
                    let reply = dispatch(ctx, endpoint, &req, peer).await;
                    let shutting_down = ctx.shared.shutdown.load(Ordering::Relaxed);
                    let keep_alive = req.keep_alive && !shutting_down;
                    let head = req.method == request::Method::Head;
                    if !head && reply.body.len() >= ZERO_COPY_BODY_MIN_BYTES {
                        // Head (after any earlier pipelined answers), then
                        // the cached body itself.
                        response::write_head(&mut out, &reply, keep_alive);
                        ctx.send_mail();
                        let (res, o) = stream.write_all(out).await;
                        out = o;
                        out.clear();
                        let body_res = match res {
                            Ok(_) => stream.write_all(reply.body.clone()).await.0,
                            Err(e) => Err(e),
                        };
                        if body_res.is_err() {
                            ctx.stats().inflight.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                    } else {
                        response::write(&mut out, &reply, keep_alive, head);
                    }
                    ctx.stats().inflight.fetch_sub(1, Ordering::Relaxed);
                    ctx.stats().record(
                        endpoint,
                        reply.status,
                        started.elapsed().as_micros() as u64,
                    );
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Parsed::Partial => break,
                Parsed::Error(status, msg) => {
                    response::write(&mut out, &Reply::text(status, msg), false, false);
                    ctx.stats().record(Endpoint::Invalid, status, 0);
                    close = true;
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            // What these requests posted leaves before their replies.
            ctx.send_mail();
            let (res, o) = stream.write_all(out).await;
            out = o;
            out.clear();
            if res.is_err() {
                return;
            }
        }
        if close || ctx.shared.shutdown.load(Ordering::Relaxed) {
            return;
        }
        if answered == PIPELINE_DEPTH_MAX {
            continue; // more complete requests may already be buffered
        }
        let l = ctx.limits;
        let body_max = if request::targets_peer_path(&buf) {
            l.peer_body_bytes_max
        } else {
            l.body_bytes_max
        };
        if buf.len() > l.header_bytes_max + 2 * body_max + READ_CHUNK_BYTES {
            // Only a chunked body with very small chunks gets here.
            let mut o = Vec::new();
            response::write(&mut o, &Reply::text(413, "Payload Too Large"), false, false);
            let _ = stream.write_all(o).await;
            ctx.stats().record(Endpoint::Invalid, 413, 0);
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        let len = buf.len();
        let cap = buf.capacity();
        let partial = len > 0;
        match monoio::time::timeout(idle, stream.read(buf.slice_mut(len..cap))).await {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => return,
            Ok((Ok(_), slice)) => buf = slice.into_inner(),
            Err(_) => {
                if partial {
                    let mut o = Vec::new();
                    response::write(&mut o, &Reply::text(408, "Request Timeout"), false, false);
                    let _ = stream.write_all(o).await;
                    ctx.stats().record(Endpoint::Invalid, 408, 0);
                }
                return;
            }
        }
    }
}

async fn dispatch(
    ctx: &Rc<ShardCtx>,
    endpoint: Endpoint,
    req: &request::Request<'_>,
    peer: SocketAddr,
) -> Reply {
    let params = Params::parse(req.query, req.form_body.then_some(&*req.body));
    // A write a peer forwarded was authorized by the node that received it.
    let forwarded_by_peer = req.forwarded
        && ctx
            .shared
            .cluster
            .as_ref()
            .is_some_and(|cl| cl.authorized(req.token));
    let mut caller = None;
    if let Some(auth) = &ctx.shared.auth {
        let guarded =
            endpoint.needs_identity() || (endpoint == Endpoint::Metrics && auth.guard_metrics);
        if guarded && !forwarded_by_peer {
            let creds = crate::auth::Credentials {
                token: req.access_token.or(params.get("accessToken")),
                username: params.get("username"),
                password: params.get("password"),
            };
            match auth.identify(&ctx.auth_cache, &creds, peer.ip()).await {
                Ok(name) => caller = Some(name),
                Err(r) => return r.reply(None),
            }
        }
    }
    if let Some(r) = crate::cluster::peer_api::views(ctx, endpoint, req) {
        return r;
    }
    let action = api::handle_params(endpoint, req, &params, peer, &ctx.shared.node);
    if let (Some(auth), Some(name)) = (&ctx.shared.auth, &caller) {
        let wanted = match &action {
            Action::Op(op, _) => {
                let s = op.service();
                Some((
                    crate::auth::users::resource(s.namespace(), s.group(), s.name()),
                    op.auth_action(),
                ))
            }
            Action::ServiceList {
                namespace, group, ..
            } => Some((
                crate::auth::users::resource(namespace, group, "*"),
                crate::auth::Action::Read,
            )),
            _ => None,
        };
        if let Some((resource, act)) = wanted {
            if let Err(r) = auth.permit(name, &resource, act) {
                return r;
            }
        }
    }
    match action {
        Action::Login => {
            let (u, p) = (params.get("username"), params.get("password"));
            match &ctx.shared.auth {
                Some(auth) => auth.login(&ctx.auth_cache, u, p, peer.ip()).await,
                // Auth off: every request is let in; a client set up with a
                // user logs in and sends an empty token.
                None => Reply::json_value(&serde_json::json!({
                    "accessToken": "",
                    "tokenTtl": ctx.shared.config.auth_token_ttl_s,
                    "globalAdmin": false,
                })),
            }
        }
        Action::Reply(r) => r,
        Action::Peer => crate::cluster::peer_api::handle(ctx, endpoint, req).await,
        Action::Op(op, subscription) => {
            let op = match &ctx.shared.cluster {
                None => op,
                // A write a peer forwarded: this node applies it, whatever
                // its own view of the owner (no forwarding loops).
                Some(cl) if req.forwarded => {
                    if !cl.authorized(req.token) {
                        return Reply::text(403, "forwarded write without a valid cluster token");
                    }
                    op
                }
                Some(_) => match crate::cluster::peer_api::to_owner(ctx, op, req).await {
                    Ok(reply) => return reply,
                    Err(op) => op,
                },
            };
            run_op(ctx, op, subscription).await
        }
        Action::ServiceList {
            namespace,
            group,
            page_no,
            page_size,
        } => match service_names(ctx, &namespace, &group).await {
            Ok(names) => {
                let (count, page) = page_of(&names, page_no, page_size);
                Reply::json_value(&serde_json::json!({"count": count, "doms": page}))
            }
            Err(r) => r,
        },
        Action::OperatorMetrics => crate::api::operator::metrics(&ctx.shared),
        Action::Metrics => {
            let inboxes: Vec<crate::metrics::InboxStats> = ctx
                .shared
                .inboxes
                .iter()
                .map(|i| crate::metrics::InboxStats {
                    depth: i.depth(),
                    wakeups: i.wakeups.load(Ordering::Relaxed),
                })
                .collect();
            let open = ctx.shared.open_connections.load(Ordering::Relaxed);
            let mut page = crate::metrics::render(&ctx.shared.stats, &inboxes, open);
            if let Some(d) = &ctx.shared.disk {
                let instances = ctx
                    .shared
                    .stats
                    .iter()
                    .map(|s| s.instances.load(Ordering::Relaxed))
                    .sum();
                crate::metrics::render_store(&mut page, &d.stats, instances);
            }
            if let Some(a) = &ctx.shared.auth {
                crate::metrics::render_auth(&mut page, &a.stats);
            }
            if let Some(c) = &ctx.shared.cluster {
                crate::metrics::render_cluster(&mut page, c);
            }
            let mut r = Reply::text(200, page);
            r.kind = crate::reply::Body::Metrics;
            r
        }
    }
}

/// Runs a validated command on the shard that owns its service (this one,
/// or another through its inbox): the one path of every front end.
pub async fn run_op(
    ctx: &Rc<ShardCtx>,
    op: crate::store::Op,
    subscription: Option<api::Subscription>,
) -> Reply {
    let cores = ctx.shared.inboxes.len();
    let target = shard_of(op.service().full_key(), cores);
    if target == ctx.id {
        let write = !op.reads_view();
        if write {
            // Beats other shards answered before this write apply first.
            ctx.drain_inbox();
        }
        let (reply, saved) = ctx.execute_op(op, subscription, now_ms());
        let disk = ctx.shared.disk.as_ref().filter(|_| write);
        return crate::shard::settle(reply, saved, disk).await;
    }
    if op.reads_view() {
        let (mut op, mut subscription) = (Some(op), subscription);
        if let Some(reply) = read_here(ctx, target, &mut op, &mut subscription) {
            return reply;
        }
        let op = op.expect("given back when not answered");
        return read_at_owner(ctx, target, op, subscription).await;
    }
    let (tx, rx) = oneshot::channel();
    let msg = ShardMsg::Op {
        op,
        subscription,
        from: ctx.id,
        reply: tx,
    };
    match ask::<_, Result<_, Reply>>(ctx, target, msg, rx).await {
        Ok((reply, saved)) => crate::shard::settle(reply, saved, ctx.shared.disk.as_ref()).await,
        Err(r) => r,
    }
}

/// Answers a read or a beat for another shard's service from the view
/// that shard published, without asking it: lists, details and service
/// gets from the view; a beat of a known healthy instance is answered and
/// handed to the owner in this turn's batch. None, with `op` left in
/// place, when there is no current view or the owner must decide (an
/// unknown or unhealthy instance's beat).
fn read_here(
    ctx: &Rc<ShardCtx>,
    owner: usize,
    op: &mut Option<crate::store::Op>,
    subscription: &mut Option<api::Subscription>,
) -> Option<Reply> {
    use crate::store::{render, Op};
    /// What the view says.
    enum Seen {
        Reply(Reply),
        /// A known healthy instance's beat interval.
        Beat(u64),
        /// The owner decides.
        Owner,
    }
    let o = op.as_ref()?;
    let views = ctx.views.borrow();
    let seen = views.get(o.service().full_key()).and_then(|slot| {
        slot.with(|view| match o {
            Op::List { variant, .. } => Seen::Reply(Reply::json(view.list(variant))),
            Op::GetInstance { svc, addr } => Seen::Reply(match view.instance(&addr.key()) {
                Some(i) => Reply::json(render::instance_json(svc, i)),
                None => crate::store::instance_not_found(svc, addr),
            }),
            Op::GetService { .. } => Seen::Reply(Reply::json(render::service_json(view))),
            Op::Beat { addr, .. } => match view.instance(&addr.key()) {
                Some(i) if i.healthy => Seen::Beat(i.timeouts.get().beat_interval_ms),
                _ => Seen::Owner,
            },
            _ => Seen::Owner,
        })
    });
    drop(views);
    let reply = match seen {
        None => {
            ctx.stats().view_misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Seen::Owner) => return None,
        Some(Seen::Reply(r)) => r,
        Some(Seen::Beat(interval)) => {
            let beat = op.take().expect("checked above");
            if ctx.post_lazy(owner, ShardMsg::Beat(beat)).is_err() {
                return Some(Reply::text(503, "shard busy, retry"));
            }
            ctx.stats().view_hits.fetch_add(1, Ordering::Relaxed);
            return Some(crate::store::beat_reply(10200, interval));
        }
    };
    if let Some(sub) = subscription.take() {
        // The subscriber is recorded by the owner, in this turn's batch.
        let svc = o.service().clone();
        let msg = ShardMsg::Run(Box::new(move |c: &ShardCtx| {
            c.state.borrow_mut().push.subscribe(&svc, sub, now_ms());
        }));
        if ctx.post_lazy(owner, msg).is_err() {
            return Some(Reply::text(503, "shard busy, retry"));
        }
    }
    ctx.stats().view_hits.fetch_add(1, Ordering::Relaxed);
    Some(reply)
}

/// A read or beat through the owner; keeps the view slot it answers with.
async fn read_at_owner(
    ctx: &Rc<ShardCtx>,
    owner: usize,
    op: crate::store::Op,
    subscription: Option<api::Subscription>,
) -> Reply {
    let key: Box<str> = op.service().full_key().into();
    let (tx, rx) = oneshot::channel();
    let msg = ShardMsg::Read {
        op,
        subscription,
        from: ctx.id,
        reply: tx,
    };
    if ctx.post(owner, msg).is_err() {
        return Reply::text(503, "shard busy, retry");
    }
    match rx.await {
        Ok((reply, slot, saved)) => {
            {
                let mut views = ctx.views.borrow_mut();
                match slot {
                    Some(slot) => {
                        views.insert(key, slot);
                    }
                    None => {
                        views.remove(&key);
                    }
                }
            }
            // A read never waits for a store that is behind.
            crate::shard::settle(reply, saved, None).await
        }
        Err(_) => Reply::text(500, "shard did not answer"),
    }
}

/// Every shard's service names of `namespace` and `group`, sorted.
pub async fn service_names(
    ctx: &Rc<ShardCtx>,
    namespace: &str,
    group: &str,
) -> Result<Vec<String>, Reply> {
    let mut names = Vec::new();
    for shard in 0..ctx.shared.inboxes.len() {
        if shard == ctx.id {
            names.extend(ctx.state.borrow().store.service_names(namespace, group));
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let msg = ShardMsg::ServiceNames {
            namespace: namespace.to_string(),
            group: group.to_string(),
            from: ctx.id,
            reply: tx,
        };
        names.extend(ask::<_, Result<_, Reply>>(ctx, shard, msg, rx).await?);
    }
    names.sort_unstable();
    Ok(names)
}

/// (total, the 1-based page `page_no` of `page_size` names).
pub fn page_of(names: &[String], page_no: usize, page_size: usize) -> (usize, &[String]) {
    let count = names.len();
    let start = page_no
        .saturating_sub(1)
        .saturating_mul(page_size)
        .min(count);
    let end = start.saturating_add(page_size).min(count);
    (count, &names[start..end])
}

/// Sends `msg` to shard `target` and waits for its answer.
async fn ask<T, R: AskReply<T>>(
    ctx: &Rc<ShardCtx>,
    target: usize,
    msg: ShardMsg,
    rx: oneshot::Receiver<T>,
) -> R {
    if ctx.post(target, msg).is_err() {
        return R::fail(Reply::text(503, "shard busy, retry"));
    }
    match rx.await {
        Ok(v) => R::ok(v),
        Err(_) => R::fail(Reply::text(500, "shard did not answer")),
    }
}

/// Lets `ask` return either a bare `Reply` or a `Result<T, Reply>`.
trait AskReply<T> {
    fn ok(v: T) -> Self;
    fn fail(r: Reply) -> Self;
}

impl AskReply<Reply> for Reply {
    fn ok(v: Reply) -> Self {
        v
    }
    fn fail(r: Reply) -> Self {
        r
    }
}

impl<T> AskReply<T> for Result<T, Reply> {
    fn ok(v: T) -> Self {
        Ok(v)
    }
    fn fail(r: Reply) -> Self {
        Err(r)
    }
}
