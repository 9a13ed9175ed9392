//! `distro-registry`: parse the configuration, set up logging, run.

use std::io::IsTerminal;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = match distro_registry::config::Config::load() {
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
        .init();
    if let Err(e) = distro_registry::server::run(config) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}
