//! `dmalab-campaign --seed S --ops N --rules mix.toml [--jobs J] [--shard I/N] [--resume]`:
//! many requests under seeded random faults, in units that any VM can run; a summary on the
//! terminal, a JSON report and a self-contained HTML report. `dmalab-campaign merge DIR...`
//! puts shards' results together into the report one run would have written (docs/campaigns.md).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dmalab_harness::campaign::{merge, run_units, Echo, Merged, Plan, Store};

/// Many requests under seeded random faults, concurrently on every queue (or one at a time),
/// in one VM or several, on one machine or many.
#[derive(clap::Parser, Debug)]
#[command(
    name = "dmalab-campaign",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    merge: Option<Cmd>,
    /// Seed of the random fault choices and requests (the same seed, the same campaign)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of requests in the whole campaign
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    ops: u64,
    /// Requests per unit: the device's fault epoch restarts at each, the unit of sharding
    /// and resuming
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    unit: u64,
    /// One request at a time: exact reproduction for every rule (default: one request in
    /// flight on every queue at once)
    #[arg(long)]
    serial: bool,
    /// How the driver reaches request memory: auto (its default), bounce, zero-copy
    #[arg(long, value_parser = parse_dma_mode)]
    dma_mode: Option<u32>,
    /// Fault rules (TOML, docs/faults.md) [default: campaigns/mix.toml]
    #[arg(long)]
    rules: Option<PathBuf>,
    /// VMs side by side on this machine, each running a slice of the units
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Run only slice I of N (0-based) of the units; `merge` the N stores afterwards
    #[arg(long, value_parser = parse_shard)]
    shard: Option<(u64, u64)>,
    /// Where results are kept [default: target/campaigns/seed-S, or seed-S-shard-I-of-N]
    #[arg(long)]
    state: Option<PathBuf>,
    /// Keep the units already judged in --state (and those an interrupted run finished); run
    /// only the rest
    #[arg(long)]
    resume: bool,
    /// HTML report [default: next to the state, report.html]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the DMA ownership oracle too (docs/oracle.md)
    #[arg(long)]
    oracle: bool,
    /// Progress as the agent's JSON reports instead of lines for people
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Put shards' stores together into one report (identical to an unsharded run's)
    Merge {
        /// The shards' --state directories
        #[arg(required = true)]
        stores: Vec<PathBuf>,
        /// Where the merged report goes (report.json and report.html)
        #[arg(long, default_value = "target/campaigns/merged")]
        out: PathBuf,
    },
}

fn parse_shard(s: &str) -> Result<(u64, u64), String> {
    let (i, n) = s.split_once('/').ok_or("expected I/N, e.g. 0/4")?;
    let (i, n): (u64, u64) = (
        i.parse().map_err(|_| "I is not a number")?,
        n.parse().map_err(|_| "N is not a number")?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard {i}/{n}: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let result = match &args.merge {
        Some(Cmd::Merge { stores, out }) => merge(stores).and_then(|m| report(&m, out)),
        None => run(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dmalab-campaign: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let root = dmalab_harness::artifacts::root();
    let rules_path = args
        .rules
        .clone()
        .unwrap_or_else(|| root.join("campaigns/mix.toml"));
    let rules = std::fs::read_to_string(&rules_path)
        .map_err(|e| format!("cannot read {}: {e}", rules_path.display()))?;
    let plan = Plan {
        unit: args.unit,
        serial: args.serial,
        dma_mode: args.dma_mode,
        ..Plan::new(args.seed, args.ops, &rules)
    };
    let tag = match args.shard {
        Some((i, n)) => format!("seed-{}-shard-{i}-of-{n}", args.seed),
        None => format!("seed-{}", args.seed),
    };
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| root.join("target/campaigns").join(&tag));
    let store = Store::open(&state, &plan, args.resume)?;
    let mine = match args.shard {
        Some((i, n)) => plan.shard(i, n),
        None => 0..plan.units(),
    };
    // a resumed run first keeps what its interrupted VMs finished
    let vm_name = |job: u64| format!("campaign-{tag}-{}-job{job}", plan.id());
    if args.resume {
        for job in 0..64 {
            let dir = root.join("target/e2e").join(vm_name(job));
            if dir.exists() {
                let kept = store.salvage(&vm_name(job), &dir)?;
                if !kept.is_empty() {
                    eprintln!(
                        "dmalab-campaign: kept {} unit(s) an earlier run of job {job} finished",
                        kept.len()
                    );
                }
            }
        }
    }
    let done = store.done();
    let todo: Vec<u64> = mine.clone().filter(|u| !done.contains(u)).collect();
    eprintln!(
        "dmalab-campaign: seed {}, {} requests in {} units of {} ({}), rules {}; this run: {} of units {}..{}{}, {} VM(s); results in {}",
        plan.seed,
        plan.ops,
        plan.units(),
        plan.unit,
        if plan.serial { "serial" } else { "concurrent" },
        rules_path.display(),
        todo.len(),
        mine.start,
        mine.end,
        if todo.len() < mine.clone().count() { " (the rest already done)" } else { "" },
        args.jobs.min(todo.len().max(1) as u64),
        state.display()
    );
    let echo = if args.json { Echo::Json } else { Echo::Human };
    let chunks = split(&todo, args.jobs);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(job, ranges)| {
                let (plan, store, name) = (&plan, &store, vm_name(job as u64));
                s.spawn(move || -> Result<(), String> {
                    let r = run_units(plan, &name, ranges, echo, args.oracle, |o| {
                        if args.jobs > 1 {
                            o.echo_prefix = format!("[job {job}]");
                        }
                    });
                    store.record(&name, &r).map(|_| ())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap_or(Err("a job panicked".into())).err())
            .collect()
    });
    if let Some(e) = failures.first() {
        return Err(e.clone());
    }
    if args.shard.is_some() {
        let left: Vec<u64> = mine.filter(|u| !store.done().contains(u)).collect();
        println!(
            "\n== shard done: {} unit(s) judged in {}{}\n  put the shards together with: dmalab-campaign merge <each shard's state dir>",
            store.done().len(),
            state.display(),
            if left.is_empty() { String::new() } else { format!(" ({} unit(s) unfinished: --resume)", left.len()) }
        );
        return Ok(left.is_empty());
    }
    let merged = merge(std::slice::from_ref(&state))?;
    let out = args.out.clone().unwrap_or_else(|| state.join("report"));
    report(&merged, &out)
}

/// `todo` (sorted units) cut into `jobs` contiguous slices, each as ranges.
fn split(todo: &[u64], jobs: u64) -> Vec<Vec<Range<u64>>> {
    let jobs = (jobs as usize).clamp(1, todo.len().max(1));
    let mut out = Vec::new();
    for j in 0..jobs {
        let part = &todo[todo.len() * j / jobs..todo.len() * (j + 1) / jobs];
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for &u in part {
            match ranges.last_mut() {
                Some(r) if r.end == u => r.end = u + 1,
                _ => ranges.push(u..u + 1),
            }
        }
        if !ranges.is_empty() {
            out.push(ranges);
        }
    }
    out
}

/// Prints the summary and writes `<out>.json` and `<out>.html` (`out` a directory: report.*
/// inside it); true when the campaign passed.
fn report(m: &Merged, out: &Path) -> Result<bool, String> {
    let (json, html) = if out.extension().is_none() && (out.is_dir() || !out.exists()) {
        let _ = std::fs::create_dir_all(out);
        (out.join("report.json"), out.join("report.html"))
    } else {
        (out.with_extension("json"), out.with_extension("html"))
    };
    let requests = m.requests().count();
    println!(
        "\n== campaign seed {}: {} requests ({} with the READ halves of WRITE + READ pairs), {} faults injected",
        m.plan.seed,
        m.plan.ops,
        requests,
        m.verdicts().count()
    );
    println!("  {:<22} {:>8} {:>8}", "fault", "injected", "handled");
    for (k, (n, ok)) in m.by_kind() {
        println!("  {k:<22} {n:>8} {ok:>8}");
    }
    let h = &m.health;
    println!(
        "  requests failed without a fault: {}",
        m.requests().filter(|r| r.unexplained).count()
    );
    println!(
        "  kernel log problems: {}   DMA-API debug errors: {}   device-side errors no fault explains: {}   oracle violations: {}   runs that did not finish: {}",
        h.kernel_log_problems, h.dma_api_errors, h.device_errors_unexplained, h.oracle_violations, h.runs_incomplete
    );
    for v in m.verdicts().filter(|v| !v.pass) {
        println!(
            "  FAIL {} ({}) request {}{}: expected {}, observed {}",
            v.rule,
            v.kind,
            v.op,
            if v.half == 1 { " (its READ)" } else { "" },
            v.expected,
            v.observed
        );
    }
    std::fs::write(&json, m.json()).map_err(|e| format!("{}: {e}", json.display()))?;
    let page = m.html(&format!("dmalab campaign, seed {}", m.plan.seed), &[]);
    std::fs::write(&html, page).map_err(|e| format!("{}: {e}", html.display()))?;
    println!("  report: {} ({})", html.display(), json.display());
    println!("  verdict: {}", if m.passed() { "PASS" } else { "FAIL" });
    Ok(m.passed())
}

/// `auto`, `bounce` or `zero-copy` as the driver's `dma_mode` value.
fn parse_dma_mode(s: &str) -> Result<u32, String> {
    match s {
        "auto" => Ok(dmalab_abi::DMA_MODE_AUTO),
        "bounce" => Ok(dmalab_abi::DMA_MODE_BOUNCE),
        "zero-copy" => Ok(dmalab_abi::DMA_MODE_ZERO_COPY),
        other => Err(format!("{other}: expected auto, bounce or zero-copy")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_is_cut_into_contiguous_slices() {
        assert_eq!(
            super::split(&[0, 1, 2, 5, 6], 2),
            vec![vec![0..2], vec![2..3, 5..7]]
        );
        assert_eq!(super::split(&[3], 4), vec![vec![3..4]]);
        assert!(super::split(&[], 2).is_empty());
        assert_eq!(super::parse_shard("1/4"), Ok((1, 4)));
        assert!(super::parse_shard("4/4").is_err());
    }
}
