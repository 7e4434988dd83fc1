//! `make bench-streaming`: the driver's zero-copy path with its own copy of the streaming
//! abstraction (`guest-driver/module/streaming.rs`) and with the kernel's, made from the same
//! source by the streaming patch (kernel-patches/streaming/), in one boot of the production-like
//! bench kernel with the patch (the agent's `bench_module_pair`, A B, B A, A B, B A). Prints each
//! cell's ratio in-tree / module (of the four rounds' means: the order puts drift and position
//! on both sides) with the spread of the single rounds' ratios, and judges "no regression"; writes
//! `target/bench/streaming.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use dmalab_harness::vm::{run, VmOptions};
use dmalab_report::Bench;

/// A cell regresses when every round's in-tree side is below this ratio of the module's side
/// it ran next to: a real slowdown shows in each interleaved round, while noise under TCG moves
/// a single depth-1 round by up to 20% either way.
const NO_REGRESSION: f64 = 0.95;
/// And the cells together: the geometric mean of their ratios at least this.
const NO_REGRESSION_OVERALL: f64 = 0.97;

#[derive(clap::Parser, Debug)]
#[command(about = "The driver on the kernel's streaming module against its own copy")]
struct Args {
    /// The patched bench kernel (scripts/bench-streaming.sh prints it)
    #[arg(long)]
    kernel: PathBuf,
    /// The initramfs holding both builds of the driver (scripts/bench-streaming.sh)
    #[arg(long)]
    initramfs: PathBuf,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let mut o = VmOptions::new("bench_streaming", "load,bench_module_pair,unload");
    o.kernel = Some(args.kernel);
    o.initramfs = Some(args.initramfs);
    o.dma_api_debug = false;
    o.event_kinds = Some(&["error"]);
    o.echo = vec!["bench"];
    o.timeout = std::time::Duration::from_secs(1800);
    eprintln!("dmalab-bench-streaming: one boot, the zero-copy path on the driver's streaming module and on the kernel's, A B, B A, A B, B A (~5 min of guest time)");
    let r = run(&o);
    r.assert_clean();
    // (op, len, depth) -> side -> ops/s of each round
    let mut cells: BTreeMap<(String, u64, u64), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for b in r.all::<Bench>() {
        r.check(
            b.failed == 0 && b.ops > 0,
            &format!("a cell with failed requests or none done: {b:?}"),
        );
        let side = if b.device.starts_with("zero-copy-in-tree") {
            "in-tree"
        } else if b.device.starts_with("zero-copy-module") {
            "module"
        } else {
            continue;
        };
        let op = if b.device.ends_with("-read") {
            "READ"
        } else {
            "COPY"
        };
        cells
            .entry((op.to_string(), b.len, b.depth))
            .or_default()
            .entry(side)
            .or_default()
            .push(b.ops_per_s);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    // each round's two sides ran back to back: the spread of their ratios is the noise
    let spread = |m: &[f64], t: &[f64]| {
        let r: Vec<f64> = m
            .iter()
            .zip(t)
            .filter(|(m, _)| **m > 0.0)
            .map(|(m, t)| t / m)
            .collect();
        (
            r.iter().copied().fold(f64::INFINITY, f64::min),
            r.iter().copied().fold(0.0, f64::max),
        )
    };
    println!("\n== the zero-copy path: the kernel's streaming module against the driver's copy (one boot, 4 rounds each, A B B A A B B A; ratio of the means, and the single rounds' spread)");
    println!(
        "{:<5} {:>8} {:>6} {:>14} {:>14} {:>8} {:>14}",
        "op", "size", "depth", "module ops/s", "in-tree ops/s", "ratio", "rounds"
    );
    let mut rows = Vec::new();
    let mut regressed = Vec::new();
    let mut log_sum = 0.0;
    for ((op, len, depth), sides) in &cells {
        let (ms, ts) = (
            sides.get("module").map_or(&[][..], |v| v),
            sides.get("in-tree").map_or(&[][..], |v| v),
        );
        let (m, t) = (mean(ms), mean(ts));
        let ratio = if m > 0.0 { t / m } else { 0.0 };
        let (lo, hi) = spread(ms, ts);
        if hi < NO_REGRESSION {
            regressed.push(format!(
                "{op} {} depth {depth}",
                dmalab_harness::bench::size(*len)
            ));
        }
        log_sum += ratio.max(1e-9).ln();
        println!(
            "{op:<5} {:>8} {depth:>6} {m:>14.0} {t:>14.0} {ratio:>7.2}x {lo:>6.2}-{hi:.2}x",
            dmalab_harness::bench::size(*len)
        );
        rows.push(serde_json::json!({"op": op, "len": len, "depth": depth,
            "module_ops_per_s": m, "in_tree_ops_per_s": t, "ratio": ratio,
            "round_ratios": [lo, hi]}));
    }
    let overall = (log_sum / rows.len().max(1) as f64).exp();
    let met = !rows.is_empty() && regressed.is_empty() && overall >= NO_REGRESSION_OVERALL;
    println!(
        "\ngoal: no regression of the in-tree module against the driver's copy (no cell below {NO_REGRESSION:.2}x in every round, all cells together at least {NO_REGRESSION_OVERALL:.2}x): {} (together {overall:.2}x{})",
        if met { "met" } else { "MISSED" },
        if regressed.is_empty() {
            String::new()
        } else {
            format!("; slower in every round: {}", regressed.join(", "))
        }
    );
    // Guest instructions per zero-copy request, each build on its own: a count, not a time,
    // so it says whether the in-tree build does more work where the timings are noise.
    println!(
        "\n== guest instructions per zero-copy COPY (median submit + complete, under the oracle)"
    );
    let mut counts = Vec::new();
    for len in [4096u32, 1 << 20] {
        let mut row = serde_json::json!({"len": len});
        for (side, module) in [
            ("module", "/lib/modules/dmalab.ko"),
            ("in-tree", "/lib/modules/dmalab-intree.ko"),
        ] {
            let ops = if len == 4096 { 200 } else { 30 };
            let mut c = VmOptions::new(
                &format!("bench_streaming_count_{side}_{len}"),
                "load,serial_copies,unload",
            );
            c.kernel = o.kernel.clone();
            c.initramfs = o.initramfs.clone();
            c.dma_api_debug = false;
            c.oracle = true;
            c.count_instructions = true;
            c.dma_mode = Some(dmalab_abi::DMA_MODE_ZERO_COPY);
            c.append = format!("dmalab.len={len} dmalab.ops={ops} dmalab.module={module}");
            let r = run(&c);
            r.assert_clean();
            let i = r.oracle.as_ref().and_then(|o| o.instructions.clone());
            let total = i
                .as_ref()
                .and_then(|i| Some(i["submit_median"].as_f64()? + i["complete_median"].as_f64()?));
            row[side] = serde_json::json!(total);
        }
        let (m, t) = (row["module"].as_f64(), row["in-tree"].as_f64());
        println!(
            "{:>8}: module {}, in-tree {}{}",
            dmalab_harness::bench::size(u64::from(len)),
            m.map_or("?".into(), |v| format!("{v:.0}")),
            t.map_or("?".into(), |v| format!("{v:.0}")),
            match (m, t) {
                (Some(m), Some(t)) if m > 0.0 => format!(" ({:+.1}%)", 100.0 * (t - m) / m),
                _ => String::new(),
            }
        );
        counts.push(row);
    }

    let root = dmalab_harness::artifacts::root();
    let _ = std::fs::create_dir_all(root.join("target/bench"));
    let json = serde_json::json!({"cells": rows, "overall_ratio": overall,
        "regressed": regressed, "goal_met": met, "instructions_per_request": counts});
    let path = root.join("target/bench/streaming.json");
    if let Err(e) = std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    ) {
        eprintln!("dmalab-bench-streaming: {}: {e}", path.display());
    }
    println!("written: {}", path.display());
    if cells.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
