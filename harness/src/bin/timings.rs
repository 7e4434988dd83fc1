//! `dmalab-timings`: where the end-to-end suite's time went (the VMs' own log,
//! `target/e2e/timings.jsonl`), printed at the end of `make e2e`.

use clap::Parser;

/// Prints the suite's VM time, its slowest VMs and its slowest scenarios.
#[derive(Parser)]
struct Args {
    /// How many of the slowest to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// The timings log (default: target/e2e/timings.jsonl).
    #[arg(long)]
    log: Option<std::path::PathBuf>,
}

fn main() {
    let args = Args::parse();
    let log = args
        .log
        .unwrap_or_else(|| dmalab_harness::artifacts::root().join("target/e2e/timings.jsonl"));
    let runs = dmalab_harness::timings::read(&log);
    if runs.is_empty() {
        println!("no VM timings in {}", log.display());
        return;
    }
    print!("{}", dmalab_harness::timings::summary(&runs, args.top));
}
