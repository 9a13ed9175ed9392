//! `distro-registry`: parse the configuration, set up logging, run.

use std::io::IsTerminal;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them, and on the machines measured here a huge-page fault (2 MiB zeroed
/// at once) stalled a shard for 5-10 ms at a time: register p99 was 16-30
/// ms with THP and 4-6 ms without (docs/performance.md).
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches only this
    // process's memory policy.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

fn main() {
    use distro_registry::config::{Command, Config};
    let cli = Config::parse_cli();
    if cli.command == Some(Command::HashPassword) {
        match distro_registry::auth::hash_password_from_stdin() {
            Ok(h) => println!("{h}"),
            Err(e) => {
                eprintln!("distro-registry hash-password: {e}");
                std::process::exit(2);
            }
        }
        return;
    }
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("distro-registry: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (the reader went away) must never kill a thread:
        // by default the subscriber reports a failed write with
        // `eprintln!`, which panics when stderr is gone.
        .log_internal_errors(false)
        .init();
    disable_transparent_huge_pages();
    // A store write past the file-size limit (RLIMIT_FSIZE) fails with
    // EFBIG, handled like a full disk; by default its signal would kill
    // the process.
    // SAFETY: installs the ignore disposition for one signal; no handler
    // code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // A panic on any thread leaves a core's data unreachable: take the
    // whole node down loudly instead of serving half of the registry.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    if let Err(e) = distro_registry::server::run(config) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}
