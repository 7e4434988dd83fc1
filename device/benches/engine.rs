//! Engine throughput against a plain memcpy measured in the same run.
//!
//! `cargo bench -p dmalab-device --bench engine` (or `make bench`). Prints, per size, the
//! engine's COPY throughput through rings and worker thread (descriptor fetch, validation,
//! completion write, interrupt accounting included), memcpy's throughput for the same size, and
//! the ratio; then descriptors per second for 64-byte copies. With `--bench`, also writes them to
//! `target/bench/engine.json`, where `dmalab-bench` puts them in docs/performance.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use dmalab_abi as abi;
use dmalab_device::memory::{Dir, DmaMemory};
use dmalab_device::testing::{desc, Rig, DATA_BASE};

/// Room for two batches in flight (a ring of n entries holds n - 1).
const RING: u32 = 512;
const SRC: u64 = DATA_BASE;
const DST: u64 = DATA_BASE + (64 << 20);
const BATCH: u32 = 128;

/// Runs COPY descriptors of `len` bytes for about `budget`; returns (bytes/s, descriptors/s).
/// Two batches are kept in flight (the next is handed over before waiting for the last), as a
/// driver that keeps its ring full does: what is measured is the engine's throughput, not the
/// round trip of one batch plus the thread wake-ups around it.
fn engine(
    rig: &Rig,
    ring: &mut dmalab_device::testing::Ring,
    len: u32,
    budget: Duration,
) -> (f64, f64) {
    let (src, dst) = (SRC, DST);
    rig.prefill(ring, &desc(abi::OP_COPY, 0, len, src, dst));
    // One interrupt per batch (moderation by count), and the "driver" sleeps until it arrives.
    rig.write32(abi::REG_IRQ_COALESCE, BATCH);
    let mut irqs = rig.irq.count(ring.q as u16);
    let mut wait = |rig: &Rig, ring: &mut dmalab_device::testing::Ring| {
        irqs += 1;
        assert_eq!(rig.wait_batch_irq(ring, BATCH, irqs), BATCH);
    };
    rig.doorbell(ring, BATCH); // warm up
    wait(rig, ring);
    let t = Instant::now();
    rig.doorbell(ring, BATCH);
    let mut n = 0u64;
    while t.elapsed() < budget {
        rig.doorbell(ring, BATCH);
        wait(rig, ring);
        n += u64::from(BATCH);
    }
    wait(rig, ring);
    n += u64::from(BATCH);
    let s = t.elapsed().as_secs_f64();
    (n as f64 * f64::from(len) / s, n as f64 / s)
}

/// memcpy of `len` bytes between the very buffers the engine copies (same guest memory, same
/// addresses, so page size, alignment and cache behaviour are the same); best of three rounds.
fn memcpy(rig: &Rig, len: usize, budget: Duration) -> f64 {
    let view = rig.maps.view();
    let src = view.slices(SRC, len as u64, Dir::FromGuest).unwrap()[0];
    let dst = view.slices(DST, len as u64, Dir::ToGuest).unwrap()[0];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < budget / 3 {
            for _ in 0..BATCH {
                // the same primitive the engine's copy ends in (a memmove)
                black_box(&src).copy_to_volatile_slice(black_box(dst));
            }
            n += u64::from(BATCH);
        }
        best = best.max(n as f64 * len as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let budget = Duration::from_millis(if quick { 50 } else { 1500 });
    let rig = Rig::new(1, 160 << 20);
    let mut ring = rig.setup_queue(0, RING);
    // `--profile LEN`: only the engine at LEN bytes for 10 s, for `perf record` (the per-descriptor
    // cost is what a profile of the whole run hides behind the large copies)
    let args: Vec<String> = std::env::args().collect();
    if let Some(len) = args.windows(2).find(|w| w[0] == "--profile").map(|w| &w[1]) {
        let len: u32 = len.parse().expect("--profile LEN: a length in bytes");
        let (bps, dps) = engine(&rig, &mut ring, len, Duration::from_secs(10));
        println!("{len} B: {:.0} MB/s, {dps:.0} descriptors/s", bps / 1e6);
        return;
    }
    println!(
        "{:>9} {:>14} {:>14} {:>8}",
        "size", "engine MB/s", "memcpy MB/s", "ratio"
    );
    let mut rows = Vec::new();
    for len in [4096u32, 65536, 1 << 20] {
        let (bps, _) = (0..3)
            .map(|_| engine(&rig, &mut ring, len, budget / 3))
            .fold((0.0, 0.0), |a: (f64, f64), b| (a.0.max(b.0), a.1.max(b.1)));
        let m = memcpy(&rig, len as usize, budget);
        println!(
            "{:>9} {:>14.0} {:>14.0} {:>7.0}%",
            len,
            bps / 1e6,
            m / 1e6,
            100.0 * bps / m
        );
        rows.push(serde_json::json!({
            "len": len, "engine_bytes_per_s": bps, "memcpy_bytes_per_s": m,
        }));
    }
    let (_, dps) = engine(&rig, &mut ring, 64, budget);
    println!("64-byte COPY descriptors: {dps:.0} per second");
    drop(rig);
    // Guest RAM on a file that can shrink (memory-backend-file) against a sealed memfd
    // (memory-backend-memfd): the same mmap'd copies, plus the per-access check of the cut
    // and of the thread's fault count (docs/reliability.md: unsealed backing files).
    println!(
        "{:>9} {:>14} {:>14} {:>8}",
        "size", "sealed MB/s", "unsealed MB/s", "ratio"
    );
    let mut backing = Vec::new();
    for len in [4096u32, 65536, 1 << 20] {
        let mut best = [0.0f64; 2];
        for (k, sealed) in [true, false].into_iter().enumerate() {
            let rig = Rig::on_memfd(1, 160 << 20, sealed);
            let mut ring = rig.setup_queue(0, RING);
            best[k] = (0..3)
                .map(|_| engine(&rig, &mut ring, len, budget / 3).0)
                .fold(0.0, f64::max);
        }
        println!(
            "{:>9} {:>14.0} {:>14.0} {:>7.0}%",
            len,
            best[0] / 1e6,
            best[1] / 1e6,
            100.0 * best[1] / best[0]
        );
        backing.push(serde_json::json!({
            "len": len, "sealed_bytes_per_s": best[0], "unsealed_bytes_per_s": best[1],
        }));
    }
    if !quick {
        // next to the workspace's target/, wherever cargo runs the bench from
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
        let json = serde_json::json!({
            "copy": rows, "descriptors_per_s_64b": dps, "backing": backing,
        });
        let written = std::fs::create_dir_all(&out)
            .and_then(|()| std::fs::write(out.join("engine.json"), format!("{json:#}\n")));
        match written {
            Ok(()) => println!("written to {}", out.join("engine.json").display()),
            Err(e) => eprintln!("cannot write {}: {e}", out.display()),
        }
    }
}
