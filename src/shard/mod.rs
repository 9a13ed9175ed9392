//! One shard per core: a single-threaded monoio runtime pinned to its core
//! that owns, exclusively, its slice of the registry (`Store`), its expiry
//! timers and its push subscribers. Other shards reach that state only by
//! sending a message to its inbox.

pub mod conn;
pub mod inbox;
pub mod router;
pub mod runtime;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use futures_channel::oneshot;
use monoio::net::udp::UdpSocket;

use crate::api::{NodeInfo, Subscription};
use crate::config::Config;
use crate::http::request::Limits;
use crate::metrics::ShardStats;
use crate::push::state::{PushConfig, PushState};
use crate::reply::Reply;
use crate::store::instance::Timeouts;
use crate::store::service::ListVariant;
use crate::store::view::ViewSlot;
use crate::store::{Op, Store};
use inbox::{Inbox, Mail};

/// Longest pause of a shard's housekeeping tick (expiry, pushes, shutdown).
const TICK_MS_MAX: u64 = 100;
/// Shortest pause of the tick.
const TICK_MS_MIN: u64 = 5;
/// Ticks per `--sync-delay-ms` on a clustered node.
const REPLICATION_TICKS_PER_DELAY: u64 = 4;
/// How often a shard drops the view slots of services gone from their
/// owners.
const VIEWS_SWEEP_MS: u64 = 1_000;
/// Largest datagram accepted on the push socket (acks are small).
const UDP_RECV_BYTES: usize = 64 * 1024;

/// Wall-clock milliseconds since the epoch: the only clock the shards read.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A message between shards.
pub enum ShardMsg {
    /// Apply a command to a service this shard owns and answer.
    Op {
        op: Op,
        subscription: Option<Subscription>,
        /// The asking shard, where the answer goes back.
        from: usize,
        /// The answer, and for a change to persistent data what its
        /// save says (the asker waits for it before it answers).
        reply: oneshot::Sender<(Reply, Option<crate::disk::Saved>)>,
    },
    /// Names of the services of a namespace and group on this shard.
    ServiceNames {
        namespace: String,
        group: String,
        from: usize,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// A read or a beat that another shard could not answer from a view:
    /// the answer, and the service's view slot for next time.
    Read {
        op: Op,
        subscription: Option<Subscription>,
        from: usize,
        reply: oneshot::Sender<(Reply, Option<Arc<ViewSlot>>, Option<crate::disk::Saved>)>,
    },
    /// A beat another shard answered from its view: apply it, answer no
    /// one.
    Beat(Op),
    /// Any other work on this shard's state (peer endpoints, cluster
    /// loops): run it and let it send its own answer.
    Run(Box<dyn FnOnce(&ShardCtx) + Send>),
    /// An answer back on the asking shard: completes its waiter there (so
    /// that answers travel in batches too, and wake their task locally).
    Done(Box<dyn FnOnce() + Send>),
}

/// The answer to a persistent write while the store cannot be written.
pub fn refused_unsaved(why: &str) -> Reply {
    Reply::text(
        503,
        format!(
            "the data directory cannot be written ({why}): persistent writes are refused \
             until it can"
        ),
    )
}

/// How long a write's reply waits at most for a storage thread that is
/// behind (`disk::UNSAVED_ROWS_MAX`), and how often it looks.
const STORE_BEHIND_WAIT_MS_MAX: u64 = 1_000;
const STORE_BEHIND_POLL_MS: u64 = 2;

/// The reply of a write once its save (if it had to wait for one) is
/// done: 503 when the store could not save it. Any write's reply also
/// waits while the storage thread is behind (back-pressure; at most
/// `STORE_BEHIND_WAIT_MS_MAX`).
pub async fn settle(
    reply: Reply,
    saved: Option<crate::disk::Saved>,
    disk: Option<&crate::disk::DiskHandle>,
) -> Reply {
    if let Some(d) = disk {
        let mut waited = 0;
        while d.behind() && waited < STORE_BEHIND_WAIT_MS_MAX {
            monoio::time::sleep(Duration::from_millis(STORE_BEHIND_POLL_MS)).await;
            waited += STORE_BEHIND_POLL_MS;
        }
    }
    match saved {
        None => reply,
        Some(rx) => match rx.await {
            Ok(Ok(())) => reply,
            Ok(Err(why)) => refused_unsaved(&why),
            Err(_) => refused_unsaved("the store stopped"),
        },
    }
}

/// Ops whose changes are replicated (everything but reads).
fn applied_changes_replicated(op: &Op) -> bool {
    !matches!(
        op,
        Op::List { .. } | Op::GetInstance { .. } | Op::GetService { .. }
    )
}

/// A housekeeping tick this much later than due means the process was
/// frozen (SIGSTOP, a VM pause): every instance gets a fresh timeout
/// before anything is expired, as after an ownership change.
pub const STALL_GRACE_MS: u64 = 2_000;

/// State shared by every shard of the node. Only atomics and the inboxes'
/// sending halves; no registry data.
pub struct Shared {
    pub config: Config,
    pub node: NodeInfo,
    /// Membership and readiness of a clustered node; None standalone.
    pub cluster: Option<crate::cluster::ClusterShared>,
    pub inboxes: Vec<Inbox<ShardMsg>>,
    pub stats: Vec<ShardStats>,
    pub open_connections: AtomicUsize,
    pub shutdown: AtomicBool,
    /// When this process started (ms since epoch): the incarnation its
    /// connection leases carry.
    pub boot_ms: u64,
    /// The store on disk; None with `--data-dir none`.
    pub disk: Option<crate::disk::DiskHandle>,
    /// Client authentication; None without `--auth`.
    pub auth: Option<crate::auth::Auth>,
}

impl Shared {
    /// The holder name of this node's leases: its member address, or
    /// `""` standalone.
    pub fn lease_holder(&self) -> &str {
        self.cluster.as_ref().map(|c| c.me.as_str()).unwrap_or("")
    }
}

/// What one shard owns.
pub struct ShardState {
    pub store: Store,
    pub push: PushState,
}

/// A shard's context, shared by the tasks of its runtime (`Rc`: never
/// leaves the thread).
pub struct ShardCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub state: RefCell<ShardState>,
    pub limits: Limits,
    /// This shard's cluster part; None standalone.
    pub cluster: Option<crate::cluster::shard::ClusterCtx>,
    /// Messages for other shards, leaving at the end of this turn.
    pub mail: Mail<ShardMsg>,
    /// This shard's inbox: batches from other shards.
    pub inbox: Receiver<Vec<ShardMsg>>,
    /// The view slots of other shards' services read through this shard
    /// (at most one per service; a dead one is dropped by the tick).
    pub views: RefCell<crate::store::Map<Box<str>, Arc<ViewSlot>>>,
    /// Credentials this shard verified (`--auth`).
    pub auth_cache: RefCell<crate::auth::AuthCache>,
}

impl ShardCtx {
    pub fn stats(&self) -> &ShardStats {
        &self.shared.stats[self.id]
    }

    /// Applies a command on this shard, for a caller that does not wait
    /// for its save (a beat, a relayed beat).
    pub fn execute(&self, op: Op, subscription: Option<Subscription>, now_ms: u64) -> Reply {
        self.execute_op(op, subscription, now_ms).0
    }

    /// Applies a command on this shard. Never awaits, so the `RefCell`
    /// borrow cannot span a suspension. A change to persistent data comes
    /// with what its save will say: its reply may leave only once that
    /// says Ok (`settle`).
    pub fn execute_op(
        &self,
        op: Op,
        subscription: Option<Subscription>,
        now_ms: u64,
    ) -> (Reply, Option<crate::disk::Saved>) {
        let mut st = self.state.borrow_mut();
        if let Some(d) = &self.shared.disk {
            if d.failing() && st.store.needs_durability(&op) {
                return (refused_unsaved(&d.last_error()), None);
            }
        }
        if let Some(sub) = subscription {
            st.push.subscribe(op.service(), sub, now_ms);
        }
        // Only services with subscribers need to hear of changes.
        let key = st
            .push
            .has_subscribers()
            .then(|| op.service().full_key().to_string());
        let replicate = (applied_changes_replicated(&op) && self.cluster.is_some())
            .then(|| op.service().full_key().to_string());
        let applied = st.store.apply(op, now_ms);
        if let (true, Some(key)) = (applied.changed, key) {
            st.push.changed(&key, now_ms);
        }
        if let (true, Some(key)) = (applied.changed, replicate) {
            self.mark_changed(&key, now_ms);
        }
        self.publish_counts(&st);
        let saved = self.save(&mut st.store, now_ms);
        (applied.reply, saved)
    }

    /// Hands the store's changes to the storage thread: now, with a waiter,
    /// when they hold persistent data; behind when they grew past
    /// `JOURNAL_ENTRIES_MAX`; else at the next tick (`save_behind`).
    fn save(&self, store: &mut Store, now_ms: u64) -> Option<crate::disk::Saved> {
        let disk = self.shared.disk.as_ref()?;
        if store.journal_durable() {
            let changes = store.take_changes()?;
            return Some(disk.save_durable(changes, now_ms).unwrap_or_else(|e| {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(e));
                rx
            }));
        }
        if store.journal_len() >= crate::store::journal::JOURNAL_ENTRIES_MAX {
            if let Some(c) = store.take_changes() {
                disk.save_behind(c, now_ms);
            }
        }
        None
    }

    /// Saves what changed since the last save, without waiting (the tick).
    pub fn save_behind(&self, now_ms: u64) {
        let Some(disk) = &self.shared.disk else {
            return;
        };
        let changes = self.state.borrow_mut().store.take_changes();
        if let Some(c) = changes {
            disk.save_behind(c, now_ms);
        }
    }

    /// Counts that change with every write (two relaxed stores).
    fn publish_counts(&self, st: &ShardState) {
        let c = st.store.counts();
        let s = self.stats();
        s.services.store(c.services as u64, Ordering::Relaxed);
        s.instances.store(c.instances as u64, Ordering::Relaxed);
    }

    /// Gauges that cost a walk; refreshed by the housekeeping tick.
    fn publish_gauges(&self, st: &ShardState) {
        let s = self.stats();
        s.timers_armed
            .store(st.store.timers_armed() as u64, Ordering::Relaxed);
        s.subscribers
            .store(st.push.subscriber_count() as u64, Ordering::Relaxed);
        s.future_versions_refused
            .store(st.store.future_versions_refused(), Ordering::Relaxed);
        s.tombstones_purged_early
            .store(st.store.tombstones_purged_early(), Ordering::Relaxed);
    }

    /// Handles one message; true when it was a request (it held a place
    /// in this shard's inbox).
    fn handle_msg(&self, msg: ShardMsg) -> bool {
        match msg {
            ShardMsg::Op {
                op,
                subscription,
                from,
                reply,
            } => {
                let r = self.execute_op(op, subscription, now_ms());
                // The asking side may have gone (connection closed): fine.
                self.answer(from, move || {
                    let _ = reply.send(r);
                });
            }
            ShardMsg::ServiceNames {
                namespace,
                group,
                from,
                reply,
            } => {
                let names = self.state.borrow().store.service_names(&namespace, &group);
                self.answer(from, move || {
                    let _ = reply.send(names);
                });
            }
            ShardMsg::Read {
                op,
                subscription,
                from,
                reply,
            } => {
                let now = now_ms();
                let key = op.service().full_key().to_string();
                let (r, saved) = self.execute_op(op, subscription, now);
                let slot = self.state.borrow_mut().store.share_view(&key, now);
                self.answer(from, move || {
                    let _ = reply.send((r, slot, saved));
                });
            }
            ShardMsg::Beat(op) => {
                let _ = self.execute(op, None, now_ms());
            }
            ShardMsg::Run(f) => f(self),
            ShardMsg::Done(f) => {
                f();
                return false;
            }
        }
        true
    }

    /// Handles everything queued in this shard's inbox (at most
    /// `inbox_capacity` requests, and their answers): at each wake-up, each
    /// tick, and before each write this shard applies for its own
    /// connections, so that a write never overtakes a beat another shard
    /// answered and queued before it. Never call it with `state` borrowed.
    pub fn drain_inbox(&self) {
        while let Ok(batch) = self.inbox.try_recv() {
            let mut requests = 0;
            for msg in batch {
                requests += usize::from(self.handle_msg(msg));
            }
            self.shared.inboxes[self.id].taken(requests);
        }
    }

    /// Queues a request for shard `to` (another shard): it leaves with
    /// this turn's batch. Refused when `to`'s inbox is full.
    pub fn post(&self, to: usize, msg: ShardMsg) -> Result<(), inbox::SendError> {
        self.reserve_at(to)?;
        self.mail.post(to, msg);
        Ok(())
    }

    /// A place in shard `to`'s inbox for one more request.
    fn reserve_at(&self, to: usize) -> Result<(), inbox::SendError> {
        if !self.shared.inboxes[to].reserve() {
            self.stats().inbox_full.fetch_add(1, Ordering::Relaxed);
            return Err(inbox::SendError::Full);
        }
        self.stats().cross_core_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Queues a message that wants no answer and no haste (a beat answered
    /// from a view, a subscriber's refresh) for shard `to`: it leaves at the
    /// end of this turn without waking `to`, which applies it before its
    /// next write, at its next wake-up, or at its next tick (at most
    /// `TICK_MS_MAX` later, far under any beat timeout; expiry runs after
    /// that drain).
    pub fn post_lazy(&self, to: usize, msg: ShardMsg) -> Result<(), inbox::SendError> {
        self.reserve_at(to)?;
        if self.shared.inboxes[to].half_full() {
            // A busy shard may not wake or tick soon enough for this
            // stream: wake it, rather than let its inbox fill.
            self.mail.post(to, msg);
        } else {
            self.mail.post_lazy(to, msg);
        }
        Ok(())
    }

    /// Sends what was posted for other shards: one batch per destination.
    /// The flusher calls it at the end of each turn, and a connection
    /// before its replies leave, so that a message posted for a request
    /// (a beat answered from a view) is in its owner's inbox before the
    /// client can send its next request (to any shard).
    pub fn send_mail(&self) {
        if !self.mail.is_due() {
            return;
        }
        for (to, batch, wake) in self.mail.take() {
            self.stats()
                .cross_core_batches
                .fetch_add(1, Ordering::Relaxed);
            // Closed only while the process exits.
            let _ = self.shared.inboxes[to].send_batch(batch, wake);
        }
    }

    /// Completes a request of shard `to`: there, in its next batch (here at
    /// once when it is this shard).
    pub fn answer(&self, to: usize, done: impl FnOnce() + Send + 'static) {
        if to == self.id {
            return done();
        }
        self.stats().cross_core_sent.fetch_add(1, Ordering::Relaxed);
        self.mail.post(to, ShardMsg::Done(Box::new(done)));
    }

    /// Runs `f` on shard `target` (here when it is this shard) and returns
    /// its result; 503 when the target's inbox is full.
    pub async fn run_on<T, F>(&self, target: usize, f: F) -> Result<T, Reply>
    where
        T: Send + 'static,
        F: FnOnce(&ShardCtx) -> T + Send + 'static,
    {
        if target == self.id {
            return Ok(f(self));
        }
        let (tx, rx) = oneshot::channel();
        let from = self.id;
        let msg = ShardMsg::Run(Box::new(move |c: &ShardCtx| {
            let v = f(c);
            c.answer(from, move || {
                let _ = tx.send(v);
            });
        }));
        if self.post(target, msg).is_err() {
            return Err(Reply::text(503, "shard busy, retry"));
        }
        rx.await
            .map_err(|_| Reply::text(500, "shard did not answer"))
    }

    /// Runs `f` on every shard and collects the results in shard order.
    pub async fn run_on_all<T, F>(&self, f: F) -> Result<Vec<T>, Reply>
    where
        T: Send + 'static,
        F: Fn(&ShardCtx) -> T + Send + Sync + Clone + 'static,
    {
        let mut out = Vec::with_capacity(self.shared.inboxes.len());
        for shard in 0..self.shared.inboxes.len() {
            out.push(self.run_on(shard, f.clone()).await?);
        }
        Ok(out)
    }
}

/// What a shard reads back from the store before it serves.
pub struct Restore {
    /// Its services, whole, until the sender is dropped.
    pub services: Receiver<crate::store::journal::SavedService>,
    /// The saved clock (`disk::Opened::clock`).
    pub clock: u64,
    /// Told the instances restored once done.
    pub done: crossbeam_channel::Sender<usize>,
    /// Passed once every shard (and the thread reading the store) is done:
    /// no shard answers anyone, not even readiness, before every shard
    /// holds its services. (A shard done first used to serve while another
    /// still restored: `/metrics` counted half the instances, and a list
    /// read from the other shard's view could be empty.)
    pub all_done: Arc<std::sync::Barrier>,
}

/// Runs shard `id` on the current thread until shutdown.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    rx: Receiver<Vec<ShardMsg>>,
    listener: std::net::TcpListener,
    grpc: Option<std::net::TcpListener>,
    restore: Option<Restore>,
) {
    match runtime::pin_to_allowed_cpu(id) {
        Some(cpu) => tracing::debug!(shard = id, cpu, "shard pinned"),
        None => tracing::warn!(shard = id, "could not pin shard to a core"),
    }
    if shared.config.shard_sched_batch {
        if let Err(e) = runtime::schedule_as_batch() {
            tracing::warn!(shard = id, error = %e, "could not schedule the shard as SCHED_BATCH");
        }
    }
    let fut = shard_main(id, shared, rx, listener, grpc, restore);
    let result = runtime::block_on(
        fut,
        |driver| tracing::info!(shard = id, driver, "shard started"),
        |driver, e| tracing::warn!(shard = id, driver, error = %e, "runtime refused, trying the next driver"),
    );
    if let Err(e) = result {
        tracing::error!(shard = id, error = %e, "no runtime could start");
        // A node missing a shard would drop a slice of the registry.
        std::process::exit(1);
    }
}

async fn shard_main(
    id: usize,
    shared: Arc<Shared>,
    rx: Receiver<Vec<ShardMsg>>,
    listener: std::net::TcpListener,
    grpc: Option<std::net::TcpListener>,
    restore: Option<Restore>,
) {
    let c = &shared.config;
    let now = now_ms();
    let defaults = Timeouts {
        beat_interval_ms: c.beat_interval_ms,
        unhealthy_timeout_ms: c.unhealthy_timeout_ms,
        delete_timeout_ms: c.delete_timeout_ms,
    };
    let push = PushConfig {
        delay_ms: c.push_delay_ms,
        ack_timeout_ms: c.push_ack_timeout_ms,
        subscriber_ttl_ms: c.subscriber_ttl_ms,
        subscribers_per_service_max: c.subscribers_per_service_max,
    };
    let cluster = shared
        .cluster
        .as_ref()
        .map(|cs| crate::cluster::shard::ClusterCtx::new(cs, c.sync_delay_ms));
    let ctx = Rc::new(ShardCtx {
        id,
        cluster,
        limits: Limits {
            header_bytes_max: c.header_bytes_max,
            body_bytes_max: c.body_bytes_max,
            peer_body_bytes_max: c.peer_body_bytes_max,
        },
        state: RefCell::new(ShardState {
            store: Store::new(defaults, c.expiry_tick_ms, now),
            push: PushState::new(push),
        }),
        mail: Mail::new(shared.inboxes.len()),
        views: RefCell::new(crate::store::Map::default()),
        auth_cache: RefCell::new(crate::auth::AuthCache::default()),
        inbox: rx,
        shared: shared.clone(),
    });
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot adopt listener");
            std::process::exit(1);
        }
    };
    let udp = match UdpSocket::bind(SocketAddr::new(c.bind.ip(), 0)) {
        Ok(u) => Rc::new(u),
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot bind the UDP push socket");
            std::process::exit(1);
        }
    };
    let writer = ctx.writer_id();
    ctx.state.borrow_mut().store.set_writer(writer);
    if let Some(r) = restore {
        restore_store(&ctx, r);
    }
    crate::cluster::driver::spawn(&ctx);
    monoio::spawn(inbox_loop(ctx.clone()));
    monoio::spawn(flush_loop(ctx.clone()));
    monoio::spawn(udp_recv_loop(ctx.clone(), udp.clone()));
    let canceller = monoio::io::Canceller::new();
    let handle = canceller.handle();
    monoio::spawn(tick_loop(ctx.clone(), udp, canceller));
    if let Some(g) = grpc {
        match monoio::net::TcpListener::from_std(g) {
            Ok(g) => {
                monoio::spawn(crate::grpc::server::sweep_loop(ctx.clone()));
                monoio::spawn(conn::accept_loop(
                    ctx.clone(),
                    g,
                    handle.clone(),
                    conn::Front::Grpc,
                ));
            }
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot adopt the gRPC listener");
                std::process::exit(1);
            }
        }
    }
    conn::accept_loop(ctx.clone(), listener, handle, conn::Front::Http).await;
    // Stop accepting happened above; let in-flight requests finish: those
    // of every shard, since another shard's request may still need this
    // shard's inbox to be answered.
    let deadline = std::time::Instant::now() + Duration::from_millis(c.shutdown_grace_ms);
    let inflight = || -> u64 {
        shared
            .stats
            .iter()
            .map(|s| s.inflight.load(Ordering::Relaxed))
            .sum()
    };
    while inflight() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(shard = id, unfinished = inflight(), "shard stopped");
}

/// Takes in the services read back from the store (before anything else
/// runs on this shard), then notes every later change for saving.
fn restore_store(ctx: &ShardCtx, r: Restore) {
    let now = now_ms();
    let mut st = ctx.state.borrow_mut();
    for saved in r.services.iter() {
        match saved.into_datum() {
            Ok(mut d) => {
                if let Some(c) = &ctx.shared.cluster {
                    // Rows of a store written before writer ids came from
                    // addresses (issue 14) name members by position.
                    let sorted = &c.start_sorted;
                    d.map_writers(|w| crate::distro::hlc::upgrade_legacy_writer(w, sorted));
                }
                st.store.restore(d, now, ctx.cluster.is_none());
            }
            Err(e) => {
                let file = match &ctx.shared.config.data_dir {
                    crate::config::DataDir::Path(p) => p.join(crate::disk::STORE_FILE),
                    crate::config::DataDir::None => Default::default(),
                };
                tracing::error!("{}", crate::disk::unreadable(&file, e));
                std::process::exit(1);
            }
        }
    }
    if ctx.cluster.is_some() {
        let held = st.store.hold_back_restored(now);
        if held > 0 {
            tracing::info!(
                shard = ctx.id,
                held,
                "restored instances older than the tombstone horizon wait for the startup snapshot"
            );
        }
    }
    st.store.observe_saved_clock(r.clock, now);
    st.store.enable_journal();
    ctx.publish_counts(&st);
    let _ = r.done.send(st.store.counts().instances);
    drop((st, r.done));
    r.all_done.wait();
}

async fn inbox_loop(ctx: Rc<ShardCtx>) {
    let inbox = &ctx.shared.inboxes[ctx.id];
    loop {
        inbox.ready(&ctx.inbox).await;
        ctx.drain_inbox();
    }
}

/// Sends what this shard's tasks posted for other shards during one turn
/// of the event loop: one batch and one wake-up per destination.
async fn flush_loop(ctx: Rc<ShardCtx>) {
    loop {
        ctx.mail.posted().await;
        ctx.send_mail();
    }
}

async fn udp_recv_loop(ctx: Rc<ShardCtx>, udp: Rc<UdpSocket>) {
    let mut buf = vec![0u8; UDP_RECV_BYTES];
    loop {
        let (res, b) = udp.recv_from(buf).await;
        buf = b;
        match res {
            Ok((n, from)) => {
                if ctx.state.borrow_mut().push.ack(from, &buf[..n]) {
                    ctx.stats().push_acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::debug!(shard = ctx.id, error = %e, "udp receive failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Keep the whole capacity available for the next datagram.
        buf.resize(UDP_RECV_BYTES, 0);
    }
}

/// Housekeeping: expiry, due pushes and resends, and noticing shutdown.
async fn tick_loop(ctx: Rc<ShardCtx>, udp: Rc<UdpSocket>, canceller: monoio::io::Canceller) {
    let c = &ctx.shared.config;
    let mut tick_ms = c.expiry_tick_ms.min(c.push_delay_ms);
    if ctx.cluster.is_some() {
        // Replication leaves within a quarter of the sync delay of its due
        // time.
        tick_ms = tick_ms.min(c.sync_delay_ms / REPLICATION_TICKS_PER_DELAY);
    }
    let tick = Duration::from_millis(tick_ms.clamp(TICK_MS_MIN, TICK_MS_MAX));
    let mut out = Vec::new();
    let mut grpc_out = Vec::new();
    let mut last_tick = now_ms();
    let mut views_swept = last_tick;
    loop {
        monoio::time::sleep(tick).await;
        if ctx.shared.shutdown.load(Ordering::Relaxed) {
            canceller.cancel();
            ctx.drain_inbox();
            ctx.save_behind(now_ms());
            return;
        }
        let now = now_ms();
        tracing::trace!(shard = ctx.id, now, "tick");
        if now.saturating_sub(last_tick) > STALL_GRACE_MS {
            let n = ctx
                .state
                .borrow_mut()
                .store
                .grant_ownership_grace(now, |_| true);
            tracing::warn!(
                shard = ctx.id,
                paused_ms = now - last_tick,
                refreshed = n,
                "the node was frozen; every instance gets a fresh timeout"
            );
        }
        last_tick = now;
        // Beats other shards queued without waking this one count before
        // anything expires.
        ctx.drain_inbox();
        if now >= views_swept + VIEWS_SWEEP_MS {
            views_swept = now;
            ctx.views.borrow_mut().retain(|_, slot| !slot.is_dead());
        }
        ctx.cluster_tick(now);
        {
            let view = ctx
                .cluster
                .as_ref()
                .map(|cl| cl.state.borrow().view.clone());
            let mut st = ctx.state.borrow_mut();
            let st = &mut *st;
            let mut changed = Vec::new();
            match &view {
                Some(v) => st.store.expire_owned(now, &mut changed, |g| v.owns(g)),
                None => st.store.expire(now, &mut changed),
            }
            for key in &changed {
                st.push.changed(key, now);
                ctx.mark_changed(key, now);
            }
            let store = &mut st.store;
            let counts = st.push.due(
                now,
                |svc, clusters| {
                    let op = Op::List {
                        svc: svc.clone(),
                        variant: ListVariant {
                            clusters: clusters.to_string(),
                            healthy_only: false,
                            cache_millis: 10_000,
                        },
                    };
                    store.apply(op, now).reply.body
                },
                &mut out,
                &mut grpc_out,
            );
            let s = ctx.stats();
            s.pushes_sent.fetch_add(counts.sent, Ordering::Relaxed);
            s.push_retries.fetch_add(counts.retried, Ordering::Relaxed);
            ctx.publish_counts(st);
            ctx.publish_gauges(st);
        }
        // Ephemeral changes of this tick, expiry's included.
        ctx.save_behind(now);
        for p in grpc_out.drain(..) {
            crate::grpc::server::push_to(&ctx, p);
        }
        for d in out.drain(..) {
            let (res, _) = udp.send_to(d.payload, d.addr).await;
            if let Err(e) = res {
                tracing::debug!(shard = ctx.id, to = %d.addr, error = %e, "push send failed");
            }
        }
    }
}
