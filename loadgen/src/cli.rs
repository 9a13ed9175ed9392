//! Command line, and the run from arguments to written reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::report::{self, Summary, TargetRun};
use crate::run::{self, Progress, RunConfig};
use crate::scenario::{self, Params};
use crate::target::{parse_target, Target};

/// Hard cap on any phase, whatever the counts say.
const PHASE_SECONDS_MAX: u64 = 600;
/// Every scenario name either protocol knows (checked per protocol in `run`).
const ALL_SCENARIOS: [&str; 6] = ["burst", "beat", "query", "storm", "converge", "push"];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "distro-loadgen",
    version,
    about = "Load generator for Nacos-compatible registries"
)]
pub struct Args {
    /// Target URL (http://host:port); repeatable. `--label` and
    /// `--server-pid` apply to the target before them.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// Name of the preceding target in reports.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Server process of the preceding target: its CPU time is reported.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// What to run (docs/loadgen.md): burst (register, list, deregister),
    /// beat (a fleet beating on schedule), query (lists), storm (a mix),
    /// converge (write on one target, poll the others); with --protocol
    /// grpc: burst, and push (subscribers of one service, changes one at
    /// a time).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ALL_SCENARIOS))]
    pub scenario: String,
    /// The protocol of the clients: http (Nacos 1.x API) or grpc (Nacos
    /// 2.x: each connection a client, set up as the real ones are).
    #[arg(long, default_value = "http", value_parser = ["http", "grpc"])]
    pub protocol: String,
    /// gRPC port = the target's HTTP port + this (the 2.x clients' rule;
    /// may be negative).
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    pub grpc_port_offset: i32,
    /// Instances (burst, beat, storm, converge: how many; query: spread
    /// over the services as fixtures).
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Services the instances are spread over, round robin (instance k
    /// belongs to service k mod N); the list phases query each one.
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Keep-alive connections per target.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Duration of the beat, query and storm scenarios, seconds.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Open loop at this many requests/s (latency from intended send time).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Worker threads, one runtime each (default: all cores). Thread i is
    /// pinned to the i-th allowed CPU counted from the highest, so that a
    /// one-thread generator stays off CPU 0, where a node's first shard
    /// runs; see --no-pin.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Leave the worker threads unpinned (the scheduler places them).
    #[arg(long)]
    pub no_pin: bool,
    /// Exit with status 1 when more than this fraction of the requests
    /// failed (0: any failed request fails the run; 1: never).
    #[arg(long, default_value_t = 0.0)]
    pub max_error_ratio: f64,
    /// Makes service names of one run distinct from another's.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for summary.json, .hgrm files and latency.svg.
    #[arg(long)]
    pub out: PathBuf,
    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,
    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Drive all targets as one cluster: the items of burst, beat, query
    /// and storm go to the targets round robin, in one run and one report.
    #[arg(long)]
    pub spread: bool,
    /// Beat period of the beat scenario, ms.
    #[arg(long, default_value_t = 5_000)]
    pub beat_period_ms: u64,
    /// Register (and deregister) persistent instances (`ephemeral=false`):
    /// each write waits for the node's synced store.
    #[arg(long)]
    pub persistent: bool,
    /// Leave the registered instances in place: skip the deregister and
    /// cleanup phases (to fill a node, e.g. for a restart benchmark).
    #[arg(long)]
    pub keep: bool,
}

/// Pairs each `--label` / `--server-pid` with the `--target` before it,
/// walking the raw arguments in order and taking clap's parsed values in
/// the same order.
fn targets(args: &Args, raw: &[String]) -> Result<Vec<Target>, String> {
    let mut out: Vec<Target> = Vec::new();
    let (mut ti, mut li, mut pi) = (0, 0, 0);
    for token in raw {
        match token.split('=').next().unwrap_or("") {
            "--target" => {
                let url = &args.targets[ti];
                ti += 1;
                let addr = parse_target(url, args.allow_remote).map_err(|e| e.to_string())?;
                out.push(Target {
                    url: url.clone(),
                    addr,
                    label: format!("target{}", out.len() + 1),
                    server_pid: None,
                });
            }
            "--label" => {
                let t = out.last_mut().ok_or("--label must follow a --target")?;
                t.label = args.labels[li].clone();
                li += 1;
            }
            "--server-pid" => {
                let t = out
                    .last_mut()
                    .ok_or("--server-pid must follow a --target")?;
                t.server_pid = Some(args.server_pids[pi]);
                pi += 1;
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Why an invocation did not run.
#[derive(Debug)]
pub enum CliError {
    /// What clap says: `--help` and `--version` (stdout, exit 0) or a bad
    /// command line (stderr, exit 2); `clap::Error::exit` does both.
    Usage(clap::Error),
    /// Anything else, for stderr.
    Failed(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(e) => write!(f, "{e}"),
            CliError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<String> for CliError {
    fn from(e: String) -> CliError {
        CliError::Failed(e)
    }
}

/// A finished run.
pub struct Outcome {
    pub summary: Summary,
    /// Requests made (answered, failed or never sent) and failed.
    pub requests: u64,
    pub failed: u64,
    pub max_error_ratio: f64,
}

impl Outcome {
    /// Whether the failures stay within `--max-error-ratio`.
    pub fn passed(&self) -> bool {
        self.failed == 0 || (self.failed as f64) <= self.max_error_ratio * self.requests as f64
    }
}

/// Runs the whole invocation: phases, table on stdout, files in `--out`.
pub fn run(raw: Vec<String>) -> Result<Outcome, CliError> {
    let args = Args::try_parse_from(&raw).map_err(CliError::Usage)?;
    let targets = targets(&args, &raw[1..])?;
    if args.connections == 0 || args.instances == 0 || args.services == 0 {
        return Err("--connections, --instances and --services must be positive"
            .to_string()
            .into());
    }
    if !(0.0..=1.0).contains(&args.max_error_ratio) {
        return Err("--max-error-ratio must be between 0 and 1"
            .to_string()
            .into());
    }
    let params = Params {
        instances: args.instances,
        services: args.services,
        duration: Duration::from_secs(args.duration),
        rate: args.rate.filter(|r| *r > 0.0),
        seed: args.seed,
        beat_period: Duration::from_millis(args.beat_period_ms.max(1)),
        persistent: args.persistent,
    };

    let grpc = args.protocol == "grpc";
    if grpc && (args.persistent || args.keep) {
        return Err("--persistent and --keep are for HTTP scenarios"
            .to_string()
            .into());
    }
    if grpc && !crate::grpc_run::SCENARIOS.contains(&args.scenario.as_str()) {
        return Err(format!(
            "--protocol grpc runs {}; {:?} is an HTTP scenario",
            crate::grpc_run::SCENARIOS.join(" and "),
            args.scenario
        )
        .into());
    }
    if !grpc && args.scenario == "push" {
        return Err("the push scenario needs --protocol grpc".to_string().into());
    }
    let phases = if grpc {
        Vec::new()
    } else {
        let mut all = scenario::phases(
            &args.scenario,
            &params,
            Duration::from_secs(PHASE_SECONDS_MAX),
        )?;
        if args.keep {
            all.retain(|ph| !matches!(ph.work, scenario::Work::Deregister));
        }
        all
    };
    let config = RunConfig {
        connections: args.connections,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        timeout: Duration::from_millis(args.timeout_ms),
        poll_interval: Duration::from_millis(5),
        converge_timeout: Duration::from_secs(10),
        spread: args.spread,
        pin: !args.no_pin,
    };
    // Converge needs every target at once; the rest run target by target.
    let groups: Vec<Vec<Target>> = if args.scenario == "converge" || args.spread {
        vec![targets.clone()]
    } else {
        targets.iter().map(|t| vec![t.clone()]).collect()
    };
    let mut runs = Vec::new();
    for group in groups {
        let addrs: Vec<_> = group.iter().map(|t| t.addr).collect();
        let first = &group[0];
        let mut results = Vec::new();
        if grpc {
            let mut g = first.addr;
            let port = u16::try_from(i32::from(g.port()) + args.grpc_port_offset)
                .map_err(|_| format!("{}: HTTP port + --grpc-port-offset is no port", first.url))?;
            g.set_port(port);
            let progress = Arc::new(Progress::default());
            let done = Arc::new(AtomicBool::new(false));
            let ticker = spawn_progress(
                first.label.clone(),
                "grpc",
                usize::MAX,
                progress.clone(),
                done.clone(),
            );
            results = if args.scenario == "push" {
                crate::grpc_run::push(first.addr, g, first.server_pid, &params, &config, progress)
            } else {
                crate::grpc_run::burst(g, first.server_pid, &params, &config, progress)
            };
            done.store(true, Relaxed);
            let _ = ticker.join();
        }
        for phase in &phases {
            let progress = Arc::new(Progress::default());
            let done = Arc::new(AtomicBool::new(false));
            let ticker = spawn_progress(
                first.label.clone(),
                phase.name,
                phase.items,
                progress.clone(),
                done.clone(),
            );
            let r = run::run_phase(&addrs, first.server_pid, phase, &params, &config, progress);
            done.store(true, Relaxed);
            let _ = ticker.join();
            results.push(r);
        }
        runs.push(TargetRun {
            label: first.label.clone(),
            url: first.url.clone(),
            phases: results,
        });
    }
    let summaries: Vec<_> = runs.iter().map(report::summarize).collect();
    let comparison = report::compare(&summaries);
    let mut settings = serde_json::json!({
        "instances": args.instances,
        "services": args.services,
        "connections": args.connections,
        "rate": args.rate,
        "threads": config.threads,
        "seed": args.seed,
        "protocol": args.protocol,
    });
    // Only the scenarios that run for a duration have one.
    if scenario::TIMED.contains(&args.scenario.as_str()) {
        settings["duration_s"] = args.duration.into();
    }
    if args.scenario == "beat" {
        settings["beat_period_ms"] = args.beat_period_ms.into();
    }
    let summary = Summary {
        schema: report::SCHEMA,
        scenario: args.scenario.clone(),
        settings,
        targets: summaries,
        comparison,
    };
    print!("{}", report::table(&summary.targets, &summary.comparison));
    let title = report::title(&summary);
    report::write_all(&args.out, &summary, &runs, &title)
        .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    let ops = summary.targets.iter().flat_map(|t| &t.ops);
    let requests = ops.clone().map(|o| o.count).sum();
    let failed = ops.map(|o| o.errors).sum();
    Ok(Outcome {
        summary,
        requests,
        failed,
        max_error_ratio: args.max_error_ratio,
    })
}

/// A progress line on stderr, once a second, until `done`.
fn spawn_progress(
    label: String,
    phase: &'static str,
    items: usize,
    progress: Arc<Progress>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let total = if items == usize::MAX {
            "-".to_string()
        } else {
            items.to_string()
        };
        while !done.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if start.elapsed().as_millis() % 1000 < 100 {
                eprint!(
                    "\r[{label} {phase}] {} requests (items {total}), {} errors, {:.0}s   ",
                    progress.done.load(Relaxed),
                    progress.errors.load(Relaxed),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        eprintln!(
            "\r[{label} {phase}] {} requests, {} errors, {:.1}s          ",
            progress.done.load(Relaxed),
            progress.errors.load(Relaxed),
            start.elapsed().as_secs_f64()
        );
    })
}
