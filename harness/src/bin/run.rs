//! `make run`: boot the VM, drive the device through the driver, and print what happened.

use std::collections::BTreeMap;
use std::process::ExitCode;

use dmalab_harness::vm::{run, VmOptions};
use dmalab_report::{Bench, Concurrent, DmaApi, Done, Info, Stats, Xfer};

const DEMO_FAULT: &str = "[[rule]]\nname = \"demo\"\nkind = \"drop_completion\"\nqueue = 0\nopcode = \"copy\"\nsize = [4000, 4000]\nnth = 2\n";

fn main() -> ExitCode {
    let scenarios = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "load,info,transfers,sg,concurrent,bench,probe,stats,unload".into());
    println!("dmalab: booting the guest (QEMU TCG) with the dmalab device server; scenarios: {scenarios}");
    let mut opts = VmOptions::new("run", &scenarios);
    // One fault, to show an error path: the second 4000-byte probe COPY loses its completion.
    opts.faults = Some(DEMO_FAULT.into());
    let r = run(&opts);

    println!("\n== the driver binding to the device (guest kernel log)");
    let binding = |l: &&str| {
        l.contains("dmalab") && !l.contains(dmalab_report::PREFIX) && !l.contains("dmalab.run=")
    };
    for l in r.console.lines().filter(binding) {
        println!("  {}", l.trim_end());
    }
    if let Some(i) = r.all::<Info>().pop() {
        println!(
            "\n== device: id {:#x} v{}.{}, {} queues, {} {} vectors, {}-bit DMA, {} MiB internal memory",
            i.magic,
            i.version >> 16,
            i.version & 0xffff,
            i.queues,
            i.vectors,
            i.irq_mode,
            i.dma_mask_bits,
            i.mem_size >> 20
        );
    }

    let (probes, xfers): (Vec<&Xfer>, Vec<&Xfer>) = r
        .all::<Xfer>()
        .into_iter()
        .partition(|x| x.scenario == "probe");
    if !xfers.is_empty() {
        println!(
            "\n== transfers (every byte checked in the guest; CHECKSUM against the guest's CRC32C)"
        );
        println!(
            "  {:<9} {:>6} {:>12} {:>9} {:>9}",
            "opcode", "count", "bytes", "max segs", "verified"
        );
        let mut by_op: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
        for x in &xfers {
            let e = by_op.entry(x.op.as_str()).or_default();
            e.0 += 1;
            e.1 += u64::from(x.len);
            e.2 = e.2.max(u64::from(x.segments));
            e.3 += u64::from(x.verified);
        }
        for (op, (n, bytes, segs, ok)) in &by_op {
            println!(
                "  {op:<9} {n:>6} {bytes:>12} {segs:>9} {:>9}",
                format!("{ok}/{n}")
            );
        }
    }
    if let Some(c) = r.all::<Concurrent>().pop() {
        println!(
            "  concurrent: {} threads on {} queues, {} requests verified, {} failed",
            c.threads, c.queues, c.verified, c.failed
        );
    }
    let bench = r.all::<Bench>();
    if !bench.is_empty() {
        println!("\n== throughput (COPY, guest user buffer -> device -> guest user buffer, TCG)");
        for b in &bench {
            println!(
                "  {:>8} B at queue depth {:>2}: {:>8.2} MB/s {:>8.0} ops/s ({} ops, {} failed)",
                b.len, b.depth, b.mb_per_s, b.ops_per_s, b.ops, b.failed
            );
        }
    }
    if let Some(s) = r.all::<Stats>().pop() {
        let dev = r.device_counters();
        println!("\n== counters");
        println!(
            "  driver: {} submitted, {} completed, {} error completions, {} timeouts, {} interrupts, {} bytes",
            s.total().submitted,
            s.total().completed,
            s.total().errors,
            s.total().timeouts,
            s.total().irqs,
            s.total().bytes
        );
        println!(
            "  data paths: {} requests zero-copy (the device on the caller's own pages), {} through the bounce pool ({} of them could not go zero-copy); docs/streaming-dma.md",
            s.ioctl.zero_copy, s.ioctl.bounced, s.ioctl.zero_copy_fallbacks
        );
        println!(
            "  device: {} descriptors, {} completions ({} with errors), {} interrupts raised, {} resets",
            dev.descriptors,
            dev.completions,
            dev.completions_err,
            dev.irqs,
            dev.resets
        );
    }
    let mut fault_handled = true;
    if !probes.is_empty() {
        println!("\n== a fault, injected and handled");
        for f in r.faults() {
            println!(
                "  device: rule '{}' injected {} into queue {} slot {} (tag {:#x})",
                f.rule,
                f.fault.name(),
                f.queue,
                f.index,
                f.tag
            );
        }
        for (i, p) in probes.iter().enumerate() {
            let what = match (p.errno, p.verified) {
                (0, true) => "completed, every byte checked".to_string(),
                (110, _) => {
                    "ETIMEDOUT: no completion within 5 s; the driver reset the queue".to_string()
                }
                (e, _) => format!("errno {e}, status {}", p.status),
            };
            println!("  request {}: {what}", i + 1);
        }
        let after_ok = probes.iter().skip(2).all(|p| p.verified);
        fault_handled = probes.len() == 6 && probes[1].errno == libc::ETIMEDOUT && after_ok;
        println!(
            "  verdict: {}",
            if fault_handled {
                "handled (timed out, queue reset, later requests fine)"
            } else {
                "NOT handled as expected"
            }
        );
    }
    let dma_errors: u64 = r
        .all::<DmaApi>()
        .iter()
        .map(|d| d.errors.unwrap_or(u64::MAX))
        .max()
        .unwrap_or(0);
    let problems = dmalab_harness::kernel_log::problems(&r.console);
    let all_verified = xfers.iter().all(|x| x.verified);
    let completed = r.all::<Done>().pop().is_some_and(|d| d.completed);
    println!("\n== verdict");
    println!(
        "  every byte checked out: {}",
        if all_verified { "yes" } else { "NO" }
    );
    println!("  DMA-API debug errors:   {dma_errors}");
    println!("  kernel log problems:    {}", problems.len());
    for p in &problems {
        println!("    {p}");
    }
    let device_errors = r.unexplained_device_errors();
    println!(
        "  device-side errors:     {} (besides those the injected fault explains)",
        device_errors.len()
    );
    for e in device_errors.iter().take(10) {
        println!("    {e}");
    }
    println!("  logs:                   {}", r.dir.display());
    if all_verified
        && fault_handled
        && dma_errors == 0
        && device_errors.is_empty()
        && problems.is_empty()
        && completed
        && !r.timed_out
    {
        ExitCode::SUCCESS
    } else {
        println!("  the run did not finish cleanly");
        ExitCode::FAILURE
    }
}
