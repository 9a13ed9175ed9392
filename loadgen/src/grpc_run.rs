//! The gRPC scenarios (`--protocol grpc`, docs/loadgen.md): their
//! connections live across phases, as a 2.x client's does (closing one
//! removes its instances), so they have their own runner.
//!
//! - `burst`: `--connections` clients, each set up like a real one;
//!   instance k goes through client k mod C (a later instance of a
//!   service on the same client is added to its batch, as the Java
//!   client's batch register does: one publisher per client and
//!   service); then every service is queried; then every client
//!   deregisters what it published.
//! - `push`: `--connections` subscribers of one service; `--instances`
//!   changes, one at a time, registered over HTTP on the target; for each,
//!   the time from the write until each subscriber's push (`push`) and
//!   until the last subscriber's (`push_all`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Conn;
use crate::grpc::{instance_json, GrpcConn};
use crate::run::{cpu_seconds, record, OpStats, PhaseResult, Progress, RunConfig, Stats};
use crate::scenario::{self, OpKind, Params};

/// The gRPC scenarios.
pub const SCENARIOS: [&str; 2] = ["burst", "push"];
/// How long one change may take to reach every subscriber.
const PUSH_WAIT_MAX: Duration = Duration::from_secs(10);

fn service_json(svc: &str) -> Value {
    json!({"namespace": "public", "serviceName": svc, "groupName": "DEFAULT_GROUP"})
}

/// Threads and, per thread, how many connections.
fn split(config: &RunConfig) -> Vec<usize> {
    let threads = config.threads.clamp(1, config.connections.max(1));
    (0..threads)
        .map(|t| (t..config.connections).step_by(threads).count())
        .collect()
}

fn spawn_thread<T: Send + 'static>(
    t: usize,
    pin: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(format!("loadgen-grpc-{t}"))
        .spawn(move || {
            if pin {
                let _ = distro_registry::shard::runtime::pin_to_allowed_cpu_from_top(t);
            }
            f()
        })
        .expect("spawn loadgen thread")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    distro_registry::shard::runtime::block_on(f, |_| {}, |_, _| {})
        .expect("no monoio runtime could start")
}

/// One client of the burst and what it published, per service.
struct Client {
    conn: GrpcConn,
    published: HashMap<String, Vec<Value>>,
}

const BURST_PHASES: [(&str, OpKind); 3] = [
    ("register", OpKind::Register),
    ("list", OpKind::List),
    ("deregister", OpKind::Deregister),
];

/// `burst` over gRPC against one target.
pub fn burst(
    grpc: SocketAddr,
    server_pid: Option<u32>,
    params: &Params,
    config: &RunConfig,
    progress: Arc<Progress>,
) -> Vec<PhaseResult> {
    let per_thread = split(config);
    let threads = per_thread.len();
    // Connected, then start and end of each phase.
    let barrier = Arc::new(Barrier::new(threads + 1));
    let next: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
    let handles: Vec<_> = per_thread
        .iter()
        .enumerate()
        .map(|(t, &conns)| {
            let (barrier, next, params, config, progress) = (
                barrier.clone(),
                next.clone(),
                params.clone(),
                config.clone(),
                progress.clone(),
            );
            spawn_thread(t, config.pin, move || {
                block_on(burst_thread(
                    conns, grpc, barrier, next, params, config, progress,
                ))
            })
        })
        .collect();
    barrier.wait(); // every client connected
    let mut timing = Vec::new();
    for _ in BURST_PHASES {
        let cpu = server_pid.and_then(cpu_seconds);
        let start = Instant::now();
        barrier.wait(); // go
        barrier.wait(); // done
        let cpu_after = server_pid.and_then(cpu_seconds);
        timing.push((start.elapsed(), cpu.zip(cpu_after).map(|(b, a)| a - b)));
    }
    let mut ops: Vec<Stats> = vec![BTreeMap::new(); 3];
    for h in handles {
        for (i, part) in h
            .join()
            .expect("loadgen thread panicked")
            .into_iter()
            .enumerate()
        {
            for (k, v) in part {
                ops[i].entry(k).or_default().merge(&v);
            }
        }
    }
    BURST_PHASES
        .iter()
        .zip(ops)
        .zip(timing)
        .map(|(((name, _), ops), (elapsed, cpu))| PhaseResult {
            name,
            measured: true,
            elapsed,
            ops,
            server_cpu_s: cpu,
        })
        .collect()
}

async fn burst_thread(
    conns: usize,
    grpc: SocketAddr,
    barrier: Arc<Barrier>,
    next: Arc<[AtomicUsize; 3]>,
    params: Params,
    config: RunConfig,
    progress: Arc<Progress>,
) -> Vec<Stats> {
    let mut clients = Vec::new();
    let mut failed = 0;
    for _ in 0..conns {
        match GrpcConn::connect(grpc, config.timeout, Box::new(|_| {})).await {
            Ok(conn) => clients.push(Client {
                conn,
                published: HashMap::new(),
            }),
            Err(_) => failed += 1,
        }
    }
    barrier.wait();
    let mut out = Vec::new();
    for (phase, (_, op)) in BURST_PHASES.iter().enumerate() {
        let stats = Rc::new(RefCell::new(Stats::new()));
        if phase == 0 && failed > 0 {
            let mut s = stats.borrow_mut();
            let e = s.entry(*op).or_default();
            *e.errors.entry("connect".into()).or_default() += failed;
        }
        barrier.wait();
        // Each task owns its client for the phase and hands it back.
        let tasks: Vec<_> = clients
            .drain(..)
            .map(|mut c| {
                let (stats, next, params, progress) = (
                    stats.clone(),
                    next.clone(),
                    params.clone(),
                    progress.clone(),
                );
                monoio::spawn(async move {
                    match phase {
                        0 => loop {
                            let k = next[0].fetch_add(1, Relaxed);
                            if k >= params.instances {
                                break;
                            }
                            let (svc, ip, port) = scenario::instance(&params, k);
                            let list = c.published.entry(svc.clone()).or_default();
                            list.push(instance_json(&ip, port));
                            let mut body = service_json(&svc);
                            let (kind, expect) = if list.len() == 1 {
                                body["type"] = "registerInstance".into();
                                body["instance"] = list[0].clone();
                                ("InstanceRequest", "InstanceResponse")
                            } else {
                                body["type"] = "batchRegisterInstance".into();
                                body["instances"] = Value::Array(list.clone());
                                ("BatchInstanceRequest", "BatchInstanceResponse")
                            };
                            let t = Instant::now();
                            let r = c.conn.call(kind, body, expect).await.map(|_| t.elapsed());
                            record(&stats, OpKind::Register, r, &progress);
                        },
                        1 => loop {
                            let s = next[1].fetch_add(1, Relaxed);
                            if s >= params.services {
                                break;
                            }
                            let want = scenario::instances_in_service(&params, s);
                            let (svc, ..) = scenario::instance(&params, s);
                            let mut body = service_json(&svc);
                            body["cluster"] = "".into();
                            body["healthyOnly"] = false.into();
                            body["udpPort"] = 0.into();
                            let t = Instant::now();
                            let r = c
                                .conn
                                .call("ServiceQueryRequest", body, "QueryServiceResponse")
                                .await
                                .and_then(|v| {
                                    let n =
                                        v["serviceInfo"]["hosts"].as_array().map_or(0, |h| h.len());
                                    if n == want {
                                        Ok(t.elapsed())
                                    } else {
                                        Err("wrong_count".to_string())
                                    }
                                });
                            record(&stats, OpKind::List, r, &progress);
                        },
                        _ => {
                            let services: Vec<(String, Value)> = c
                                .published
                                .drain()
                                .map(|(s, l)| (s, l[0].clone()))
                                .collect();
                            for (svc, inst) in services {
                                let mut body = service_json(&svc);
                                body["type"] = "deregisterInstance".into();
                                body["instance"] = inst;
                                let t = Instant::now();
                                let r = c
                                    .conn
                                    .call("InstanceRequest", body, "InstanceResponse")
                                    .await
                                    .map(|_| t.elapsed());
                                record(&stats, OpKind::Deregister, r, &progress);
                            }
                        }
                    }
                    c
                })
            })
            .collect();
        for t in tasks {
            clients.push(t.await);
        }
        barrier.wait();
        let s = stats.borrow().clone();
        out.push(s);
    }
    for c in clients {
        c.conn.close().await;
    }
    out
}

/// One write of the push scenario over HTTP (reconnecting after an error).
async fn write(
    conn: &mut Option<Conn>,
    http: SocketAddr,
    timeout: Duration,
    method: &'static str,
    svc: &str,
    ip: &str,
) -> bool {
    if conn.is_none() {
        *conn = Conn::connect(http, timeout).await.ok();
    }
    let path = format!("/nacos/v1/ns/instance?serviceName={svc}&ip={ip}&port=9000&ephemeral=false");
    let ok = match conn.as_mut() {
        Some(w) => w
            .request(method, &path)
            .await
            .is_ok_and(|r| r.status == 200),
        None => false,
    };
    if !ok {
        *conn = None;
    }
    ok
}

/// When each subscriber first saw change j: `seen[j][subscriber]`.
type Seen = Arc<Mutex<Vec<Vec<Option<Instant>>>>>;

/// `push` over gRPC against one target (`http`: its HTTP address, for
/// the writes).
pub fn push(
    http: SocketAddr,
    grpc: SocketAddr,
    server_pid: Option<u32>,
    params: &Params,
    config: &RunConfig,
    progress: Arc<Progress>,
) -> Vec<PhaseResult> {
    let changes = params.instances;
    let svc = format!("lg{}-push", params.seed);
    let seen: Seen = Arc::new(Mutex::new(vec![vec![None; config.connections]; changes]));
    let per_thread = split(config);
    let subscribed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let writer_done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(per_thread.len() + 1));
    let mut first = 0;
    let handles: Vec<_> = per_thread
        .iter()
        .enumerate()
        .map(|(t, &conns)| {
            let ids = first..first + conns;
            first += conns;
            let (seen, svc, config, barrier, subscribed, failed, writer_done) = (
                seen.clone(),
                svc.clone(),
                config.clone(),
                barrier.clone(),
                subscribed.clone(),
                failed.clone(),
                writer_done.clone(),
            );
            spawn_thread(t, config.pin, move || {
                block_on(async move {
                    let mut keep = Vec::new();
                    for id in ids {
                        let seen = seen.clone();
                        // Change j is seen when the pushed list holds j + 1 hosts.
                        let on_push = Box::new(move |n: usize| {
                            let mut seen = seen.lock().unwrap();
                            if let Some(slot) = n.checked_sub(1).and_then(|j| seen.get_mut(j)) {
                                slot[id].get_or_insert_with(Instant::now);
                            }
                        });
                        let sub = async {
                            let mut c = GrpcConn::connect(grpc, config.timeout, on_push).await?;
                            let mut body = service_json(&svc);
                            body["clusters"] = "".into();
                            body["subscribe"] = true.into();
                            c.call("SubscribeServiceRequest", body, "SubscribeServiceResponse")
                                .await?;
                            Ok::<_, String>(c)
                        };
                        match sub.await {
                            Ok(c) => {
                                subscribed.fetch_add(1, Relaxed);
                                keep.push(c);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    barrier.wait(); // subscribed
                                    // The readers run until the writer is done.
                    while !writer_done.load(Relaxed) {
                        monoio::time::sleep(Duration::from_millis(20)).await;
                    }
                    for c in keep {
                        c.close().await;
                    }
                })
            })
        })
        .collect();
    barrier.wait();
    let subs = subscribed.load(Relaxed);
    let mut all = OpStats::new();
    let mut each = OpStats::new();
    let n_failed = failed.load(Relaxed) as u64;
    if n_failed > 0 {
        *each.errors.entry("connect".into()).or_default() += n_failed;
    }
    let ip = |j: usize| format!("10.200.{}.{}", (j >> 8) & 255, j & 255);
    let cpu = server_pid.and_then(cpu_seconds);
    let start = Instant::now();
    // The writer's connection lives in one runtime for the whole run (a
    // socket must not move between runtimes: the epoll driver loses it).
    let (elapsed, cpu_after) = block_on(async {
        let mut writer: Option<Conn> = None;
        for j in 0..changes {
            let t = Instant::now();
            if !write(&mut writer, http, config.timeout, "POST", &svc, &ip(j)).await {
                *all.errors.entry("write".into()).or_default() += 1;
                continue;
            }
            let deadline = t + PUSH_WAIT_MAX;
            let got = loop {
                let got: Vec<Instant> = seen.lock().unwrap()[j].iter().flatten().copied().collect();
                if got.len() >= subs || Instant::now() >= deadline {
                    break got;
                }
                monoio::time::sleep(Duration::from_micros(200)).await;
            };
            for at in &got {
                let us = at.saturating_duration_since(t).as_micros() as u64;
                let _ = each
                    .latency_us
                    .record(us.clamp(1, crate::run::LATENCY_US_MAX));
            }
            progress.done.fetch_add(1, Relaxed);
            match got.iter().max() {
                Some(last) if got.len() >= subs => {
                    let us = last.saturating_duration_since(t).as_micros() as u64;
                    let _ = all
                        .latency_us
                        .record(us.clamp(1, crate::run::LATENCY_US_MAX));
                }
                _ => {
                    progress.errors.fetch_add(1, Relaxed);
                    *all.errors.entry("not_all_pushed".into()).or_default() += 1;
                    *each.errors.entry("not_pushed".into()).or_default() +=
                        (subs - got.len()) as u64;
                }
            }
        }
        let elapsed = start.elapsed();
        let cpu_after = server_pid.and_then(cpu_seconds);
        writer_done.store(true, Relaxed);
        // Cleanup, not measured: the persistent instances go.
        for j in 0..changes {
            write(&mut writer, http, config.timeout, "DELETE", &svc, &ip(j)).await;
        }
        (elapsed, cpu_after)
    });
    for h in handles {
        let _ = h.join();
    }
    let mut stats: Stats = BTreeMap::new();
    stats.insert(OpKind::Push, each);
    stats.insert(OpKind::PushAll, all);
    vec![PhaseResult {
        name: "push",
        measured: true,
        elapsed,
        ops: stats,
        server_cpu_s: cpu.zip(cpu_after).map(|(b, a)| a - b),
    }]
}
