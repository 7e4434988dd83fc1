//! `make bench-oracle`: what the DMA ownership oracle costs. The same guest work runs twice in
//! this one invocation, oracle off then on: the driver's transfer suite (wall time of the whole
//! VM run) and the throughput scenario (COPY ops/s at 4 KiB and 1 MiB, depth 1 and 32). Prints
//! the on/off ratios, and the guest kernel instructions per request (submit and complete
//! paths, one request at a time), and writes them to target/bench/oracle-cost.json.

use std::process::ExitCode;
use std::time::Instant;

use dmalab_harness::vm::{run, Run, VmOptions};
use dmalab_report::Bench;

fn timed(name: &str, scenarios: &str, oracle: bool) -> (Run, f64) {
    let mut o = VmOptions::new(name, scenarios);
    o.oracle = oracle;
    eprintln!(
        "dmalab-oracle-cost: {name} (oracle {})",
        if oracle { "on" } else { "off" }
    );
    let t = Instant::now();
    let r = run(&o);
    let secs = t.elapsed().as_secs_f64();
    r.assert_clean();
    (r, secs)
}

fn main() -> ExitCode {
    let suite = "load,info,transfers,sg,concurrent,errors,reset,stats,unload";
    let (_, off) = timed("oracle_cost_suite_off", suite, false);
    let (_, on) = timed("oracle_cost_suite_on", suite, true);
    let (b_off, _) = timed("oracle_cost_bench_off", "load,bench,unload", false);
    let (b_on, _) = timed("oracle_cost_bench_on", "load,bench,unload", true);
    println!("\n== ownership oracle cost (same run, oracle off vs on)");
    println!(
        "  transfer suite, whole VM run: {off:.1} s -> {on:.1} s = {:.2}x",
        on / off
    );
    let mut rows = Vec::new();
    for (a, b) in b_off.all::<Bench>().iter().zip(b_on.all::<Bench>()) {
        let ratio = a.ops_per_s / b.ops_per_s.max(1e-9);
        println!(
            "  COPY {:>8} B depth {:>2}: {:>8.0} -> {:>8.0} ops/s = {ratio:.2}x slower",
            a.len, a.depth, a.ops_per_s, b.ops_per_s
        );
        rows.push(serde_json::json!({
            "len": a.len, "depth": a.depth,
            "ops_per_s_off": a.ops_per_s, "ops_per_s_on": b.ops_per_s, "slowdown": ratio,
        }));
    }
    println!("\n== guest kernel instructions per request (COPY, one at a time, median)");
    let mut counts = Vec::new();
    for (len, ops) in [(4096u32, 300u32), (1 << 20, 30)] {
        let (i, ops_per_s) = dmalab_harness::bench::instructions_per_request(len, ops);
        println!(
            "  {len:>8} B: submit {} + complete {} instructions ({} requests; {ops_per_s:.0} ops/s under the oracle)",
            i["submit_median"], i["complete_median"], i["requests"]
        );
        counts.push(serde_json::json!({"len": len, "instructions": i, "ops_per_s": ops_per_s}));
    }
    let out = dmalab_harness::artifacts::root().join("target/bench/oracle-cost.json");
    let json = serde_json::json!({
        "suite_seconds_off": off, "suite_seconds_on": on, "suite_slowdown": on / off,
        "throughput": rows, "instructions_per_request": counts,
    });
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    match std::fs::write(&out, format!("{json:#}\n")) {
        Ok(()) => {
            println!("  written to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
