//! Serving gRPC connections on a shard: h2c (HTTP/2 with prior knowledge)
//! from hyperium `h2` over monoio's poll-io stream, one task for the
//! connection and one per HTTP/2 stream, all on the core that accepted the
//! connection. That core owns the connection's client record: what it
//! published and what it subscribed (`Client`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use monoio::net::TcpStream;
use serde_json::json;

use super::codec;
use super::naming::{self, Naming, RequestJson};
use super::watch::{self, Liveness, Pushes, Timing};
use crate::shard::conn::{page_of, run_op, service_names};
use crate::shard::{now_ms, ShardCtx};
use crate::store::instance::{InstanceAddr, Lease};
use crate::store::service::ServiceId;
use crate::store::Op;
use futures_channel::oneshot;

/// The unary service and the connection's stream (no proto package).
pub const PATH_UNARY: &str = "/Request/request";
pub const PATH_STREAM: &str = "/BiRequestStream/requestBiStream";
/// HTTP/2 streams one connection may have open at once.
const STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// gRPC status codes used here.
const GRPC_OK: &str = "0";
const GRPC_INVALID_ARGUMENT: &str = "3";
const GRPC_RESOURCE_EXHAUSTED: &str = "8";
const GRPC_UNIMPLEMENTED: &str = "12";
const GRPC_UNAVAILABLE: &str = "14";
/// An ejected connection gets this long to flush its last frames.
const EJECT_FLUSH_MS: u64 = 1_000;

/// Connection serials, node-wide (a tag never repeats while the node runs).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// One connection's client record.
pub struct Client {
    /// `{millis}_{ip}_{port}`, as Nacos makes it.
    pub id: String,
    /// Where the connection comes from (failed logins are limited per
    /// address).
    pub peer_ip: std::net::IpAddr,
    /// What the store binds this connection's instances to.
    pub lease: Arc<Lease>,
    /// `ConnectionSetupRequest` arrived.
    pub registered: bool,
    /// Labelled `module=naming`: a naming client.
    pub naming: bool,
    /// Per service (full key): the service and the instances it published.
    pub publishers: HashMap<String, (ServiceId, Vec<InstanceAddr>)>,
    /// Per service (full key): the service and the clusters subscribed.
    pub subscribed: HashMap<String, (ServiceId, String)>,
    /// The connection's stream, once open: pushes are written to it.
    pub stream: Option<h2::SendStream<Bytes>>,
    /// Per service: the last `lastRefTime` sent, so that each answer and
    /// push carries a larger one.
    pub last_ref: HashMap<String, u64>,
    /// Request ids of server requests, pushes and probes (strings on the
    /// wire).
    pub next_push_id: u64,
    /// Pushes written and not yet answered (`NotifySubscriberResponse`).
    pub pushes: Pushes,
    /// Its last unary request or stream message (ms since epoch).
    pub last_active_ms: u64,
    /// When the unanswered `ClientDetectionRequest` went out.
    pub probed_at: Option<u64>,
    /// Fired by the sweep to eject the connection.
    pub eject: Option<oneshot::Sender<()>>,
}

impl Client {
    /// A `lastRefTime` for `svc` above every one sent on this connection.
    fn ref_time(&mut self, svc: &ServiceId, list_time: u64) -> u64 {
        let last = self.last_ref.entry(svc.full_key().to_string()).or_insert(0);
        *last = list_time.max(*last + 1);
        *last
    }

    /// Anything from the client proves it alive.
    fn heard(&mut self, now_ms: u64) {
        self.last_active_ms = now_ms;
        self.probed_at = None;
    }

    fn write(&mut self, frame: Bytes) {
        if let Some(stream) = self.stream.as_mut() {
            let _ = stream.send_data(frame, false);
        }
    }
}

thread_local! {
    /// This shard's open connections by serial, for pushes from the shards
    /// that own the services they subscribed.
    static CONNS: RefCell<HashMap<u64, std::rc::Weak<RefCell<Client>>>> =
        RefCell::new(HashMap::new());
}

/// Delivers a push from a service's shard to a subscriber's connection:
/// on this shard, or on the connection's own through its inbox.
pub fn push_to(ctx: &ShardCtx, p: crate::push::state::GrpcPush) {
    if p.to.shard == ctx.id {
        deliver(ctx, &p);
        return;
    }
    let shard = p.to.shard;
    let msg = crate::shard::ShardMsg::Run(Box::new(move |c: &ShardCtx| deliver(c, &p)));
    // A full inbox drops the push (counted as inbox_full); the sweep does
    // not resend what never reached the connection's shard.
    let _ = ctx.post(shard, msg);
}

/// Writes a `NotifySubscriberRequest` on the connection's stream (on the
/// shard that holds it).
fn deliver(ctx: &ShardCtx, p: &crate::push::state::GrpcPush) {
    let Some(client) = CONNS.with(|c| c.borrow().get(&p.to.conn).and_then(|w| w.upgrade())) else {
        return; // closed since
    };
    let mut c = client.borrow_mut();
    if !c.subscribed.contains_key(p.svc.full_key()) {
        return;
    }
    let info = push_info(p, &mut c);
    c.next_push_id += 1;
    let body = format!(
        r#"{{"headers":{{}},"requestId":"{}","module":"naming","serviceInfo":{info}}}"#,
        c.next_push_id
    )
    .into_bytes();
    let frame = Bytes::from(codec::encode_framed("NotifySubscriberRequest", &body));
    let push_id = c.next_push_id;
    if !c
        .pushes
        .sent(push_id, p.svc.full_key(), frame.clone(), now_ms())
    {
        // A client that does not answer gets nothing more buffered for it.
        ctx.stats()
            .grpc_pushes_dropped
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    c.write(frame);
    ctx.stats().grpc_pushes_sent.fetch_add(1, Ordering::Relaxed);
}

/// A rendered push: (service key, list JSON, its lastRefTime, the
/// serviceInfo JSON).
type RenderedInfo = (String, Bytes, u64, Rc<str>);

thread_local! {
    /// The last push rendered on this shard. A change reaches every
    /// subscriber on this shard with the same list, which is parsed and
    /// rendered once, not once per subscriber.
    static LAST_INFO: RefCell<Option<RenderedInfo>> = const { RefCell::new(None) };
}

/// The `serviceInfo` JSON of a push to one connection: the shard's shared
/// rendering, unless the connection needs a larger `lastRefTime` than the
/// list's (it was sent a later one before).
fn push_info(p: &crate::push::state::GrpcPush, c: &mut Client) -> Rc<str> {
    let (list_time, shared) = LAST_INFO.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fresh =
            matches!(&*cell, Some((k, b, ..)) if k == p.svc.full_key() && *b == p.list_json);
        if !fresh {
            let mut own = 0;
            let v = naming::service_info(&p.list_json, &p.svc, |t| {
                own = t;
                t
            });
            let text: Rc<str> = Rc::from(v.to_string());
            *cell = Some((p.svc.full_key().to_string(), p.list_json.clone(), own, text));
        }
        let (_, _, t, text) = cell.as_ref().expect("set above");
        (*t, text.clone())
    });
    let r = c.ref_time(&p.svc, list_time);
    if r == list_time {
        return shared;
    }
    Rc::from(naming::service_info(&p.list_json, &p.svc, |_| r).to_string())
}

/// The shard's sweep over its gRPC connections: probes the idle ones,
/// ejects the probed ones that stay silent, writes unanswered pushes
/// again (`watch`).
pub async fn sweep_loop(ctx: Rc<ShardCtx>) {
    let timing = Timing {
        idle_ms: ctx.shared.config.grpc_probe_idle_ms,
        probe_timeout_ms: ctx.shared.config.grpc_probe_timeout_ms,
    };
    let every = Duration::from_millis(timing.sweep_ms());
    while !ctx.shared.shutdown.load(Ordering::Relaxed) {
        monoio::time::sleep(every).await;
        let now = now_ms();
        let clients: Vec<Rc<RefCell<Client>>> =
            CONNS.with(|c| c.borrow().values().filter_map(|w| w.upgrade()).collect());
        for client in clients {
            let mut c = client.borrow_mut();
            match watch::liveness(c.last_active_ms, c.probed_at, now, timing) {
                Liveness::Fine => {}
                Liveness::Probe => {
                    c.probed_at = Some(now);
                    c.next_push_id += 1;
                    let body = serde_json::to_vec(&json!({
                        "headers": {},
                        "requestId": c.next_push_id.to_string(),
                        "module": "internal",
                    }))
                    .unwrap_or_default();
                    c.write(Bytes::from(codec::encode_framed(
                        "ClientDetectionRequest",
                        &body,
                    )));
                }
                Liveness::Eject => {
                    if let Some(tx) = c.eject.take() {
                        tracing::info!(shard = ctx.id, conn = %c.id, "gRPC connection ejected: no answer to ClientDetectionRequest");
                        ctx.stats().grpc_ejected.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(());
                    }
                }
            }
            let (again, given_up) = c.pushes.due(now);
            for frame in again {
                c.write(frame);
                ctx.stats()
                    .grpc_push_retries
                    .fetch_add(1, Ordering::Relaxed);
            }
            ctx.stats()
                .grpc_pushes_dropped
                .fetch_add(given_up as u64, Ordering::Relaxed);
        }
    }
}

/// Serves one accepted gRPC connection until it closes (accepted by
/// `shard::conn::accept_loop`).
pub async fn serve(ctx: &Rc<ShardCtx>, stream: TcpStream, peer: SocketAddr) {
    let io = match stream.try_into_poll_io() {
        Ok(io) => io,
        Err((e, _)) => {
            tracing::warn!(shard = ctx.id, error = %e, "gRPC stream refused poll-io");
            return;
        }
    };
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .max_header_list_size(ctx.shared.config.header_bytes_max as u32)
        .handshake::<_, Bytes>(io);
    let idle = Duration::from_millis(ctx.shared.config.idle_timeout_ms);
    let mut conn = match monoio::time::timeout(idle, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(shard = ctx.id, %peer, error = %e, "not an HTTP/2 client");
            return;
        }
        Err(_) => return,
    };
    let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
    let (eject_tx, mut eject_rx) = oneshot::channel();
    let client = Rc::new(RefCell::new(Client {
        id: format!("{}_{}_{}", now_ms(), peer.ip(), peer.port()),
        peer_ip: peer.ip(),
        lease: Arc::new(Lease {
            holder: ctx.shared.lease_holder().to_string(),
            boot: ctx.shared.boot_ms,
            serial,
        }),
        registered: false,
        naming: false,
        publishers: HashMap::new(),
        subscribed: HashMap::new(),
        stream: None,
        last_ref: HashMap::new(),
        next_push_id: 0,
        pushes: Pushes::default(),
        last_active_ms: now_ms(),
        probed_at: None,
        eject: Some(eject_tx),
    }));
    CONNS.with(|c| c.borrow_mut().insert(serial, Rc::downgrade(&client)));
    ctx.stats().grpc_connections.fetch_add(1, Ordering::Relaxed);
    let mut ejected = false;
    loop {
        let next = monoio::select! {
            n = conn.accept() => n,
            _ = &mut eject_rx => {
                ejected = true;
                None
            }
        };
        let Some(next) = next else { break };
        let (req, respond) = match next {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(shard = ctx.id, %peer, error = %e, "gRPC connection error");
                break;
            }
        };
        if ctx.shared.shutdown.load(Ordering::Relaxed) {
            break;
        }
        let path = req.uri().path().to_string();
        let body = req.into_body();
        let ctx = ctx.clone();
        let client = client.clone();
        monoio::spawn(async move {
            match path.as_str() {
                PATH_UNARY => unary(&ctx, &client, body, respond).await,
                PATH_STREAM => bi_stream(&ctx, &client, body, respond).await,
                other => {
                    let msg = format!("unknown gRPC method {other}");
                    trailers_only(respond, GRPC_UNIMPLEMENTED, &msg);
                }
            }
        });
    }
    if ejected {
        // The stream ends with a non-OK status, then the connection goes:
        // every client takes that as its cue to reconnect (and redo).
        let stream = client.borrow_mut().stream.take();
        if let Some(mut s) = stream {
            let mut trailers = http::HeaderMap::new();
            trailers.insert(
                "grpc-status",
                http::HeaderValue::from_static(GRPC_UNAVAILABLE),
            );
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static(
                    "connection ejected: no answer to ClientDetectionRequest",
                ),
            );
            let _ = s.send_trailers(trailers);
        }
        conn.graceful_shutdown();
        // Until the client closes, an error, or the time is up (an error
        // may repeat without ever waiting: stop at the first).
        let flush = async { while let Some(Ok(_)) = conn.accept().await {} };
        let _ = monoio::time::timeout(Duration::from_millis(EJECT_FLUSH_MS), flush).await;
    }
    ctx.stats().grpc_connections.fetch_sub(1, Ordering::Relaxed);
    // The transport is gone: the connection's instances go at once, and
    // its subscriptions.
    CONNS.with(|c| c.borrow_mut().remove(&serial));
    release_all(ctx, &client).await;
    let subscribed = std::mem::take(&mut client.borrow_mut().subscribed);
    for (_, (svc, clusters)) in subscribed {
        let _ = subscribe_at_owner(ctx, svc, serial, clusters, false).await;
    }
}

/// Records (or drops) the connection as a push subscriber of `svc` on the
/// shard that owns the service.
async fn subscribe_at_owner(
    ctx: &Rc<ShardCtx>,
    svc: ServiceId,
    serial: u64,
    clusters: String,
    on: bool,
) -> Result<bool, crate::reply::Reply> {
    let owner = crate::shard::router::shard_of(svc.full_key(), ctx.shared.inboxes.len());
    let sub = crate::push::state::GrpcSubscriber {
        shard: ctx.id,
        conn: serial,
        clusters,
    };
    ctx.run_on(owner, move |c| {
        let mut st = c.state.borrow_mut();
        st.push.grpc_subscribe(&svc, sub, on)
    })
    .await
}

/// Removes every instance the connection published (where it is still
/// the publisher), on each service's shard.
async fn release_all(ctx: &Rc<ShardCtx>, client: &Rc<RefCell<Client>>) {
    let (lease, publishers) = {
        let mut c = client.borrow_mut();
        (c.lease.clone(), std::mem::take(&mut c.publishers))
    };
    for (_, (svc, addrs)) in publishers {
        let op = Op::Publish {
            svc,
            conn: lease.clone(),
            specs: Vec::new(),
            release: addrs,
        };
        let r = run_op(ctx, op, None).await;
        if r.status != 200 {
            tracing::warn!(
                shard = ctx.id,
                status = r.status,
                "releasing a closed connection's instances failed"
            );
        }
    }
}

fn grpc_headers() -> http::Response<()> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("static response")
}

/// A response with no message: HEADERS carrying the grpc-status.
fn trailers_only(mut respond: SendResponse<Bytes>, status: &str, message: &str) {
    let resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", status)
        .header("grpc-message", sanitize(message))
        .body(())
        .expect("static response");
    let _ = respond.send_response(resp, true);
}

/// grpc-message must be printable ASCII here (no percent-encoding needed).
fn sanitize(m: &str) -> String {
    m.chars()
        .map(|c| {
            if (' '..='~').contains(&c) && c != '%' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Reads the whole request body (a unary call: one message).
async fn read_all(body: &mut RecvStream, max: usize) -> Result<Vec<u8>, (&'static str, String)> {
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| (GRPC_INVALID_ARGUMENT, e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > max + 5 {
            return Err((
                GRPC_RESOURCE_EXHAUSTED,
                format!("message over the limit of {max} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn unary(
    ctx: &Rc<ShardCtx>,
    client: &Rc<RefCell<Client>>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let max = ctx.shared.config.grpc_message_bytes_max;
    let mut buf = match read_all(&mut body, max).await {
        Ok(b) => b,
        Err((status, msg)) => return trailers_only(respond, status, &msg),
    };
    let msg = match codec::next_message(&mut buf, max) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return trailers_only(respond, GRPC_INVALID_ARGUMENT, "no complete gRPC message")
        }
        Err(codec::CodecError::TooLarge(..)) => {
            return trailers_only(respond, GRPC_RESOURCE_EXHAUSTED, "message over the limit")
        }
        Err(e) => return trailers_only(respond, GRPC_INVALID_ARGUMENT, &e.to_string()),
    };
    let (kind, json) = match codec::decode(&msg) {
        Ok(p) => handle(ctx, client, &p.kind, &p.body, &p.headers).await,
        Err(e) => (
            "ErrorResponse",
            naming::error("", naming::BAD_GATEWAY, &format!("bad payload: {e}")),
        ),
    };
    let Ok(mut send) = respond.send_response(grpc_headers(), false) else {
        return;
    };
    let _ = send.send_data(Bytes::from(codec::encode_framed(kind, &json)), false);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(GRPC_OK));
    let _ = send.send_trailers(trailers);
}

/// `--auth` on a naming request: the `accessToken` of the request's
/// metadata headers (or of its JSON `headers`, where a client puts it),
/// checked by the rules of the HTTP API.
async fn authorize(
    ctx: &Rc<ShardCtx>,
    auth: &crate::auth::Auth,
    headers: &[(String, String)],
    r: &RequestJson,
    what: &Naming,
    from: std::net::IpAddr,
) -> Result<(), crate::reply::Reply> {
    use crate::auth::{users::resource, Action, Credentials};
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .or_else(|| r.header(name))
    };
    let creds = Credentials {
        token: header("accessToken"),
        username: header("username"),
        password: header("password"),
    };
    let name = auth
        .identify(&ctx.auth_cache, &creds, from)
        .await
        .map_err(|e| e.reply(None))?;
    let (res, act) = match what {
        Naming::Publish { svc, .. } => (
            resource(svc.namespace(), svc.group(), svc.name()),
            Action::Write,
        ),
        Naming::Persistent { op, .. } => {
            let s = op.service();
            (resource(s.namespace(), s.group(), s.name()), Action::Write)
        }
        Naming::Query { svc, .. } => (
            resource(svc.namespace(), svc.group(), svc.name()),
            Action::Read,
        ),
        Naming::ServiceList {
            namespace, group, ..
        } => (resource(namespace, group, "*"), Action::Read),
    };
    auth.permit(&name, &res, act)
}

/// One unary request: (response type, JSON body).
async fn handle(
    ctx: &Rc<ShardCtx>,
    client: &Rc<RefCell<Client>>,
    kind: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> (&'static str, Vec<u8>) {
    client.borrow_mut().heard(now_ms());
    ctx.stats().grpc_requests.fetch_add(1, Ordering::Relaxed);
    let r = match RequestJson::parse(body) {
        Ok(r) => r,
        Err(e) => return ("ErrorResponse", naming::error("", naming::BAD_GATEWAY, &e)),
    };
    let rid = r.request_id();
    let fail = |code, msg: &str| ("ErrorResponse", naming::error(&rid, code, msg));
    // A store or shard refusal: its status and text as the error.
    let refused =
        |r: &crate::reply::Reply| fail(u32::from(r.status), &String::from_utf8_lossy(&r.body));
    if kind == "ServerCheckRequest" {
        let id = client.borrow().id.clone();
        return (
            "ServerCheckResponse",
            naming::response(
                &rid,
                json!({"connectionId": id, "supportAbilityNegotiation": false}),
            ),
        );
    }
    let (registered, is_naming, lease) = {
        let c = client.borrow();
        (c.registered, c.naming, c.lease.clone())
    };
    if !registered {
        return fail(naming::UNREGISTERED, "Connection is unregistered.");
    }
    if kind == "HealthCheckRequest" {
        return ("HealthCheckResponse", naming::response(&rid, json!({})));
    }
    let what = match naming::naming(kind, &r) {
        Ok(w) => w,
        Err((code, msg)) => return fail(code, &msg),
    };
    if !is_naming {
        let id = client.borrow().id.clone();
        return fail(
            naming::BAD_REQUEST,
            &format!("Client [{id}] connection has no naming client (module=naming in its setup)"),
        );
    }
    if let Some(auth) = &ctx.shared.auth {
        let peer_ip = client.borrow().peer_ip;
        if let Err(denied) = authorize(ctx, auth, headers, &r, &what, peer_ip).await {
            return refused(&denied);
        }
    }
    match what {
        Naming::Publish {
            svc,
            specs,
            batch,
            kind: t,
        } => {
            let key = svc.full_key().to_string();
            let release = client
                .borrow()
                .publishers
                .get(&key)
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            let addrs: Vec<InstanceAddr> = specs.iter().map(|s| s.addr.clone()).collect();
            let op = Op::Publish {
                svc: svc.clone(),
                conn: lease,
                specs,
                release,
            };
            let reply = run_op(ctx, op, None).await;
            if reply.status != 200 {
                return refused(&reply);
            }
            {
                let mut c = client.borrow_mut();
                if addrs.is_empty() {
                    c.publishers.remove(&key);
                } else {
                    c.publishers.insert(key, (svc, addrs));
                }
            }
            let rtype = if batch {
                "BatchInstanceResponse"
            } else {
                "InstanceResponse"
            };
            (rtype, naming::response(&rid, json!({"type": t})))
        }
        Naming::Persistent { op, kind: t } => {
            let reply = run_op(ctx, op, None).await;
            if reply.status != 200 {
                return refused(&reply);
            }
            (
                "InstanceResponse",
                naming::response(&rid, json!({"type": t})),
            )
        }
        Naming::Query {
            svc,
            variant,
            subscribe,
        } => {
            let clusters = variant.clusters.clone();
            let op = Op::List {
                svc: svc.clone(),
                variant,
            };
            let reply = run_op(ctx, op, None).await;
            if reply.status != 200 {
                return refused(&reply);
            }
            let info =
                naming::service_info(&reply.body, &svc, |t| client.borrow_mut().ref_time(&svc, t));
            match subscribe {
                None => (
                    "QueryServiceResponse",
                    naming::response(&rid, json!({"serviceInfo": info})),
                ),
                Some(on) => {
                    let key = svc.full_key().to_string();
                    let serial = lease.serial;
                    match subscribe_at_owner(ctx, svc.clone(), serial, clusters.clone(), on).await {
                        Ok(true) => {}
                        Ok(false) => {
                            return fail(
                                naming::OVER_THRESHOLD,
                                "too many subscribers of this service",
                            )
                        }
                        Err(r) => return refused(&r),
                    }
                    let mut c = client.borrow_mut();
                    if on {
                        c.subscribed.insert(key, (svc, clusters));
                    } else {
                        c.subscribed.remove(&key);
                    }
                    (
                        "SubscribeServiceResponse",
                        naming::response(&rid, json!({"serviceInfo": info, "message": "success"})),
                    )
                }
            }
        }
        Naming::ServiceList {
            namespace,
            group,
            page_no,
            page_size,
        } => match service_names(ctx, &namespace, &group).await {
            Ok(names) => {
                let (count, page) = page_of(&names, page_no, page_size);
                (
                    "ServiceListResponse",
                    naming::response(&rid, json!({"count": count, "serviceNames": page})),
                )
            }
            Err(reply) => refused(&reply),
        },
    }
}

/// The connection's stream: the client's `ConnectionSetupRequest`, its
/// answers to our requests; kept open for pushes.
async fn bi_stream(
    ctx: &Rc<ShardCtx>,
    client: &Rc<RefCell<Client>>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
) {
    let max = ctx.shared.config.grpc_message_bytes_max;
    let Ok(send) = respond.send_response(grpc_headers(), false) else {
        return;
    };
    client.borrow_mut().stream = Some(send);
    let mut buf = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { break };
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        loop {
            match codec::next_message(&mut buf, max) {
                Ok(Some(msg)) => match codec::decode(&msg) {
                    Ok(p) => on_stream_message(ctx, client, &p),
                    Err(e) => {
                        tracing::debug!(shard = ctx.id, error = %e, "bad payload on the stream")
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(shard = ctx.id, error = %e, "gRPC stream ends: unreadable message");
                    return;
                }
            }
        }
    }
}

fn on_stream_message(ctx: &ShardCtx, client: &Rc<RefCell<Client>>, p: &codec::Payload) {
    client.borrow_mut().heard(now_ms());
    if p.kind == "NotifySubscriberResponse" {
        let id = RequestJson::parse(&p.body)
            .ok()
            .and_then(|r| r.request_id().parse::<u64>().ok());
        if client.borrow_mut().pushes.acked(id) {
            ctx.stats().push_acks.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    if p.kind == "ConnectionSetupRequest" {
        let r = RequestJson::parse(&p.body).unwrap_or_default();
        let module = r
            .labels
            .as_ref()
            .and_then(|l| l.get("module"))
            .and_then(|m| m.as_str())
            .unwrap_or("");
        let mut c = client.borrow_mut();
        c.registered = true;
        c.naming = module == "naming";
        tracing::debug!(shard = ctx.id, conn = %c.id, module, "gRPC connection registered");
    }
}
