//! `distro-loadgen`: see `distro-loadgen --help` and docs/loadgen.md.
//!
//! Exit status: 0 when the run finished within `--max-error-ratio`
//! (default: no failed request), 1 when more requests failed, 2 when it
//! could not run (bad arguments, unwritable `--out`).

use distro_loadgen::cli::{self, CliError};

fn main() {
    match cli::run(std::env::args().collect()) {
        Ok(outcome) => {
            if outcome.failed > 0 {
                eprintln!(
                    "distro-loadgen: {} of {} requests failed (see the table)",
                    outcome.failed, outcome.requests
                );
            }
            if !outcome.passed() {
                eprintln!(
                    "distro-loadgen: more than --max-error-ratio {} failed; exit 1",
                    outcome.max_error_ratio
                );
                std::process::exit(1);
            }
        }
        // --help and --version to stdout with 0, usage errors to stderr with 2.
        Err(CliError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("distro-loadgen: {e}");
            std::process::exit(2);
        }
    }
}
