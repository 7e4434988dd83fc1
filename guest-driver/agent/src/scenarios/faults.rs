//! Scenarios the host injects faults into: stalls, error statuses, late and duplicated
//! completions, the DMA misuse variants the oracle must catch.

use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Request};
use dmalab_report::*;

use crate::dev::{self, Dev};
use crate::kmod::{module_params, module_symbols, unload};
use crate::pattern::data;
use crate::report::report;

use super::transfers::selftest;
use super::verify::{
    copy_request, ok_status, report_xfer, submit, verified, verified_with, Outcome,
    FAULT_TIMEOUT_MS,
};

/// The host stalls queue 1's first request (queue `dmalab.stall_queue`: 0 for the tutorial's
/// step 2, whose driver has the direct block only): it must come back within its timeout (2 s)
/// as ETIMEDOUT, and the queue must work again afterwards (the driver reset it). The request
/// runs in a thread, so a driver that never times out is reported instead of hanging the agent.
pub(super) fn stall_recovery() -> Result<(), String> {
    let queue: u8 = crate::cmdline_param("dmalab.stall_queue")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let (tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    let waiter = std::thread::spawn(move || {
        let errno = {
            let Ok(d) = Dev::open(0) else {
                return;
            };
            verified_with(&d, abi::OP_COPY, queue, 4096, 0, 1, 0, 2000).errno
            // the device file closes here, before the answer goes out: an open file holds
            // the module, and the `unload` after this scenario must not find it held (on a
            // loaded machine this thread could be descheduled between answering and closing,
            // and rmmod failed with EAGAIN)
        };
        let _ = tx.send(errno);
    });
    let answer = rx.recv_timeout(Duration::from_secs(20)).ok();
    if answer.is_some() {
        // it has answered: it ends at once
        let _ = waiter.join();
    }
    report(Report::Stalled(Stalled {
        returned: answer.is_some(),
        errno: answer.unwrap_or(0),
        ms: t.elapsed().as_millis() as u64,
    }));
    if answer.is_none() {
        return Err("the stalled request never returned".into());
    }
    let o = verified_with(&Dev::open(0)?, abi::OP_COPY, queue, 4096, 0, 2, 0, 5000);
    report_xfer(&o, "after_stall");
    Ok(())
}

/// The host fails every 64 KiB request on queue 0 (error_status): 40 of them take more bounce
/// memory in all than the queue has, so a driver that does not give a failed request's buffers
/// back runs dry; a request after them must still succeed.
pub(super) fn error_paths() -> Result<(), String> {
    let d = Dev::open(0)?;
    for i in 0..40 {
        let o = verified_with(&d, abi::OP_COPY, 0, 65536, 0, i, 0, 2000);
        report_xfer(&o, "error_paths");
    }
    let o = verified_with(&d, abi::OP_COPY, 0, 60000, 0, 99, 0, 5000);
    report_xfer(&o, "after_errors");
    Ok(())
}

/// The driver's lines of `/proc/interrupts`: which vectors it registered and how often each
/// fired.
pub(super) fn interrupts() -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/interrupts").map_err(|e| e.to_string())?;
    let lines = text
        .lines()
        .filter(|l| l.contains("dmalab"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let irq = words.next()?.trim_end_matches(':').to_string();
            let count = words.clone().map_while(|w| w.parse::<u64>().ok()).sum();
            let name = l.split_whitespace().last()?.to_string();
            Some((irq, count, name))
        })
        .collect();
    report(Report::Interrupts(Interrupts { lines }));
    Ok(())
}

/// Loads the module with `dma_bug=dmalab.bug` and makes that bug happen while the device owns
/// the memory (the host delays completions so the ownership lasts): the request that owns the
/// memory is reported as scenario `owner`, any request that triggers the bug as `trigger`.
pub(super) fn dma_bug(module: &str) -> Result<(), String> {
    let bug: u32 = crate::cmdline_param("dmalab.bug")
        .and_then(|v| v.parse().ok())
        .ok_or("dma_bug needs dmalab.bug=N")?;
    unload()?;
    dev::insmod_with(module, &format!("dma_bug={bug} {}", module_params()))?;
    module_symbols();
    let d = Dev::open(0)?;
    match bug {
        // the bug acts on the owner's own pages, right after its doorbell
        1 | 2 | 4 => {
            let o = verified(&d, abi::OP_COPY, 0, 4000, 0, 1, 0);
            report_xfer(&o, "owner");
        }
        // zero-copy: the owner times out and the driver unmaps and unpins the application's
        // pages without stopping the device (an unmap before the completion); the
        // application, told the request is over, writes its buffer again
        3 if d.info()?.dma_mode == abi::DMA_MODE_ZERO_COPY => {
            let src = data(4096, 1);
            let mut dst = vec![0u8; 4096];
            let mut req = copy_request(&src, &mut dst, 300);
            let errno = submit(&d, &mut req);
            let detail = format!("path {}", req.path);
            report_xfer(
                &Outcome {
                    req,
                    errno,
                    verified: false,
                    detail,
                },
                "owner",
            );
            for b in dst.iter_mut() {
                // SAFETY: `b` is a valid, exclusive reference; volatile so the stores happen.
                unsafe { std::ptr::write_volatile(b, 0x5a) };
            }
            // the device's late completion lands meanwhile (the host delays it by a second)
            std::thread::sleep(Duration::from_millis(1500));
            let t = verified(&d, abi::OP_COPY, 0, 8192, 0, 2, 0);
            report_xfer(&t, "trigger");
        }
        // the owner times out (the driver frees its pages without stopping the device), the
        // next request reuses them
        3 => {
            let o = verified_with(&d, abi::OP_COPY, 0, 4000, 0, 1, 0, 300);
            report_xfer(&o, "owner");
            let t = verified(&d, abi::OP_COPY, 0, 8192, 0, 2, 0);
            report_xfer(&t, "trigger");
        }
        // a second request takes the pages the first (still in flight) gave back too early
        5 => {
            let owner = std::thread::spawn(|| -> Result<Outcome, String> {
                let d = Dev::open(0)?;
                Ok(verified(&d, abi::OP_COPY, 0, 4000, 0, 1, 0))
            });
            // long enough for the owner to have posted on a slow, shared machine; the host
            // holds its completion back far longer
            std::thread::sleep(Duration::from_millis(1000));
            let t = verified(&d, abi::OP_COPY, 0, 8192, 0, 2, 0);
            let o = owner.join().map_err(|_| "owner thread panicked")??;
            report_xfer(&o, "owner");
            report_xfer(&t, "trigger");
        }
        // the driver reads the device's result without syncing the mapping for the CPU
        11 => selftest()?,
        other => return Err(format!("no DMA bug {other}")),
    }
    drop(d);
    unload()
}

/// For fault tests: six 4000-byte COPYs on queue 0 with a 5 s timeout, each reported with what the
/// driver said, then one verified COPY on every queue to show the device is usable again.
pub(super) fn probe() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    for i in 0..6u32 {
        // 4000 bytes: a size no other scenario uses, so rules can single the probes out.
        let src = data(4000, i);
        let mut dst = vec![0u8; 4000];
        let mut r = Request {
            opcode: abi::OP_COPY,
            len: 4000,
            src: src.as_ptr() as u64,
            dst: dst.as_mut_ptr() as u64,
            timeout_ms: FAULT_TIMEOUT_MS,
            ..Default::default()
        };
        let errno = submit(&d, &mut r);
        let o = Outcome {
            req: r,
            errno,
            verified: errno == 0 && ok_status(r.status) && dst == src,
            detail: String::new(),
        };
        report_xfer(&o, "probe");
    }
    for q in 0..nq {
        let o = verified(&d, abi::OP_COPY, q as u8, 8192, 0, 500 + q as u32, 0);
        report_xfer(&o, "probe_after");
    }
    Ok(())
}

/// Queue resets after a timeout, with the late completion still to come: on every queue at
/// once, `dmalab.rounds` times (default 5), a 4000-byte COPY with a 200 ms timeout (the host
/// delays 4000-byte completions longer), then a verified COPY on the same queue. Each late one
/// must time out (the driver resets the queue), and the queue must work right after.
pub(super) fn timeout_late() -> Result<(), String> {
    let rounds: u32 = crate::cmdline_param("dmalab.rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let nq = Dev::open(0)?.info()?.queues as usize;
    for round in 0..rounds {
        let handles: Vec<_> = (0..nq)
            .map(|q| {
                std::thread::spawn(move || -> Result<(Outcome, Outcome), String> {
                    let d = Dev::open(0)?;
                    let seed = round * 16 + q as u32;
                    let late = verified_with(&d, abi::OP_COPY, q as u8, 4000, 0, seed, 0, 200);
                    let after = verified(&d, abi::OP_COPY, q as u8, 8192, 0, seed + 1000, 0);
                    Ok((late, after))
                })
            })
            .collect();
        for h in handles {
            let (late, after) = h.join().map_err(|_| "thread panicked".to_string())??;
            report_xfer(&late, "late");
            report_xfer(&after, "after_late");
        }
    }
    Ok(())
}

/// What the other process writes: no zero byte, so a cleared buffer never looks like it.
const SECRET: &[u8; 16] = b"dmalab-SECRET-42";

/// Bytes of `buf` past `skip` that are the secret's at their position.
fn secret_bytes(buf: &[u8], skip: usize) -> usize {
    buf.iter()
        .enumerate()
        .skip(skip)
        .filter(|&(i, &b)| b == SECRET[i % SECRET.len()])
        .count()
}

/// Another process (a child of the agent) runs COPYs of `SECRET` on every queue: afterwards
/// the driver's buffers for data the device writes have held the secret. Returns how many
/// COPYs it completed.
pub(super) fn seed_secret(len: usize, rounds: u32) -> u32 {
    // SAFETY: fork(2); the agent runs no other thread here, and the child only opens the
    // device, submits and leaves with _exit (no destructor, no shared state).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let done = (|| -> Result<u32, String> {
            let d = Dev::open(0)?;
            let nq = d.info()?.queues;
            let src: Vec<u8> = (0..len).map(|i| SECRET[i % SECRET.len()]).collect();
            let mut n = 0;
            for q in 0..nq {
                for _ in 0..rounds {
                    let mut dst = vec![0u8; len];
                    let mut r = Request {
                        queue: q as u8,
                        ..copy_request(&src, &mut dst, FAULT_TIMEOUT_MS)
                    };
                    n += u32::from(submit(&d, &mut r) == 0 && dst == src);
                }
            }
            Ok(n)
        })()
        .unwrap_or(0);
        // SAFETY: leaves the child at once, as fork's child must.
        unsafe { libc::_exit(done.min(255) as i32) };
    }
    if pid < 0 {
        return 0;
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u32
    } else {
        0
    }
}

/// Bytes of the secret among a READ's result past what the device really moved, if the read
/// hands them back ([`seed_secret`] ran first): `Some(count)` when more than a quarter of them
/// are, else `None`.
pub(super) fn stale_secret(dst: &[u8], moved: usize) -> Option<usize> {
    let tail = dst.len().saturating_sub(moved);
    let n = secret_bytes(dst, moved);
    (tail > 0 && n * 4 > tail).then_some(n)
}

/// The stale-bytes rule (docs/contract.md#4--faults): another process seeds the driver's
/// buffers with a secret, then READs of 12 KiB on queue 0 (of data a WRITE on queue 1 put in
/// the device) that the device silently shortens to 16 bytes (the host's fault rule: `short_transfer`, `reported = false`, on READs). Whatever
/// else the caller gets back, it must not be the other process's bytes.
pub(super) fn stale_bytes() -> Result<(), String> {
    const LEN: usize = 12288;
    const MOVED: usize = 16;
    const READS: u32 = 8;
    // seeded with COPYs of the READs' own size: below the auto mode's `zero_copy_min`, both
    // take the bounce pool (a larger seed would go zero-copy and leave no secret in the pool)
    let seeded = seed_secret(LEN, 4);
    let d = Dev::open(0)?;
    let src = data(LEN, 7);
    // on another queue: its buffers are not queue 0's, which keep only the secret
    let mut w = Request {
        opcode: abi::OP_WRITE,
        queue: 1,
        len: LEN as u32,
        src: src.as_ptr() as u64,
        timeout_ms: FAULT_TIMEOUT_MS,
        ..Default::default()
    };
    let e = submit(&d, &mut w);
    if e != 0 || !ok_status(w.status) {
        return Err(format!(
            "the WRITE that gives the READs their data failed: errno {e}, status {}",
            w.status
        ));
    }
    let (mut completed, mut leaked, mut first) = (0, 0, None);
    for _ in 0..READS {
        let mut dst = vec![0u8; LEN];
        let mut r = Request {
            opcode: abi::OP_READ,
            queue: 0,
            len: LEN as u32,
            dst: dst.as_mut_ptr() as u64,
            timeout_ms: FAULT_TIMEOUT_MS,
            ..Default::default()
        };
        if submit(&d, &mut r) != 0 || !ok_status(r.status) {
            continue;
        }
        completed += 1;
        if let Some(n) = stale_secret(&dst, MOVED) {
            leaked += 1;
            first.get_or_insert(n);
        }
    }
    report(Report::StaleBytes(StaleBytes {
        reads: READS,
        completed,
        leaked,
        secret_bytes: first.unwrap_or(0) as u32,
        len: LEN as u32,
        seeded,
    }));
    Ok(())
}
