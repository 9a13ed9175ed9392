//! The process: one `SO_REUSEPORT` listener and one thread per shard,
//! signal handling, and the wait for every shard to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::api::NodeInfo;
use crate::cluster::ClusterShared;
use crate::config::Config;
use crate::metrics::ShardStats;
use crate::shard::inbox::Inbox;
use crate::shard::{self, Shared};

/// Pending connections the kernel queues per listener.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {}", listen_reason(.source))]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start shard thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Config(crate::config::ConfigError),
    #[error("{0}")]
    Disk(#[from] crate::disk::DiskError),
    #[error("cannot start the storage thread: {0}")]
    StorageThread(std::io::Error),
    #[error("{0}")]
    Auth(String),
}

/// "address already in use" says what to do about it.
fn listen_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        "address already in use (another process holds this port: stop it, or choose \
         another port)"
            .to_string()
    } else {
        e.to_string()
    }
}

/// Fails with `AddrInUse` when any socket already holds `addr`. The
/// shards' listeners share the port through `SO_REUSEPORT`, and the
/// kernel lets any process of the same user join such a group: a second
/// node on a busy port would silently take half the connections. A socket
/// bound without `SO_REUSEPORT` may not join, so binding one (and closing
/// it) first tells whether the port is free. A node started in the same
/// instant as another could still pass between the probe and its own
/// binds; a node started beside a running one cannot.
pub fn probe_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        // The kernel picks a port no socket holds.
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only: a port held by connections in TIME_WAIT is free.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// How long a starting node waits for its port to be released (see
/// `listeners`) before it says the port is in use.
pub const PORT_WAIT_MS: u64 = 2_000;

fn listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// One listener per shard on the same address; a port of 0 is resolved by
/// the first and shared by the rest.
fn listeners(
    bind: SocketAddr,
    n: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ServerError> {
    let err = |source| ServerError::Listen { addr: bind, source };
    // A node killed a moment ago may still hold its listener: its
    // io_uring instance is torn down by the kernel after the process has
    // been reaped. A restart waits that long before it refuses the port.
    let waited = std::time::Instant::now();
    loop {
        match probe_free(bind) {
            Ok(()) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && waited.elapsed() < std::time::Duration::from_millis(PORT_WAIT_MS) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(err(e)),
        }
    }
    let first = listener(bind).map_err(err)?;
    let addr = first.local_addr().map_err(err)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listener(addr).map_err(err)?);
    }
    Ok((addr, all))
}

/// Runs the node until SIGTERM or SIGINT, then stops accepting, lets
/// in-flight requests finish, and returns.
pub fn run(config: Config) -> Result<(), ServerError> {
    let cores = config.cores;
    let cpus = shard::runtime::allowed_cpus().len();
    if cpus > 0 && cores > cpus {
        tracing::warn!(
            cores,
            cpus,
            "more shards than CPUs this process may use: shards will share CPUs and wait \
             for each other; give --cores {cpus} or fewer (README: choosing --cores)"
        );
    }
    let (addr, http_listeners) = listeners(config.bind, cores)?;
    let grpc = match config.grpc_addr(addr).map_err(ServerError::Config)? {
        Some(g) => {
            let (gaddr, ls) = listeners(g, cores)?;
            Some((gaddr, ls))
        }
        None => None,
    };
    let grpc_addr = grpc.as_ref().map(|(a, _)| *a);
    let mut grpc_listeners: Vec<Option<std::net::TcpListener>> = match grpc {
        Some((_, ls)) => ls.into_iter().map(Some).collect(),
        None => (0..cores).map(|_| None).collect(),
    };
    let mut inboxes = Vec::with_capacity(cores);
    let mut receivers = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (tx, rx) = Inbox::bounded(config.inbox_capacity);
        inboxes.push(tx);
        receivers.push(rx);
    }
    let opened = match &config.data_dir {
        crate::config::DataDir::None => {
            tracing::info!("--data-dir none: nothing is saved, a restart starts empty");
            None
        }
        crate::config::DataDir::Path(dir) => Some(crate::disk::open(dir)?),
    };
    let (disk, disk_queue) = opened.as_ref().map(|_| crate::disk::queue()).unzip();
    let node = NodeInfo { advertise: addr };
    let cluster = match config.cluster_members().map_err(ServerError::Config)? {
        Some((me, members)) => {
            tracing::info!(me = %me, ?members, "clustered node");
            if let Some((a, b)) = crate::distro::hlc::colliding_ids(&members) {
                return Err(ServerError::Config(crate::config::ConfigError::Invalid(
                    format!(
                        "members {a} and {b} would have the same node id; give one another address"
                    ),
                )));
            }
            let mut c = ClusterShared::new(&me, &members, &config.cluster_token);
            if !config.cluster_conf.trim().is_empty() {
                c.set_conf(PathBuf::from(config.cluster_conf.trim()));
            }
            Some(c)
        }
        None => None,
    };
    let auth = if config.auth {
        let a = crate::auth::Auth::new(
            &config.auth_secret,
            config.auth_token_ttl_s,
            PathBuf::from(config.auth_users.trim()),
            config.auth_metrics,
            cpus.max(1),
        )
        .map_err(ServerError::Auth)?;
        Some(a)
    } else {
        None
    };
    let shared = Arc::new(Shared {
        auth,
        config,
        node,
        cluster,
        inboxes,
        stats: (0..cores).map(|_| ShardStats::default()).collect(),
        open_connections: AtomicUsize::new(0),
        shutdown: AtomicBool::new(false),
        boot_ms: crate::shard::now_ms(),
        disk,
    });
    watch_signals(shared.clone())?;
    crate::cluster::watch_conf(shared.clone()).map_err(ServerError::Thread)?;
    let mut threads = Vec::with_capacity(cores);
    let mut restore_tx = Vec::with_capacity(cores);
    let (restored_tx, restored_rx) = crossbeam_channel::bounded(cores);
    let all_restored = Arc::new(std::sync::Barrier::new(cores + 1));
    for (id, (rx, l)) in receivers.into_iter().zip(http_listeners).enumerate() {
        let shared = shared.clone();
        let g = grpc_listeners[id].take();
        let restore = opened.as_ref().map(|o| {
            let (tx, rx) = crossbeam_channel::bounded(crate::disk::RESTORE_QUEUE_SERVICES);
            restore_tx.push(tx);
            shard::Restore {
                services: rx,
                clock: o.clock,
                done: restored_tx.clone(),
                all_done: all_restored.clone(),
            }
        });
        let t = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || shard::run(id, shared, rx, l, g, restore))
            .map_err(ServerError::Thread)?;
        threads.push(t);
    }
    drop(restored_tx);
    let mut storage = None;
    if let (Some(o), Some(q)) = (opened, disk_queue) {
        // Every shard takes its services in before anyone is answered.
        let started = std::time::Instant::now();
        let loaded = o.load(|svc| {
            let to = shard::router::shard_of(&svc.key, cores);
            // A shard that went away has exited the process.
            let _ = restore_tx[to].send(svc);
        })?;
        drop(restore_tx);
        let instances: usize = restored_rx.iter().sum();
        tracing::info!(
            services = loaded.services,
            rows = loaded.rows,
            instances,
            ms = started.elapsed().as_millis() as u64,
            "store read back"
        );
        storage = Some(o.start(q).map_err(ServerError::StorageThread)?);
        all_restored.wait();
    }
    tracing::info!(cores, "listening on {addr}");
    match grpc_addr {
        Some(g) => tracing::info!("gRPC for Nacos 2.x/3.x clients on {g}"),
        None => tracing::info!("gRPC off (--grpc-port 0)"),
    }
    for t in threads {
        if t.join().is_err() {
            tracing::error!("a shard thread panicked");
        }
    }
    if let (Some(t), Some(d)) = (storage, &shared.disk) {
        d.stop();
        if t.join().is_err() {
            tracing::error!("the storage thread panicked");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM / SIGINT set the shutdown flag; each shard's tick notices it.
fn watch_signals(shared: Arc<Shared>) -> Result<(), ServerError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServerError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    // Re-read what may change at run time.
                    if let Some(a) = &shared.auth {
                        a.reload();
                    }
                    if let Some(c) = &shared.cluster {
                        c.reload_conf(true, crate::shard::now_ms());
                    }
                    if shared.auth.is_none() && shared.cluster.is_none() {
                        tracing::info!("SIGHUP: nothing to reload");
                    }
                    continue;
                }
                // The flag first: nothing after it may keep the node up.
                shared.shutdown.store(true, Ordering::Relaxed);
                tracing::info!(
                    signal = sig,
                    "shutting down: no new connections, finishing in-flight requests"
                );
                return;
            }
        })
        .map_err(ServerError::Signals)?;
    Ok(())
}
