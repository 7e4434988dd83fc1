//! `dmalab-campaign --seed S --ops N --rules mix.toml`: many requests under random faults; a
//! summary on the terminal and a self-contained HTML report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use dmalab_report::DmaApi;
use dmalab_tests::campaign::{campaign, Echo};
use dmalab_tests::html;

/// Many requests under seeded random faults in one VM; a verdict per fault kind on the
/// terminal and a self-contained HTML report.
#[derive(clap::Parser, Debug)]
#[command(name = "dmalab-campaign", version)]
struct Args {
    /// Seed of the random fault choices (the same seed injects the same sequence)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of requests
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    ops: u32,
    /// Fault rules (TOML, docs/faults.md) [default: campaigns/mix.toml]
    #[arg(long)]
    rules: Option<PathBuf>,
    /// HTML report [default: target/campaign-SEED.html]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the DMA ownership oracle too (docs/oracle.md)
    #[arg(long)]
    oracle: bool,
    /// Progress as the agent's JSON reports instead of lines for people
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let root = dmalab_tests::artifacts::root();
    let (seed, ops) = (args.seed, args.ops);
    let rules_path = args
        .rules
        .unwrap_or_else(|| root.join("campaigns/mix.toml"));
    let rules = match std::fs::read_to_string(&rules_path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dmalab-campaign: cannot read {}: {e}", rules_path.display());
            return ExitCode::FAILURE;
        }
    };
    let out = args
        .out
        .unwrap_or_else(|| root.join(format!("target/campaign-{seed}.html")));
    eprintln!(
        "dmalab-campaign: seed {seed}, {ops} requests, rules {}",
        rules_path.display()
    );
    let c = campaign(
        &format!("campaign-{seed}"),
        seed,
        ops,
        &rules,
        if args.json { Echo::Json } else { Echo::Human },
        args.oracle,
    );

    let xfers = c.xfers();
    let mut by_kind: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for v in &c.verdicts {
        let e = by_kind.entry(v.kind.as_str()).or_default();
        e.0 += 1;
        e.1 += u32::from(v.pass);
    }
    println!(
        "\n== campaign seed {seed}: {} requests, {} faults injected",
        xfers.len(),
        c.verdicts.len()
    );
    println!("  {:<22} {:>8} {:>8}", "fault", "injected", "handled");
    for (k, (n, ok)) in &by_kind {
        println!("  {k:<22} {n:>8} {ok:>8}");
    }
    let problems = dmalab_tests::kernel_log::problems(&c.run.console);
    let dma: u64 = c
        .run
        .all::<DmaApi>()
        .iter()
        .filter_map(|d| d.errors)
        .max()
        .unwrap_or(0);
    println!("  requests failed without a fault: {}", c.unexplained.len());
    if c.run.oracle.is_some() {
        println!(
            "  ownership oracle: {} violation(s)",
            c.oracle_violations().len()
        );
        for v in c.oracle_violations() {
            println!(
                "    {} queue {} tag {:#x} by {} ({} time(s))",
                v.kind,
                v.queue,
                v.tag,
                v.site(),
                v.count
            );
        }
    }
    let device_errors = c.run.unexplained_device_errors();
    println!(
        "  kernel log problems: {}   DMA-API debug errors: {dma}   device-side errors no fault explains: {}",
        problems.len(),
        device_errors.len()
    );
    for e in device_errors.iter().take(10) {
        println!("    {e}");
    }
    for v in c.verdicts.iter().filter(|v| !v.pass) {
        println!(
            "  FAIL {} ({}) queue {} tag {:#x}: expected {}, observed {}",
            v.rule, v.kind, v.queue, v.tag, v.expected, v.observed
        );
    }
    let summary = vec![
        ("seed".to_string(), seed.to_string()),
        ("requests".to_string(), xfers.len().to_string()),
        ("faults injected".to_string(), c.verdicts.len().to_string()),
        (
            "verdicts passed".to_string(),
            format!(
                "{}/{}",
                c.verdicts.iter().filter(|v| v.pass).count(),
                c.verdicts.len()
            ),
        ),
        (
            "requests failed without a fault".to_string(),
            c.unexplained.len().to_string(),
        ),
        (
            "kernel log problems".to_string(),
            problems.len().to_string(),
        ),
        ("DMA-API debug errors".to_string(), dma.to_string()),
        (
            "device-side errors no fault explains".to_string(),
            device_errors.len().to_string(),
        ),
        ("logs".to_string(), c.run.dir.display().to_string()),
    ];
    let queues = xfers.iter().map(|x| u64::from(x.queue)).max().unwrap_or(0) + 1;
    let page = html::report(
        &format!("dmalab campaign, seed {seed}"),
        &summary,
        &xfers,
        &c.verdicts,
        c.oracle_violations(),
        queues,
    );
    match std::fs::write(&out, page) {
        Ok(()) => println!("  report: {}", out.display()),
        Err(e) => eprintln!("dmalab-campaign: cannot write {}: {e}", out.display()),
    }
    println!("  verdict: {}", if c.passed() { "PASS" } else { "FAIL" });
    if c.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
