//! Transfers that must succeed: every opcode, size, queue, scatter-gather, concurrency, batches,
//! the streaming self-test, and the plain throughput scenario.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Request};
use dmalab_report::*;

use crate::dev::Dev;
use crate::pattern::data;
use crate::report::report;

use super::verify::{ok_status, report_xfer, submit, verified, Outcome, OPS, SIZES};

/// Ladder steps 2 and 3: every opcode on queue 0 at a few sizes up to 64 KiB, one request at a
/// time, then 100 small COPYs in a row (more than a ring of a few dozen entries holds, so a
/// ring driver must wrap its rings and follow the completion phase).
pub(super) fn basic() -> Result<(), String> {
    let d = Dev::open(0)?;
    // A module under construction fails the same way every time (often after a timeout):
    // the first failure is reported and the scenario stops there.
    let one = |op, len, seed, scenario| {
        let o = verified(&d, op, 0, len, 0, seed, 0);
        report_xfer(&o, scenario);
        if o.verified {
            Ok(())
        } else {
            Err(format!(
                "stopped after the first failed transfer ({scenario})"
            ))
        }
    };
    for (i, &len) in [1usize, 100, 4096, 65536].iter().enumerate() {
        for op in OPS {
            one(op, len, (i * 7) as u32 + u32::from(op), "basic")?;
        }
    }
    for i in 0..100 {
        one(abi::OP_COPY, 512, 1000 + i, "basic_wrap")?;
    }
    Ok(())
}

/// Ladder step 4: every opcode at 4 KiB on every queue the driver uses, one at a time.
pub(super) fn queues() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues.clamp(1, abi::MAX_QUEUES as u32) as u8;
    for q in 0..nq {
        for op in OPS {
            let o = verified(&d, op, q, 4096, 0, u32::from(q) * 10 + u32::from(op), 0);
            report_xfer(&o, "queues");
            if !o.verified {
                return Err("stopped after the first failed transfer (queues)".into());
            }
        }
    }
    Ok(())
}

pub(super) fn transfers() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    let mut n = 0u32;
    for &op in &OPS {
        for &len in &SIZES {
            let o = verified(&d, op, (n as usize % nq) as u8, len, 0, n, 0);
            report_xfer(&o, "transfers");
            if !o.verified {
                // the first failure is the one to read; a broken driver would otherwise make
                // every later request wait out its timeout too
                return Ok(());
            }
            n += 1;
        }
    }
    // a COPY checked a second way: the device's CRC of the destination equals the guest's
    let src = data(65_537, 99);
    let mut dst = vec![0u8; src.len()];
    let mut c = Request {
        opcode: abi::OP_COPY,
        len: src.len() as u32,
        src: src.as_ptr() as u64,
        dst: dst.as_mut_ptr() as u64,
        ..Default::default()
    };
    let e = submit(&d, &mut c);
    let mut k = Request {
        opcode: abi::OP_CHECKSUM,
        len: dst.len() as u32,
        src: dst.as_ptr() as u64,
        ..Default::default()
    };
    let e2 = submit(&d, &mut k);
    report(Report::CrcCheck(CrcCheck {
        errno: if e != 0 { e } else { e2 },
        device_crc: k.result,
        guest_crc: crc32c::crc32c(&src),
        matches: e == 0 && e2 == 0 && k.result == crc32c::crc32c(&src) && dst == src,
    }));
    Ok(())
}

pub(super) fn scatter_gather() -> Result<(), String> {
    let d = Dev::open(0)?;
    let mut n = 1000;
    for (len, nseg) in [
        (1usize << 20, 256u16),
        (65_536 + 13, 64),
        (4096, 16),
        (300, 256),
    ] {
        for op in [abi::OP_COPY, abi::OP_CHECKSUM, abi::OP_FILL, abi::OP_WRITE] {
            let o = verified(&d, op, 1, len, nseg, n, 0);
            report_xfer(&o, "sg");
            if !o.verified {
                // as in `transfers`: stop at the first failure
                return Ok(());
            }
            n += 1;
        }
    }
    Ok(())
}

/// Several threads on every queue at once, every byte checked.
pub(super) fn concurrent() -> Result<(), String> {
    threads_on_every_queue("concurrent", 2, 12, |d, t, i, nq| {
        let op = OPS[(t + i) % OPS.len()];
        let len = 1 + ((t * 7919 + i * 104_729) % 70_000);
        let seed = (t * 1000 + i) as u32;
        verified(d, op, (t % nq) as u8, len, 0, seed, (t as u64) << 20)
    })
}

/// Ring wrap and sharing: four threads on every queue at once, each 60 scatter-gather COPYs
/// (4 segments, 1 to 16 KiB): 240 requests a queue, so tail and phase wrap the 64-entry rings
/// more than three times, with up to four requests in flight on one queue (the host makes some
/// completions come out of order). Every byte is checked.
pub(super) fn wrap() -> Result<(), String> {
    threads_on_every_queue("wrap", 4, 60, |d, t, i, nq| {
        let len = 1024 + ((t * 7919 + i * 104_729) % 15_361);
        let seed = (t * 1000 + i) as u32;
        verified(d, abi::OP_COPY, (t % nq) as u8, len, 4, seed, 0)
    })
}

/// `per_queue` threads on every queue at once (thread `t` on queue `t % queues`), each running
/// `request(dev, t, i, queues)` for `i` in `0..per_thread` and stopping at its first failure,
/// which it reports as `scenario`'s; then one `Concurrent` report of them all.
fn threads_on_every_queue(
    scenario: &'static str,
    per_queue: usize,
    per_thread: usize,
    request: fn(&Dev, usize, usize, usize) -> Outcome,
) -> Result<(), String> {
    let nq = Dev::open(0)?.info()?.queues as usize;
    let threads = per_queue * nq;
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ok, bad) = (ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let d = Dev::open(0).expect("open");
                for i in 0..per_thread {
                    let o = request(&d, t, i, nq);
                    if o.verified {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        report_xfer(&o, scenario);
                        // this thread's first failure says it; the rest would wait too
                        break;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "worker thread panicked".to_string())?;
    }
    report(Report::Concurrent(Concurrent {
        threads: threads as u64,
        queues: nq as u64,
        verified: ok.load(Ordering::Relaxed),
        failed: bad.load(Ordering::Relaxed),
    }));
    Ok(())
}

/// `IOC_SUBMIT_BATCH`: 32 mixed requests over every queue, every byte checked; 8 MiB-sized
/// COPYs on one queue (more than its bounce pool: the driver must run them in waves, not wait
/// for pages its own batch holds); a bad request in the middle of a batch fails alone; three
/// threads' full batches on one queue at once (more than its ring slots); a batch over
/// `MAX_BATCH` is refused whole.
pub(super) fn batch() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    let mixed = (0..abi::MAX_BATCH)
        .map(|i| {
            let op = [abi::OP_COPY, abi::OP_FILL, abi::OP_CHECKSUM][i as usize % 3];
            let len = [1, 4096, 12_347, 65_536][i as usize % 4];
            batch_request(op, i as usize % nq, len, i)
        })
        .collect();
    run_batch(&d, mixed, "32 mixed requests on every queue")?;
    let big = (0..8)
        .map(|i| batch_request(abi::OP_COPY, 0, 1 << 20, 100 + i))
        .collect();
    run_batch(&d, big, "8 MiB of COPYs on one queue")?;
    batch_with_a_bad_request(&d, nq)?;
    batches_on_one_queue()?;
    batch_too_large(&d)
}

/// One request of a batch with its buffers: (request, source, destination).
type BatchRequest = (Request, Vec<u8>, Vec<u8>);

/// A batch request of `op` on `queue`, `len` bytes of pattern `i`; `src`/`dst` say only
/// whether the opcode has them (the buffers' addresses are filled in when it runs).
fn batch_request(op: u8, queue: usize, len: usize, i: u32) -> BatchRequest {
    let src = data(len, 500 + i);
    let r = Request {
        opcode: op,
        queue: queue as u8,
        len: len as u32,
        pattern: 0x5aa5_0000 | i,
        src: u64::from(op != abi::OP_FILL),
        dst: u64::from(op != abi::OP_CHECKSUM),
        timeout_ms: 30_000,
        ..Default::default()
    };
    (r, src, vec![0u8; len])
}

/// Runs `reqs` as one batch and checks every byte each produced; reports each request.
fn run_batch(d: &Dev, reqs: Vec<BatchRequest>, what: &str) -> Result<(), String> {
    let mut bufs = reqs;
    let mut rs: Vec<Request> = bufs
        .iter_mut()
        .map(|(r, src, dst)| Request {
            src: if r.src != 0 { src.as_ptr() as u64 } else { 0 },
            dst: if r.dst != 0 {
                dst.as_mut_ptr() as u64
            } else {
                0
            },
            ..*r
        })
        .collect();
    let done = d
        .submit_batch(&mut rs)
        .map_err(|e| format!("{what}: IOC_SUBMIT_BATCH: {e}"))?;
    let mut ok = 0;
    for (r, (_, src, dst)) in rs.iter().zip(bufs.iter()) {
        let verified = r.error == 0
            && ok_status(r.status)
            && match r.opcode {
                abi::OP_COPY => dst == src,
                abi::OP_FILL => {
                    let p = r.pattern.to_le_bytes();
                    dst.iter().enumerate().all(|(i, &b)| b == p[i % 4])
                }
                abi::OP_CHECKSUM => r.result == crc32c::crc32c(src),
                _ => false,
            };
        ok += u32::from(r.error == 0);
        report_xfer(
            &Outcome {
                req: *r,
                errno: r.error as i32,
                verified,
                detail: what.to_string(),
            },
            "batch",
        );
    }
    if done != ok {
        return Err(format!(
            "{what}: the driver says {done} succeeded, {ok} did"
        ));
    }
    Ok(())
}

/// A bad opcode in the middle of a batch fails alone, with EINVAL.
fn batch_with_a_bad_request(d: &Dev, nq: usize) -> Result<(), String> {
    let mut reqs: Vec<_> = (0..3)
        .map(|i| batch_request(abi::OP_COPY, 1 % nq, 4096, 200 + i))
        .collect();
    reqs[1].0.opcode = 0x77;
    let mut rs: Vec<Request> = reqs
        .iter_mut()
        .map(|(r, src, dst)| Request {
            src: src.as_ptr() as u64,
            dst: dst.as_mut_ptr() as u64,
            ..*r
        })
        .collect();
    let done = d
        .submit_batch(&mut rs)
        .map_err(|e| format!("bad request batch: {e}"))?;
    let errors: Vec<u32> = rs.iter().map(|r| r.error).collect();
    if done != 2 || errors != [0, libc::EINVAL as u32, 0] || reqs[0].2 != reqs[0].1 {
        return Err(format!(
            "a bad request in a batch: {done} done, errors {errors:?} (expected 2, [0, EINVAL, 0])"
        ));
    }
    Ok(())
}

/// Three full batches on one queue at once: 96 requests for 63 ring slots, so a batch must
/// ring what it posted rather than wait for a slot another batch holds unrung.
fn batches_on_one_queue() -> Result<(), String> {
    let rounds = std::thread::scope(|s| {
        let threads: Vec<_> = (0..3u32)
            .map(|t| {
                s.spawn(move || -> Result<(), String> {
                    let d = Dev::open(0)?;
                    for round in 0..3u32 {
                        let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..abi::MAX_BATCH)
                            .map(|i| (data(4096, 1000 * t + 100 * round + i), vec![0u8; 4096]))
                            .collect();
                        let mut rs: Vec<Request> = bufs
                            .iter_mut()
                            .map(|(src, dst)| Request {
                                opcode: abi::OP_COPY,
                                len: 4096,
                                src: src.as_ptr() as u64,
                                dst: dst.as_mut_ptr() as u64,
                                timeout_ms: 30_000,
                                ..Default::default()
                            })
                            .collect();
                        let done = d.submit_batch(&mut rs).map_err(|e| e.to_string())?;
                        let right = bufs.iter().filter(|(s, d)| s == d).count();
                        if done != abi::MAX_BATCH || right != abi::MAX_BATCH as usize {
                            let errors: Vec<u32> = rs.iter().map(|r| r.error).collect();
                            return Err(format!(
                                "thread {t} round {round}: {done} done, {right} right, errors {errors:?}"
                            ));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect::<Result<Vec<()>, String>>()
    });
    rounds.map_err(|e| format!("three batches on one queue: {e}"))?;
    Ok(())
}

/// More than `MAX_BATCH` requests: refused whole.
fn batch_too_large(d: &Dev) -> Result<(), String> {
    let mut too_many = vec![Request::default(); abi::MAX_BATCH as usize + 1];
    match d.submit_batch(&mut too_many) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => Err(format!(
            "a batch of {} requests: expected EINVAL, got {other:?}",
            abi::MAX_BATCH + 1
        )),
    }
}

/// `IOC_DMA_SELFTEST`: one mapping of our buffer kept across device operations, synced to the
/// CPU and back between them: 8 rounds of 64 KiB on every queue, then 3 of 1 MiB.
pub(super) fn selftest() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues;
    for (len, rounds, queues) in [(65536usize, 8, nq), (1 << 20, 3, 1)] {
        for q in 0..queues {
            let mut buf = vec![0u8; len];
            let (verified, errno) = match d.dma_selftest(&mut buf, rounds, q) {
                Ok(v) => (v, 0),
                Err(e) => (0, e.raw_os_error().unwrap_or(-1)),
            };
            report(Report::DmaSelfTest(DmaSelfTest {
                len: len as u32,
                rounds,
                verified,
                errno,
            }));
        }
    }
    Ok(())
}

/// `dmalab.ops` COPYs of `dmalab.len` bytes (defaults 300 and 4096) on queue 0, one at a time
/// from one thread: the oracle's instruction counts per request are measured on this.
pub(super) fn serial_copies() -> Result<(), String> {
    let param = |k: &str, d: u32| {
        crate::cmdline_param(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (ops, len) = (param("dmalab.ops", 300), param("dmalab.len", 4096));
    let d = Dev::open(0)?;
    let mut failed = 0u64;
    let t0 = Instant::now();
    for i in 0..ops {
        let o = verified(&d, abi::OP_COPY, 0, len as usize, 0, i, 0);
        failed += u64::from(!o.verified);
    }
    let secs = t0.elapsed().as_secs_f64();
    report(Report::Bench(Bench {
        op: "copy".into(),
        len: len.into(),
        depth: 1,
        ops: u64::from(ops) - failed,
        failed,
        seconds: secs,
        mb_per_s: f64::from(ops) * f64::from(len) / secs / 1e6,
        ops_per_s: f64::from(ops) / secs,
        device: "dmalab".into(),
        queues: 1,
        ..Default::default()
    }));
    Ok(())
}

/// Two COPYs on queue 0, the second posted 1 s after the first while the host holds the first
/// one's completion back (and writes it twice): each must get its own completion, by tag.
pub(super) fn overlap() -> Result<(), String> {
    let first = std::thread::spawn(|| -> Result<Outcome, String> {
        let d = Dev::open(0)?;
        Ok(verified(&d, abi::OP_COPY, 0, 4000, 0, 1, 0))
    });
    std::thread::sleep(Duration::from_millis(1000));
    let second = verified(&Dev::open(0)?, abi::OP_COPY, 0, 8192, 0, 2, 0);
    let first = first.join().map_err(|_| "thread panicked")??;
    report_xfer(&first, "overlap_first");
    report_xfer(&second, "overlap_second");
    Ok(())
}

/// Requests the device must refuse: the driver must turn each into a status, not a hang.
pub(super) fn errors() -> Result<(), String> {
    let d = Dev::open(0)?;
    let mem = d.info()?.mem_size;
    let src = data(4096, 1);
    let mut w = Request {
        opcode: abi::OP_WRITE,
        len: 4096,
        src: src.as_ptr() as u64,
        dev_offset: mem - 100,
        ..Default::default()
    };
    let e = submit(&d, &mut w);
    report(Report::Refused(Refused {
        case: "internal range".into(),
        queue: w.queue,
        tag: w.tag,
        errno: e,
        status: w.status,
    }));
    let mut bad = Request {
        opcode: 77,
        len: 16,
        ..Default::default()
    };
    let e = submit(&d, &mut bad);
    report(Report::Refused(Refused {
        case: "bad opcode (driver)".into(),
        queue: bad.queue,
        tag: bad.tag,
        errno: e,
        status: bad.status,
    }));
    let mut big = Request {
        opcode: abi::OP_FILL,
        len: abi::MAX_REQUEST + 1,
        ..Default::default()
    };
    let e = submit(&d, &mut big);
    report(Report::Refused(Refused {
        case: "too long (driver)".into(),
        queue: big.queue,
        tag: big.tag,
        errno: e,
        status: big.status,
    }));
    // the queue still works afterwards
    let o = verified(&d, abi::OP_COPY, 0, 4096, 0, 5, 0);
    report_xfer(&o, "errors");
    Ok(())
}

/// Throughput: COPY of 4 KiB and 1 MiB at queue depth 1 and 32.
pub(super) fn bench() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    for len in [4096usize, 1 << 20] {
        for depth in [1usize, 32] {
            let budget = Duration::from_secs(3);
            let count = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let t0 = Instant::now();
            let handles: Vec<_> = (0..depth)
                .map(|t| {
                    let (count, failed) = (count.clone(), failed.clone());
                    std::thread::spawn(move || {
                        let d = Dev::open(0).expect("open");
                        let src = data(len, t as u32);
                        let mut dst = vec![0u8; len];
                        while t0.elapsed() < budget {
                            let mut r = Request {
                                opcode: abi::OP_COPY,
                                queue: (t % nq) as u8,
                                len: len as u32,
                                src: src.as_ptr() as u64,
                                dst: dst.as_mut_ptr() as u64,
                                timeout_ms: 30_000,
                                ..Default::default()
                            };
                            if submit(&d, &mut r) == 0 && ok_status(r.status) {
                                count.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if dst != src {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
            let secs = t0.elapsed().as_secs_f64();
            let n = count.load(Ordering::Relaxed);
            report(Report::Bench(Bench {
                op: "copy".into(),
                len: len as u64,
                depth: depth as u64,
                ops: n,
                failed: failed.load(Ordering::Relaxed),
                seconds: secs,
                mb_per_s: n as f64 * len as f64 / secs / 1e6,
                ops_per_s: n as f64 / secs,
                device: "dmalab".into(),
                queues: nq.min(depth) as u64,
                ..Default::default()
            }));
        }
    }
    Ok(())
}
