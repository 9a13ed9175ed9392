//! Runs phases: `threads` OS threads, each a monoio runtime pinned to a
//! core (from the highest allowed CPU down, away from a node's shard 0), each driving its share of the keep-alive connections. Items are
//! handed out by one shared counter; paced items are measured from their
//! intended send time, so a slow server cannot hide its queueing delay
//! (no coordinated omission).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::scenario::{self, Item, OpKind, Params, Phase, Work};

/// Latencies are recorded in microseconds up to this bound.
pub const LATENCY_US_MAX: u64 = 600_000_000;

/// One operation's figures.
#[derive(Clone)]
pub struct OpStats {
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for OpStats {
    fn default() -> OpStats {
        OpStats::new()
    }
}

impl OpStats {
    pub fn new() -> OpStats {
        OpStats {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid bounds"),
            errors: BTreeMap::new(),
        }
    }

    /// Requests made, answered well or not.
    pub fn count(&self) -> u64 {
        self.latency_us.len() + self.errors.values().sum::<u64>()
    }

    /// Requests that went out (scheduled ones never sent excluded).
    pub fn sent(&self) -> u64 {
        self.count() - self.errors.get("not_sent").copied().unwrap_or(0)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &OpStats) {
        let _ = self.latency_us.add(&other.latency_us);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// What a phase produced.
pub struct PhaseResult {
    pub name: &'static str,
    pub measured: bool,
    pub elapsed: Duration,
    pub ops: BTreeMap<OpKind, OpStats>,
    /// Server CPU seconds spent during the phase (when a pid was given).
    pub server_cpu_s: Option<f64>,
}

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub connections: usize,
    pub threads: usize,
    /// Per-request (and connect) timeout.
    pub timeout: Duration,
    /// Converge: pause between polls of the other targets.
    pub poll_interval: Duration,
    /// Converge: give up on a write after this long.
    pub converge_timeout: Duration,
    /// Spread the items of the other scenarios over every target, round
    /// robin (a cluster driven as one), instead of the first only.
    pub spread: bool,
    /// Pin worker thread i to the i-th allowed CPU from the highest.
    pub pin: bool,
}

/// Progress counters a reporter thread prints.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

struct PhaseShared {
    phase: Phase,
    params: Params,
    next: AtomicUsize,
    /// Items actually sent (the counter above overshoots at the end).
    started: AtomicUsize,
    start: Instant,
    deadline: Instant,
    progress: Arc<Progress>,
    config: RunConfig,
}

pub type Stats = BTreeMap<OpKind, OpStats>;

pub fn record(
    stats: &RefCell<Stats>,
    op: OpKind,
    result: Result<Duration, String>,
    progress: &Progress,
) {
    let mut s = stats.borrow_mut();
    let e = s.entry(op).or_default();
    progress.done.fetch_add(1, Relaxed);
    match result {
        Ok(d) => {
            let _ = e
                .latency_us
                .record((d.as_micros() as u64).clamp(1, LATENCY_US_MAX));
        }
        Err(kind) => {
            progress.errors.fetch_add(1, Relaxed);
            *e.errors.entry(kind).or_default() += 1;
        }
    }
}

/// CPU seconds (user + system) of a process: the sum of its threads'
/// `schedstat` run times (nanoseconds), or `/proc/PID/stat` (10 ms ticks)
/// where schedstat is missing.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns = 0u64;
        let mut any = false;
        for t in tasks.flatten() {
            let path = t.path().join("schedstat");
            if let Some(v) = std::fs::read_to_string(path).ok().and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            }) {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(ns as f64 / 1e9);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration this runs on.
    Some((utime + stime) / 100.0)
}

/// How many of a paced phase's items fall due before `deadline` (0 for
/// closed-loop phases, which have no schedule).
pub fn scheduled_before(phase: &Phase, deadline: Duration) -> usize {
    let limit_ms = deadline.as_secs_f64() * 1000.0;
    let due = |k: usize| phase.pace.due_ms(k).map(|d| d < limit_ms);
    if due(0).is_none() || phase.items == usize::MAX {
        return 0;
    }
    // due_ms is non-decreasing in k: binary search for the first late item.
    let (mut lo, mut hi) = (0usize, phase.items);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if due(mid) == Some(true) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Runs one phase against `targets` (converge uses them all; the other
/// work uses the first).
pub fn run_phase(
    targets: &[SocketAddr],
    server_pid: Option<u32>,
    phase: &Phase,
    params: &Params,
    config: &RunConfig,
    progress: Arc<Progress>,
) -> PhaseResult {
    let cpu_before = server_pid.and_then(cpu_seconds);
    let start = Instant::now();
    let shared = Arc::new(PhaseShared {
        phase: phase.clone(),
        params: params.clone(),
        next: AtomicUsize::new(0),
        started: AtomicUsize::new(0),
        start,
        deadline: start + phase.deadline,
        progress,
        config: config.clone(),
    });
    let threads = config.threads.clamp(1, config.connections.max(1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let shared = shared.clone();
            let targets = targets.to_vec();
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    if shared.config.pin {
                        let _ = distro_registry::shard::runtime::pin_to_allowed_cpu_from_top(t);
                    }
                    distro_registry::shard::runtime::block_on(
                        thread_main(t, threads, shared, targets),
                        |_| {},
                        |_, _| {},
                    )
                    .expect("no monoio runtime could start")
                })
                .expect("spawn loadgen thread")
        })
        .collect();
    let mut ops: Stats = BTreeMap::new();
    for h in handles {
        let part = h.join().expect("loadgen thread panicked");
        for (k, v) in part {
            ops.entry(k).or_default().merge(&v);
        }
    }
    let elapsed = start.elapsed();
    let cpu_after = server_pid.and_then(cpu_seconds);
    // Paced items that fell due before the deadline but were never sent
    // (the server was too slow to keep up) are errors, not silence.
    let scheduled = scheduled_before(phase, phase.deadline);
    let unsent = scheduled.saturating_sub(shared.started.load(Relaxed));
    if unsent > 0 {
        let op = phase.requests(params, 0)[0].op;
        let e = ops.entry(op).or_default();
        *e.errors.entry("not_sent".into()).or_default() += unsent as u64;
    }
    PhaseResult {
        name: phase.name,
        measured: phase.measured,
        elapsed,
        ops,
        server_cpu_s: cpu_before.zip(cpu_after).map(|(b, a)| a - b),
    }
}

async fn thread_main(
    t: usize,
    threads: usize,
    shared: Arc<PhaseShared>,
    targets: Vec<SocketAddr>,
) -> Stats {
    let stats = Rc::new(RefCell::new(Stats::new()));
    let mut tasks = Vec::new();
    for _ in (t..shared.config.connections).step_by(threads) {
        tasks.push(monoio::spawn(connection(
            shared.clone(),
            targets.clone(),
            stats.clone(),
        )));
    }
    for task in tasks {
        task.await;
    }
    let s = stats.borrow().clone();
    s
}

/// One keep-alive connection per target, reconnected after an error.
struct Conns {
    addrs: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    timeout: Duration,
}

impl Conns {
    async fn exec(&mut self, target: usize, item: &Item) -> Result<Vec<u8>, String> {
        if self.conns[target].is_none() {
            let c = Conn::connect(self.addrs[target], self.timeout)
                .await
                .map_err(|e| e.kind().to_string())?;
            self.conns[target] = Some(c);
        }
        let conn = self.conns[target].as_mut().expect("connected above");
        match conn.request(item.method, &item.path).await {
            Ok(resp) => scenario::check(&item.expect, resp.status, &resp.body).map(|_| resp.body),
            Err(e) => {
                self.conns[target] = None;
                Err(e.kind().to_string())
            }
        }
    }
}

async fn connection(shared: Arc<PhaseShared>, targets: Vec<SocketAddr>, stats: Rc<RefCell<Stats>>) {
    let mut conns = Conns {
        conns: targets.iter().map(|_| None).collect(),
        addrs: targets,
        timeout: shared.config.timeout,
    };
    loop {
        let k = shared.next.fetch_add(1, Relaxed);
        if k >= shared.phase.items {
            break;
        }
        let now = Instant::now();
        if now >= shared.deadline {
            break;
        }
        let start = match shared.phase.pace.due_ms(k) {
            None => now,
            Some(ms) => {
                let due = shared.start + Duration::from_secs_f64(ms / 1000.0);
                if due >= shared.deadline {
                    break;
                }
                if due > now {
                    monoio::time::sleep(due - now).await;
                }
                due
            }
        };
        shared.started.fetch_add(1, Relaxed);
        match shared.phase.work {
            Work::Converge => converge(&shared, &mut conns, &stats, k, start).await,
            _ => {
                for (n, item) in shared
                    .phase
                    .requests(&shared.params, k)
                    .into_iter()
                    .enumerate()
                {
                    // The first request is measured from its intended send
                    // time; the others of a storm item from their own.
                    let sent = if n == 0 { start } else { Instant::now() };
                    let target = if shared.config.spread {
                        k % conns.addrs.len()
                    } else {
                        0
                    };
                    let result = conns.exec(target, &item).await.map(|_| sent.elapsed());
                    record(&stats, item.op, result, &shared.progress);
                }
            }
        }
    }
}

/// Register instance k on the first target, then poll every other target
/// (or the first, when alone) until all list it.
async fn converge(
    shared: &PhaseShared,
    conns: &mut Conns,
    stats: &RefCell<Stats>,
    k: usize,
    start: Instant,
) {
    let p = &shared.params;
    let write = scenario::register(p, k);
    let written = conns.exec(0, &write).await.map(|_| start.elapsed());
    let ok = written.is_ok();
    record(stats, OpKind::Register, written, &shared.progress);
    if !ok {
        return;
    }
    let (svc_index, ip, port) = {
        let (_, ip, port) = scenario::instance(p, k);
        (k % p.services.max(1), ip, port)
    };
    let others: Vec<usize> = if conns.addrs.len() > 1 {
        (1..conns.addrs.len()).collect()
    } else {
        vec![0]
    };
    let list = scenario::list(p, svc_index, scenario::Expect::HostsAtLeast(0));
    let give_up = start + shared.config.converge_timeout;
    for target in others {
        loop {
            let visible = match conns.exec(target, &list).await {
                Ok(body) => lists(&body, &ip, port),
                Err(_) => false,
            };
            if visible {
                break;
            }
            if Instant::now() >= give_up {
                record(
                    stats,
                    OpKind::Converge,
                    Err("not_converged".into()),
                    &shared.progress,
                );
                return;
            }
            monoio::time::sleep(shared.config.poll_interval).await;
        }
    }
    record(
        stats,
        OpKind::Converge,
        Ok(start.elapsed()),
        &shared.progress,
    );
}

/// Whether a list JSON contains `ip:port` (other fields are skipped).
fn lists(body: &[u8], ip: &str, port: u16) -> bool {
    #[derive(serde::Deserialize)]
    struct Host {
        ip: String,
        port: u16,
    }
    #[derive(serde::Deserialize)]
    struct Hosts {
        hosts: Vec<Host>,
    }
    serde_json::from_slice::<Hosts>(body)
        .map(|l| l.hosts.iter().any(|h| h.ip == ip && h.port == port))
        .unwrap_or(false)
}
