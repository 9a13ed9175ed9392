//! `distro-loadgen`: see `distro-loadgen --help` and docs/loadgen.md.

fn main() {
    match distro_loadgen::cli::run(std::env::args().collect()) {
        Ok(summary) => {
            let errors: u64 = summary
                .targets
                .iter()
                .flat_map(|t| &t.ops)
                .map(|o| o.errors)
                .sum();
            if errors > 0 {
                eprintln!("distro-loadgen: {errors} requests failed (see the table)");
            }
        }
        Err(e) => {
            eprintln!("distro-loadgen: {e}");
            std::process::exit(2);
        }
    }
}
