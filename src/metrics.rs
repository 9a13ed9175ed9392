//! Counters for `/metrics` (Prometheus text format) and the operator view.
//!
//! Each shard writes only its own `ShardStats` (relaxed atomics, no
//! contention); any shard may read all of them to render the page.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::api::Endpoint;

/// Status codes counted separately; anything else counts as `other`.
pub const CODES: [u16; 12] = [200, 400, 403, 404, 405, 408, 411, 413, 431, 500, 503, 0];

/// Upper bounds of the latency histogram buckets, microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

const ENDPOINTS: usize = Endpoint::ALL.len();

/// Picks one counter out of a shard's stats.
type Field = fn(&ShardStats) -> &AtomicU64;

/// One shard's counters.
pub struct ShardStats {
    pub services: AtomicU64,
    pub instances: AtomicU64,
    /// Live push subscribers.
    pub subscribers: AtomicU64,
    pub pushes_sent: AtomicU64,
    pub push_acks: AtomicU64,
    pub push_retries: AtomicU64,
    /// gRPC pushes dropped: the connection had `PUSHES_UNACKED_MAX` pushes
    /// unanswered.
    pub grpc_pushes_dropped: AtomicU64,
    /// Open gRPC connections on this shard (a gauge).
    pub grpc_connections: AtomicU64,
    /// Unary gRPC requests answered.
    pub grpc_requests: AtomicU64,
    /// `NotifySubscriberRequest`s written (first attempts).
    pub grpc_pushes_sent: AtomicU64,
    /// `NotifySubscriberRequest`s written again for want of an answer.
    pub grpc_push_retries: AtomicU64,
    /// Connections closed for not answering a `ClientDetectionRequest`.
    pub grpc_ejected: AtomicU64,
    /// Messages this shard sent to other shards: requests and answers.
    pub cross_core_sent: AtomicU64,
    /// Reads and beats of other shards' services answered here from a
    /// read view, and those that found no current view.
    pub view_hits: AtomicU64,
    pub view_misses: AtomicU64,
    /// Batches those messages left in (one wake-up of the receiver each).
    pub cross_core_batches: AtomicU64,
    /// Requests refused because the target inbox was full.
    pub inbox_full: AtomicU64,
    /// Expiry timers on the wheel (one per service, and superseded ones).
    pub timers_armed: AtomicU64,
    /// Requests this shard is handling now (graceful shutdown waits for
    /// the sum over all shards to reach 0).
    pub inflight: AtomicU64,
    /// Services and instances this node owns (a clustered node's shards
    /// refresh them every verify round).
    pub responsible_services: AtomicU64,
    pub responsible_instances: AtomicU64,
    /// Client writes forwarded to their owner and answered by it.
    pub forwarded: AtomicU64,
    /// Forwards that failed (the write was applied here instead).
    pub forward_failures: AtomicU64,
    /// Beats answered here and queued for their owner.
    pub beats_relayed: AtomicU64,
    /// Relayed beats dropped (queue full or the owner unreachable).
    pub relay_dropped: AtomicU64,
    /// Services sent to peers in replication batches.
    pub datums_sent: AtomicU64,
    /// Replication batches that failed (retried with backoff).
    pub datum_send_failures: AtomicU64,
    /// Peers' datums that changed something here.
    pub datums_merged: AtomicU64,
    /// Services fetched because a verify round found them different.
    pub verify_fetches: AtomicU64,
    /// Versions from peers refused for being too far in the future
    /// (`hlc::DRIFT_MAX_MS`); copied from the store by housekeeping.
    pub future_versions_refused: AtomicU64,
    /// Services sent back to a peer whose datum was older here (read repair).
    pub read_repairs: AtomicU64,
    /// Persistent and service tombstones purged before their time
    /// (`store::PERSISTENT_TOMBSTONES_MAX`); copied by housekeeping.
    pub tombstones_purged_early: AtomicU64,
    /// `[endpoint][code]`.
    requests: Vec<AtomicU64>,
    /// `[endpoint][bucket]`, non-cumulative; the last is +Inf.
    latency: Vec<AtomicU64>,
    latency_sum_us: Vec<AtomicU64>,
}

fn zeros(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            services: AtomicU64::new(0),
            instances: AtomicU64::new(0),
            subscribers: AtomicU64::new(0),
            pushes_sent: AtomicU64::new(0),
            push_acks: AtomicU64::new(0),
            push_retries: AtomicU64::new(0),
            grpc_pushes_dropped: AtomicU64::new(0),
            grpc_connections: AtomicU64::new(0),
            grpc_requests: AtomicU64::new(0),
            grpc_pushes_sent: AtomicU64::new(0),
            grpc_push_retries: AtomicU64::new(0),
            grpc_ejected: AtomicU64::new(0),
            cross_core_sent: AtomicU64::new(0),
            cross_core_batches: AtomicU64::new(0),
            view_hits: AtomicU64::new(0),
            view_misses: AtomicU64::new(0),
            inbox_full: AtomicU64::new(0),
            timers_armed: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            responsible_services: AtomicU64::new(0),
            responsible_instances: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            beats_relayed: AtomicU64::new(0),
            relay_dropped: AtomicU64::new(0),
            datums_sent: AtomicU64::new(0),
            datum_send_failures: AtomicU64::new(0),
            datums_merged: AtomicU64::new(0),
            verify_fetches: AtomicU64::new(0),
            future_versions_refused: AtomicU64::new(0),
            tombstones_purged_early: AtomicU64::new(0),
            read_repairs: AtomicU64::new(0),
            requests: zeros(ENDPOINTS * CODES.len()),
            latency: zeros(ENDPOINTS * (LATENCY_BUCKETS_US.len() + 1)),
            latency_sum_us: zeros(ENDPOINTS),
        }
    }
}

impl ShardStats {
    pub fn record(&self, endpoint: Endpoint, status: u16, micros: u64) {
        let e = endpoint.index();
        let code = CODES
            .iter()
            .position(|c| *c == status)
            .unwrap_or(CODES.len() - 1);
        self.requests[e * CODES.len() + code].fetch_add(1, Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[e * (LATENCY_BUCKETS_US.len() + 1) + bucket].fetch_add(1, Relaxed);
        self.latency_sum_us[e].fetch_add(micros, Relaxed);
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// One shard's inbox as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct InboxStats {
    /// Requests waiting.
    pub depth: usize,
    /// Times the shard woke up to drain it.
    pub wakeups: u64,
}

/// Renders the Prometheus page. `inboxes[i]` is shard i's inbox.
pub fn render(shards: &[ShardStats], inboxes: &[InboxStats], open_connections: usize) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let sum = |f: Field| -> u64 { shards.iter().map(|s| f(s).load(Relaxed)).sum() };
    let o = &mut out;
    family(
        o,
        "registry_instances",
        "gauge",
        "Instances registered on this node.",
    );
    let _ = writeln!(o, "registry_instances {}", sum(|s| &s.instances));
    family(
        o,
        "registry_services",
        "gauge",
        "Services known to this node.",
    );
    let _ = writeln!(o, "registry_services {}", sum(|s| &s.services));
    family(
        o,
        "registry_open_connections",
        "gauge",
        "Open client connections (HTTP).",
    );
    let _ = writeln!(o, "registry_open_connections {open_connections}");
    family(
        o,
        "registry_list_cache_bytes",
        "gauge",
        "Bytes of rendered instance lists kept for their next read (bounded by store::view::LIST_CACHE_BYTES_MAX).",
    );
    let _ = writeln!(
        o,
        "registry_list_cache_bytes {}",
        crate::store::view::LISTS.used()
    );
    family(
        o,
        "registry_grpc_connections",
        "gauge",
        "Open gRPC connections (Nacos 2.x/3.x clients).",
    );
    let _ = writeln!(
        o,
        "registry_grpc_connections {}",
        sum(|s| &s.grpc_connections)
    );
    let counters: [(&str, &str, Field); 24] = [
        (
            "registry_forwarded_total",
            "Writes forwarded to the service's owner node.",
            |s| &s.forwarded,
        ),
        (
            "registry_forward_failures_total",
            "Forwarded writes the owner did not take (answered 503 to the client).",
            |s| &s.forward_failures,
        ),
        (
            "registry_beats_relayed_total",
            "Beats answered here and relayed to the owner node.",
            |s| &s.beats_relayed,
        ),
        (
            "registry_relayed_beats_dropped_total",
            "Relayed beats dropped because the relay queue was full or failed.",
            |s| &s.relay_dropped,
        ),
        (
            "registry_datums_sent_total",
            "Service datums sent to peers by replication.",
            |s| &s.datums_sent,
        ),
        (
            "registry_datum_send_failures_total",
            "Replication sends to a peer that failed (retried).",
            |s| &s.datum_send_failures,
        ),
        (
            "registry_datums_merged_total",
            "Service datums received from peers and merged.",
            |s| &s.datums_merged,
        ),
        (
            "registry_verify_fetches_total",
            "Datums fetched from an owner after a checksum mismatch.",
            |s| &s.verify_fetches,
        ),
        (
            "registry_future_versions_refused_total",
            "Peer records refused for a version too far ahead of this node's clock.",
            |s| &s.future_versions_refused,
        ),
        (
            "registry_read_repairs_total",
            "Services sent back to a peer whose replicated copy was older than this node's.",
            |s| &s.read_repairs,
        ),
        (
            "registry_tombstones_purged_early_total",
            "Persistent and service tombstones purged before their 24 h for the per-shard cap.",
            |s| &s.tombstones_purged_early,
        ),
        (
            "registry_push_sent_total",
            "UDP pushes sent to subscribers.",
            |s| &s.pushes_sent,
        ),
        (
            "registry_push_acks_total",
            "UDP push acknowledgements received.",
            |s| &s.push_acks,
        ),
        (
            "registry_push_retries_total",
            "UDP pushes resent after no acknowledgement.",
            |s| &s.push_retries,
        ),
        (
            "registry_grpc_pushes_dropped_total",
            "gRPC pushes not sent: the connection left too many earlier ones unanswered.",
            |s| &s.grpc_pushes_dropped,
        ),
        (
            "registry_grpc_requests_total",
            "Unary gRPC requests answered.",
            |s| &s.grpc_requests,
        ),
        (
            "registry_grpc_pushes_sent_total",
            "gRPC pushes (NotifySubscriberRequest) written, first attempts.",
            |s| &s.grpc_pushes_sent,
        ),
        (
            "registry_grpc_push_retries_total",
            "gRPC pushes written again after no answer within 5 s.",
            |s| &s.grpc_push_retries,
        ),
        (
            "registry_grpc_ejected_total",
            "gRPC connections closed for not answering a ClientDetectionRequest.",
            |s| &s.grpc_ejected,
        ),
        (
            "registry_cross_core_messages_total",
            "Messages between shards (cores): requests to a service's owner and their answers.",
            |s| &s.cross_core_sent,
        ),
        (
            "registry_cross_core_batches_total",
            "Batches those messages travelled in (each one channel send and one wake-up).",
            |s| &s.cross_core_batches,
        ),
        (
            "registry_read_view_hits_total",
            "Reads and beats of another core's service answered from its read view, without asking it.",
            |s| &s.view_hits,
        ),
        (
            "registry_read_view_misses_total",
            "Reads and beats of another core's service that found no current view and asked its owner.",
            |s| &s.view_misses,
        ),
        (
            "registry_inbox_full_total",
            "Requests refused with 503 because a shard's inbox was full.",
            |s| &s.inbox_full,
        ),
    ];
    for (name, help, f) in counters {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {}", sum(f));
    }
    family(
        o,
        "registry_requests_total",
        "counter",
        "Requests answered, by endpoint and status.",
    );
    for e in Endpoint::ALL {
        for (ci, code) in CODES.iter().enumerate() {
            let n: u64 = shards
                .iter()
                .map(|s| s.requests[e.index() * CODES.len() + ci].load(Relaxed))
                .sum();
            if n > 0 {
                let code = if *code == 0 {
                    "other".to_string()
                } else {
                    code.to_string()
                };
                let _ = writeln!(
                    o,
                    "registry_requests_total{{endpoint=\"{}\",code=\"{code}\"}} {n}",
                    e.name()
                );
            }
        }
    }
    family(
        o,
        "registry_request_duration_seconds",
        "histogram",
        "Time from a request's parse to its reply.",
    );
    let width = LATENCY_BUCKETS_US.len() + 1;
    for e in Endpoint::ALL {
        let counts: Vec<u64> = (0..width)
            .map(|b| {
                shards
                    .iter()
                    .map(|s| s.latency[e.index() * width + b].load(Relaxed))
                    .sum()
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut acc = 0;
        for (b, le) in LATENCY_BUCKETS_US.iter().enumerate() {
            acc += counts[b];
            let _ = writeln!(
                o,
                "registry_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"{}\"}} {acc}",
                e.name(),
                *le as f64 / 1e6
            );
        }
        let _ = writeln!(
            o,
            "registry_request_duration_seconds_bucket{{endpoint=\"{}\",le=\"+Inf\"}} {total}",
            e.name()
        );
        let sum_us: u64 = shards
            .iter()
            .map(|s| s.latency_sum_us[e.index()].load(Relaxed))
            .sum();
        let _ = writeln!(
            o,
            "registry_request_duration_seconds_sum{{endpoint=\"{}\"}} {}",
            e.name(),
            sum_us as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "registry_request_duration_seconds_count{{endpoint=\"{}\"}} {total}",
            e.name()
        );
    }
    let per_shard: [(&str, &str, Field); 4] = [
        (
            "registry_shard_services",
            "Services held by each shard.",
            |s| &s.services,
        ),
        (
            "registry_shard_instances",
            "Instances held by each shard.",
            |s| &s.instances,
        ),
        (
            "registry_shard_subscribers",
            "UDP push subscribers held by each shard.",
            |s| &s.subscribers,
        ),
        (
            "registry_shard_timers_armed",
            "Expiry timers on each shard's timing wheel: one per service with instances kept by beats (and superseded ones not yet fired).",
            |s| &s.timers_armed,
        ),
    ];
    for (name, help, f) in per_shard {
        family(o, name, "gauge", help);
        for (i, s) in shards.iter().enumerate() {
            let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", f(s).load(Relaxed));
        }
    }
    family(
        o,
        "registry_shard_inbox_depth",
        "gauge",
        "Messages waiting in each shard's inbox.",
    );
    for (i, d) in inboxes.iter().enumerate() {
        let _ = writeln!(o, "registry_shard_inbox_depth{{shard=\"{i}\"}} {}", d.depth);
    }
    let wakeups: u64 = inboxes.iter().map(|i| i.wakeups).sum();
    family(
        o,
        "registry_cross_core_wakeups_total",
        "counter",
        "Times a shard woke up to drain messages from other shards.",
    );
    let _ = writeln!(o, "registry_cross_core_wakeups_total {wakeups}");
    // Per request answered (HTTP and unary gRPC), since start.
    let requests: u64 = shards
        .iter()
        .map(|s| {
            s.requests.iter().map(|c| c.load(Relaxed)).sum::<u64>() + s.grpc_requests.load(Relaxed)
        })
        .sum();
    let per = |n: u64| {
        if requests == 0 {
            0.0
        } else {
            n as f64 / requests as f64
        }
    };
    family(
        o,
        "registry_cross_core_messages_per_request",
        "gauge",
        "Cross-core messages per request answered, since start.",
    );
    let _ = writeln!(
        o,
        "registry_cross_core_messages_per_request {:.4}",
        per(sum(|s| &s.cross_core_sent))
    );
    family(
        o,
        "registry_cross_core_wakeups_per_request",
        "gauge",
        "Cross-core wake-ups per request answered, since start.",
    );
    let _ = writeln!(
        o,
        "registry_cross_core_wakeups_per_request {:.4}",
        per(wakeups)
    );
    out
}

/// Appends the store's families (`--data-dir`); nothing with none.
pub fn render_store(out: &mut String, disk: &crate::disk::DiskStats, instances: u64) {
    let o = out;
    let commits = disk.commits.load(Relaxed);
    let rows: [(&str, &str, &str, f64); 8] = [
        (
            "registry_store_unsaved_rows",
            "gauge",
            "Rows handed to the storage thread and not committed yet.",
            disk.unsaved_rows.load(Relaxed) as f64,
        ),
        (
            "registry_store_commits_total",
            "counter",
            "Store transactions committed and synced (one per group commit).",
            commits as f64,
        ),
        (
            "registry_store_rows_written_total",
            "counter",
            "Rows written or deleted in the store.",
            disk.rows_written.load(Relaxed) as f64,
        ),
        (
            "registry_store_errors_total",
            "counter",
            "Store commits that failed (full disk, I/O errors).",
            disk.errors.load(Relaxed) as f64,
        ),
        (
            "registry_store_dropped_total",
            "counter",
            "Batches of changes given up unsaved (store queue full, or failing too long).",
            disk.dropped.load(Relaxed) as f64,
        ),
        (
            "registry_store_failing",
            "gauge",
            "1 while the store cannot be written: persistent writes get 503.",
            f64::from(u8::from(disk.failing.load(Relaxed))),
        ),
        (
            "registry_store_file_bytes",
            "gauge",
            "Size of the store file.",
            disk.file_bytes.load(Relaxed) as f64,
        ),
        (
            "registry_store_bytes_per_instance",
            "gauge",
            "Store file size per registered instance (0 with no instances).",
            if instances == 0 {
                0.0
            } else {
                disk.file_bytes.load(Relaxed) as f64 / instances as f64
            },
        ),
    ];
    for (name, kind, help, v) in rows {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
    family(
        o,
        "registry_store_commit_seconds_mean",
        "gauge",
        "Mean time of a store commit (write and fsync), since start.",
    );
    let mean = if commits == 0 {
        0.0
    } else {
        disk.commit_us.load(Relaxed) as f64 / commits as f64 / 1e6
    };
    let _ = writeln!(o, "registry_store_commit_seconds_mean {mean:.6}");
}

/// The `--auth` families: logins, refusals by reason, the shards'
/// credential caches, users-file reloads.
pub fn render_auth(out: &mut String, a: &crate::auth::AuthStats) {
    use crate::auth::Refusal;
    let o = out;
    let two =
        |o: &mut String, name: &str, help: &str, label: &str, rows: [(&str, &AtomicU64); 2]| {
            family(o, name, "counter", help);
            for (value, n) in rows {
                let _ = writeln!(o, "{name}{{{label}=\"{value}\"}} {}", n.load(Relaxed));
            }
        };
    two(
        o,
        "registry_auth_logins_total",
        "Logins answered, by result.",
        "result",
        [("ok", &a.logins_ok), ("failed", &a.logins_failed)],
    );
    family(
        o,
        "registry_auth_refusals_total",
        "counter",
        "Requests and logins refused, by reason.",
    );
    for r in Refusal::ALL {
        let _ = writeln!(
            o,
            "registry_auth_refusals_total{{reason=\"{}\"}} {}",
            r.name(),
            a.refusals[r as usize].load(Relaxed)
        );
    }
    family(
        o,
        "registry_auth_cache_total",
        "counter",
        "Credential checks answered from a shard's cache (hit) or checked anew (miss: one HMAC for a token, one bcrypt for a password).",
    );
    for (kind, hits, misses) in [
        ("token", &a.token_hits, &a.token_misses),
        ("password", &a.password_hits, &a.password_misses),
    ] {
        for (result, n) in [("hit", hits), ("miss", misses)] {
            let _ = writeln!(
                o,
                "registry_auth_cache_total{{kind=\"{kind}\",result=\"{result}\"}} {}",
                n.load(Relaxed)
            );
        }
    }
    two(
        o,
        "registry_auth_reloads_total",
        "Users-file reloads (SIGHUP), by result.",
        "result",
        [("ok", &a.reloads), ("refused", &a.reload_errors)],
    );
}

/// A clustered node's member list (issue 14): members by state, the
/// list's version and change time, reloads of `--cluster-conf` by result.
pub fn render_cluster(out: &mut String, c: &crate::cluster::ClusterShared) {
    use crate::distro::members::State;
    let o = out;
    let (counts, version, changed) = c.with_members(|m| {
        let n = |s: State| m.members().iter().filter(|x| x.state == s).count();
        (
            [
                ("UP", n(State::Up)),
                ("SUSPICIOUS", n(State::Suspicious)),
                ("DOWN", n(State::Down)),
            ],
            m.list_version(),
            m.list_changed_ms(),
        )
    });
    family(
        o,
        "registry_cluster_members",
        "gauge",
        "Members of the member list (this node included), by state.",
    );
    for (state, n) in counts {
        let _ = writeln!(o, "registry_cluster_members{{state=\"{state}\"}} {n}");
    }
    family(
        o,
        "registry_cluster_member_list_version",
        "gauge",
        "Version of the member list: 1 at start, one more for each change applied.",
    );
    let _ = writeln!(o, "registry_cluster_member_list_version {version}");
    family(
        o,
        "registry_cluster_member_list_changed_ms",
        "gauge",
        "Unix time (ms) of the last member-list change; 0: none since start.",
    );
    let _ = writeln!(o, "registry_cluster_member_list_changed_ms {changed}");
    family(
        o,
        "registry_cluster_member_list_reloads_total",
        "counter",
        "Reads of --cluster-conf (on change or SIGHUP), by result.",
    );
    for (result, n) in [
        ("applied", &c.reloads.applied),
        ("unchanged", &c.reloads.unchanged),
        ("refused", &c.reloads.refused),
    ] {
        let _ = writeln!(
            o,
            "registry_cluster_member_list_reloads_total{{result=\"{result}\"}} {}",
            n.load(Relaxed)
        );
    }
}
