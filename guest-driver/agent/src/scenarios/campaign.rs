//! A seeded fault campaign: requests drawn from (seed, number), run in units with fault epochs.

use std::time::Instant;

use dmalab_abi::{self as abi, Request};
use dmalab_report::*;

use crate::dev::Dev;
use crate::kmod::bound_device;
use crate::pattern::data;
use crate::report::report;

use super::verify::{ok_status, submit, verified_with, xfer_of, Outcome, FAULT_TIMEOUT_MS, OPS};

/// A seeded fault campaign, cut into units of `dmalab.unit` requests (default 20): before each
/// unit the agent writes its number to the device's `FAULT_EPOCH`, so the faults a unit meets
/// depend only on the seed and the unit, and any VM can run any unit (`--shard`, `--jobs`,
/// resume). Request `i`'s opcode and size follow from the seed and `i`; it runs on queue
/// `i % queues`. Concurrent (the default): one thread per queue, each running its queue's
/// requests in order, so requests are in flight on every queue at once. `dmalab.mode=serial`:
/// one request at a time, for exact reproduction. `dmalab.units=a-b` runs units a..b only.
pub(super) fn campaign() -> Result<(), String> {
    let param = |k: &str, d: u64| {
        crate::cmdline_param(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (ops, seed, unit_ops) = (
        param("dmalab.ops", 200),
        param("dmalab.seed", 1),
        param("dmalab.unit", 20).max(1),
    );
    let units = ops.div_ceil(unit_ops);
    // "a-b,c-d": units a..b and c..d (the host's shard, or what a resumed run still lacks)
    let list: Vec<std::ops::Range<u64>> = match crate::cmdline_param("dmalab.units") {
        None => std::iter::once(0..units).collect(),
        Some(v) => v
            .split(',')
            .map(|r| {
                let (a, b) = r.split_once('-')?;
                Some(a.parse().ok()?..b.parse::<u64>().ok()?.min(units))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| format!("dmalab.units={v}: expected ranges a-b,c-d"))?,
    };
    let serial = crate::cmdline_param("dmalab.mode").as_deref() == Some("serial");
    // Another process leaves a secret in the driver's buffers first: a READ the device
    // shortens silently must not hand it back (the verdict fails a request that does).
    super::faults::seed_secret(4096, 2);
    let d = Dev::open(0)?;
    let nq = u64::from(d.info()?.queues.max(1));
    let bar =
        crate::pci_user::MappedBar::open(&format!("/sys/bus/pci/devices/{}", bound_device()?), 0)?;
    let unit_range = |u: u64| u * unit_ops..((u + 1) * unit_ops).min(ops);
    let total: u64 = list
        .iter()
        .flat_map(|r| r.clone().map(|u| unit_range(u).count() as u64))
        .sum();
    let (mut done, mut failed) = (0u64, 0u64);
    let t0 = Instant::now();
    for u in list.into_iter().flatten() {
        bar.write::<u32>(abi::REG_FAULT_EPOCH, u as u32);
        let range = unit_range(u);
        failed += if serial {
            range.clone().map(|i| campaign_op(&d, seed, i, nq)).sum()
        } else {
            std::thread::scope(|s| {
                let lanes: Vec<_> = (0..nq)
                    .map(|q| {
                        let lane: Vec<u64> = range.clone().filter(|i| i % nq == q).collect();
                        s.spawn(move || match Dev::open(0) {
                            Ok(d) => lane.iter().map(|&i| campaign_op(&d, seed, i, nq)).sum(),
                            Err(_) => lane.len() as u64,
                        })
                    })
                    .collect();
                lanes
                    .into_iter()
                    .map(|h| h.join().unwrap_or(1))
                    .sum::<u64>()
            })
        };
        done += range.clone().count() as u64;
        report(Report::UnitDone(UnitDone {
            unit: u,
            first: range.start,
            ops: range.count() as u64,
        }));
        report(Report::Progress(Progress {
            done,
            total,
            failed,
            ms: t0.elapsed().as_millis() as u64,
        }));
    }
    Ok(())
}

/// splitmix64, for drawing a campaign request's parameters from (seed, request number).
pub(super) fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Campaign request `i`: its opcode and size drawn from (seed, i), queue `i % nq`. A WRITE or
/// READ runs as a WRITE + READ pair at the queue's own stretch of internal memory (the only
/// way to verify either); both halves are reported, each naming the other. Returns the number
/// of reported requests that failed.
pub(super) fn campaign_op(d: &Dev, seed: u64, i: u64, nq: u64) -> u64 {
    let mut s = seed ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03);
    let op = OPS[(splitmix(&mut s) % OPS.len() as u64) as usize];
    let len = [64usize, 512, 4096, 12_347, 65_536][(splitmix(&mut s) % 5) as usize];
    let queue = (i % nq) as u8;
    let outcomes = match op {
        abi::OP_WRITE | abi::OP_READ => {
            write_read_pair(d, queue, len, i as u32, u64::from(queue) << 20)
        }
        _ => vec![verified_with(
            d,
            op,
            queue,
            len,
            0,
            i as u32,
            0,
            FAULT_TIMEOUT_MS,
        )],
    };
    let tags: Vec<u32> = outcomes.iter().map(|o| o.req.tag).collect();
    let mut failed = 0;
    for (n, o) in outcomes.iter().enumerate() {
        let mut x = xfer_of(o, "campaign");
        x.op_index = Some(i);
        x.partner_tag = (tags.len() == 2).then(|| tags[1 - n]);
        x.detail = format!("op {i} {}", x.detail).trim_end().to_string();
        failed += u64::from(!o.verified);
        report(Report::Xfer(x));
    }
    failed
}

/// WRITE `len` bytes to internal memory at `dev_off`, READ them back: the WRITE's outcome and,
/// if it succeeded, the READ's; both are verified only when the bytes came back right.
pub(super) fn write_read_pair(
    d: &Dev,
    queue: u8,
    len: usize,
    seed: u32,
    dev_off: u64,
) -> Vec<Outcome> {
    let src = data(len, seed);
    let mut dst = vec![0u8; len];
    let base = Request {
        queue,
        len: len as u32,
        dev_offset: dev_off,
        timeout_ms: FAULT_TIMEOUT_MS,
        ..Default::default()
    };
    let mut w = Request {
        opcode: abi::OP_WRITE,
        src: src.as_ptr() as u64,
        ..base
    };
    let we = submit(d, &mut w);
    if we != 0 || !ok_status(w.status) {
        let detail = format!("status {}", w.status);
        return vec![Outcome {
            req: w,
            errno: we,
            verified: false,
            detail,
        }];
    }
    let mut r = Request {
        opcode: abi::OP_READ,
        dst: dst.as_mut_ptr() as u64,
        ..base
    };
    let re = submit(d, &mut r);
    let verified = re == 0 && ok_status(r.status) && dst == src;
    let detail = if verified {
        String::new()
    } else if let Some(n) = super::faults::stale_secret(&dst, 0) {
        format!("read back: {n} of {len} {STALE_DETAIL}")
    } else {
        match dst.iter().zip(src.iter()).position(|(a, b)| a != b) {
            Some(at) => format!(
                "read back: status {}, first differing byte at {at}",
                r.status
            ),
            None => format!("read back: status {}", r.status),
        }
    };
    [(w, 0), (r, re)]
        .into_iter()
        .map(|(req, errno)| Outcome {
            req,
            errno,
            verified,
            detail: detail.clone(),
        })
        .collect()
}
