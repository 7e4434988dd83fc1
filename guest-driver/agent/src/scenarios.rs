//! The scenarios the host can ask for. Each reports facts as JSON lines; an `Err` means the
//! scenario could not run to its end (the host treats that as a failure).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Request};

use crate::dev::{self, Dev};
use crate::pattern::data;
use crate::report::report;
use dmalab_report::*;

/// Request timeout where faults may swallow completions: long enough that a slow, shared host
/// never turns into a false timeout, short enough to keep fault tests quick.
const FAULT_TIMEOUT_MS: u32 = 5000;

pub fn run(name: &str, module: &str) -> Result<(), String> {
    match name {
        "load" => load(module),
        "bind" => bind(module),
        "basic" => basic(),
        "queues" => queues(),
        "kmemleak_clear" => {
            dev::kmemleak_clear();
            Ok(())
        }
        "kmemleak" => {
            let found = kmemleak_suspects();
            report(Report::Leaks(Leaks {
                suspects: found.as_ref().map(|f| f.0),
                first: found.map(|f| f.1).unwrap_or_default(),
            }));
            Ok(())
        }
        "stall_recovery" => stall_recovery(),
        "error_paths" => error_paths(),
        "interrupts" => interrupts(),
        "unload" => unload(),
        "firstlight" => {
            load(module)?;
            info()?;
            dma_api("loaded");
            unload()
        }
        "info" => info(),
        "transfers" => transfers(),
        "sg" => scatter_gather(),
        "concurrent" => concurrent(),
        "batch" => batch(),
        "selftest" => selftest(),
        "reload" => reload(module),
        "bench" => bench(),
        "bench_matrix" => crate::bench::matrix(module),
        "stats" => stats(),
        "errors" => errors(),
        "reset" => reset(),
        "unbind_busy" => unbind_busy(),
        "unbind_repeat" => unbind_repeat(),
        "timeout_late" => timeout_late(),
        "probe" => probe(),
        "removal" => removal(),
        "campaign" => campaign(),
        "unbind_stalled" => unbind_stalled(),
        "probe_unwind" => probe_unwind(module),
        "dma_bug" => dma_bug(module),
        "serial_copies" => serial_copies(),
        "overlap" => overlap(),
        "hostile" => {
            crate::hostile::hostile(&bound_device()?)?;
            let o = verified(&Dev::open(0)?, abi::OP_COPY, 0, 65536, 0, 5, 0);
            report_xfer(&o, "after_hostile");
            Ok(())
        }
        other => Err(format!("unknown scenario '{other}'")),
    }
}

/// The request's status word says OK.
fn ok_status(status: u32) -> bool {
    status == u32::from(abi::Status::Ok.raw())
}

fn loaded() -> bool {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("dmalab "))
}

fn load(module: &str) -> Result<(), String> {
    if loaded() {
        return Ok(());
    }
    let t = Instant::now();
    let r = dev::insmod_with(module, &module_params());
    report(Report::Insmod(Insmod {
        ok: r.is_ok(),
        error: r.as_ref().err().map_or("", |e| e).to_string(),
        us: t.elapsed().as_micros() as u64,
    }));
    r?;
    module_symbols();
    // the misc device appears when probe finishes (synchronously for a present device)
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new("/dev/dmalab0").exists() {
        if Instant::now() > deadline {
            return Err(
                "driver loaded but /dev/dmalab0 did not appear (probe failed? see kernel log)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Ladder step 1: loads the module (which need not create `/dev/dmalab0`), reports the driver
/// bound to the device and its command register, unloads it and reports again.
fn bind(module: &str) -> Result<(), String> {
    let bdf = dev::dmalab_devices()
        .into_iter()
        .next()
        .ok_or("no dmalab device on the PCI bus")?;
    let look = |when: &str| {
        let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
            .ok()
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
        let config =
            std::fs::read(format!("/sys/bus/pci/devices/{bdf}/config")).unwrap_or_default();
        let command = config
            .get(4..6)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
        report(Report::Bound(Bound {
            when: when.into(),
            bdf: bdf.clone(),
            driver,
            command,
        }));
    };
    let t = Instant::now();
    let r = dev::insmod_with(module, &module_params());
    report(Report::Insmod(Insmod {
        ok: r.is_ok(),
        error: r.as_ref().err().map_or("", |e| e).to_string(),
        us: t.elapsed().as_micros() as u64,
    }));
    r?;
    module_symbols();
    look("loaded");
    dma_api("loaded");
    unload()?;
    look("unloaded");
    Ok(())
}

/// Ladder steps 2 and 3: every opcode on queue 0 at a few sizes up to 64 KiB, one request at a
/// time, then 100 small COPYs in a row (more than a ring of a few dozen entries holds, so a
/// ring driver must wrap its rings and follow the completion phase).
fn basic() -> Result<(), String> {
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
fn queues() -> Result<(), String> {
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

/// The host stalls queue 1's first request: it must come back within its timeout (2 s) as
/// ETIMEDOUT, and the queue must work again afterwards (the driver reset it). The request runs
/// in a thread, so a driver that never times out is reported instead of hanging the agent.
fn stall_recovery() -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let Ok(d) = Dev::open(0) else {
            return;
        };
        let o = verified_with(&d, abi::OP_COPY, 1, 4096, 0, 1, 0, 2000);
        let _ = tx.send(o.errno);
    });
    let answer = rx.recv_timeout(Duration::from_secs(20)).ok();
    report(Report::Stalled(Stalled {
        returned: answer.is_some(),
        errno: answer.unwrap_or(0),
        ms: t.elapsed().as_millis() as u64,
    }));
    if answer.is_none() {
        return Err("the stalled request never returned".into());
    }
    let o = verified_with(&Dev::open(0)?, abi::OP_COPY, 1, 4096, 0, 2, 0, 5000);
    report_xfer(&o, "after_stall");
    Ok(())
}

/// The host fails every 64 KiB request on queue 0 (error_status): 40 of them take more bounce
/// memory in all than the queue has, so a driver that does not give a failed request's buffers
/// back runs dry; a request after them must still succeed.
fn error_paths() -> Result<(), String> {
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
fn interrupts() -> Result<(), String> {
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

/// Reports where the module's functions were loaded (for naming guest PCs on the host).
fn module_symbols() {
    let all = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let symbols: Vec<(u64, String)> = all
        .lines()
        .filter(|l| l.ends_with("[dmalab]"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
        })
        .collect();
    report(Report::ModuleSymbols(ModuleSymbols {
        module: "dmalab".into(),
        symbols,
    }));
}

/// Two COPYs on queue 0, the second posted 1 s after the first while the host holds the first
/// one's completion back (and writes it twice): each must get its own completion, by tag.
fn overlap() -> Result<(), String> {
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

/// `dmalab.ops` COPYs of `dmalab.len` bytes (defaults 300 and 4096) on queue 0, one at a time
/// from one thread: the oracle's instruction counts per request are measured on this.
fn serial_copies() -> Result<(), String> {
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

/// Loads the module with `dma_bug=dmalab.bug` and makes that bug happen while the device owns
/// the memory (the host delays completions so the ownership lasts): the request that owns the
/// memory is reported as scenario `owner`, any request that triggers the bug as `trigger`.
fn dma_bug(module: &str) -> Result<(), String> {
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

/// `IOC_DMA_SELFTEST`: one mapping of our buffer kept across device operations, synced to the
/// CPU and back between them: 8 rounds of 64 KiB on every queue, then 3 of 1 MiB.
fn selftest() -> Result<(), String> {
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

/// Module parameters from the kernel command line: `dmalab_module.NAME=VALUE` becomes
/// `NAME=VALUE` (what modprobe does for `module.param`; the agent loads with finit_module).
pub fn module_params() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("dmalab_module."))
        .collect::<Vec<_>>()
        .join(" ")
}

fn unload() -> Result<(), String> {
    if !loaded() {
        return Ok(());
    }
    let r = dev::rmmod("dmalab");
    report(Report::Rmmod(Rmmod {
        ok: r.is_ok(),
        error: r.as_ref().err().map_or("", |e| e).to_string(),
        still_loaded: loaded(),
    }));
    dma_api("unloaded");
    r
}

fn dma_api(when: &str) {
    let entries = dev::dmalab_devices()
        .first()
        .and_then(|bdf| dev::dma_api_entries(bdf));
    report(Report::DmaApi(DmaApi {
        when: when.to_string(),
        errors: dev::dma_api_errors(),
        entries,
    }));
}

fn info() -> Result<(), String> {
    let d = Dev::open(0)?;
    let i = d.info()?;
    report(Report::Info(Info {
        magic: i.magic,
        version: i.version,
        queues: i.queues,
        vectors: i.vectors,
        irq_mode: match i.irq_mode {
            abi::IRQ_MODE_MSIX => "msix",
            abi::IRQ_MODE_MSI => "msi",
            _ => "intx",
        }
        .to_string(),
        ring_size: i.ring_size,
        dma_mask_bits: i.dma_mask_bits,
        mem_size: i.mem_size,
        bdf: i.bdf,
        dma_mode: i.dma_mode,
        zero_copy_min: i.zero_copy_min,
    }));
    Ok(())
}

fn op_name(op: u8) -> &'static str {
    abi::Opcode::from_raw(op).map_or("?", abi::Opcode::name)
}

/// Outcome of one verified request.
struct Outcome {
    req: Request,
    errno: i32,
    verified: bool,
    detail: String,
}

fn submit(d: &Dev, req: &mut Request) -> i32 {
    match d.submit(req) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Runs one request of `op` and checks every byte it produced.
/// WRITE/READ use internal memory at `dev_off`: concurrent callers must pass disjoint ranges.
fn verified(d: &Dev, op: u8, queue: u8, len: usize, nseg: u16, seed: u32, dev_off: u64) -> Outcome {
    verified_with(d, op, queue, len, nseg, seed, dev_off, 0)
}

/// [`verified`] with a request timeout (0: the driver's default).
#[allow(clippy::too_many_arguments)]
fn verified_with(
    d: &Dev,
    op: u8,
    queue: u8,
    len: usize,
    nseg: u16,
    seed: u32,
    dev_off: u64,
    timeout_ms: u32,
) -> Outcome {
    let src = data(len, seed);
    let mut dst = vec![0u8; len];
    let mut req = Request {
        opcode: op,
        queue,
        nseg,
        len: len as u32,
        timeout_ms,
        ..Default::default()
    };
    let (mut verified, mut detail) = (false, String::new());
    let errno;
    match op {
        abi::OP_COPY => {
            req.src = src.as_ptr() as u64;
            req.dst = dst.as_mut_ptr() as u64;
            errno = submit(d, &mut req);
            verified = errno == 0 && ok_status(req.status) && dst == src;
        }
        abi::OP_FILL => {
            req.pattern = 0xa55a_0000 | (seed & 0xffff);
            req.dst = dst.as_mut_ptr() as u64;
            errno = submit(d, &mut req);
            let p = req.pattern.to_le_bytes();
            verified = errno == 0
                && ok_status(req.status)
                && dst.iter().enumerate().all(|(i, &b)| b == p[i % 4]);
        }
        abi::OP_CHECKSUM => {
            req.src = src.as_ptr() as u64;
            errno = submit(d, &mut req);
            let crc = crc32c::crc32c(&src);
            verified = errno == 0 && ok_status(req.status) && req.result == crc;
            detail = format!("device {:#010x} guest {:#010x}", req.result, crc);
        }
        abi::OP_WRITE | abi::OP_READ => {
            // WRITE into internal memory, READ it back: both directions verified together.
            let off = dev_off;
            let mut w = Request {
                opcode: abi::OP_WRITE,
                queue,
                nseg,
                len: len as u32,
                dev_offset: off,
                ..Default::default()
            };
            w.src = src.as_ptr() as u64;
            let e1 = submit(d, &mut w);
            req.opcode = abi::OP_READ;
            req.dev_offset = off;
            req.dst = dst.as_mut_ptr() as u64;
            errno = if e1 != 0 { e1 } else { submit(d, &mut req) };
            verified = errno == 0 && ok_status(w.status) && ok_status(req.status) && dst == src;
            if op == abi::OP_WRITE {
                req = Request {
                    segments: w.segments,
                    latency_ns: w.latency_ns,
                    ..w
                };
            }
        }
        _ => errno = libc::EINVAL,
    }
    if !verified && detail.is_empty() && errno == 0 {
        let first_bad = dst.iter().zip(src.iter()).position(|(a, b)| a != b);
        detail = format!("status {} first differing byte {:?}", req.status, first_bad);
    }
    Outcome {
        req,
        errno,
        verified,
        detail,
    }
}

/// A COPY of `src` into `dst` on queue 0.
fn copy_request(src: &[u8], dst: &mut [u8], timeout_ms: u32) -> Request {
    Request {
        opcode: abi::OP_COPY,
        len: src.len() as u32,
        src: src.as_ptr() as u64,
        dst: dst.as_mut_ptr() as u64,
        timeout_ms,
        ..Default::default()
    }
}

fn report_xfer(o: &Outcome, scenario: &str) {
    report(Report::Xfer(xfer_of(o, scenario)));
}

fn xfer_of(o: &Outcome, scenario: &str) -> Xfer {
    Xfer {
        scenario: scenario.to_string(),
        op: op_name(o.req.opcode).to_string(),
        queue: o.req.queue,
        len: o.req.len,
        segments: o.req.segments,
        status: o.req.status,
        errno: o.errno,
        result: o.req.result,
        bytes: o.req.bytes,
        tag: o.req.tag,
        verified: o.verified,
        detail: o.detail.clone(),
        path: o.req.path,
        ..Default::default()
    }
}

const OPS: [u8; 5] = [
    abi::OP_COPY,
    abi::OP_WRITE,
    abi::OP_READ,
    abi::OP_FILL,
    abi::OP_CHECKSUM,
];
const SIZES: [usize; 5] = [1, 4096, 65536, 1 << 20, 12_347];

fn transfers() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    let mut n = 0u32;
    for &op in &OPS {
        for &len in &SIZES {
            let o = verified(&d, op, (n as usize % nq) as u8, len, 0, n, 0);
            report_xfer(&o, "transfers");
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

fn scatter_gather() -> Result<(), String> {
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
            n += 1;
        }
    }
    Ok(())
}

/// Several threads on every queue at once, every byte checked.
fn concurrent() -> Result<(), String> {
    let nq = Dev::open(0)?.info()?.queues as usize;
    let threads = 2 * nq;
    let per_thread = 12;
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ok, bad) = (ok.clone(), bad.clone());
            std::thread::spawn(move || {
                let d = Dev::open(0).expect("open");
                for i in 0..per_thread {
                    let op = OPS[(t + i) % OPS.len()];
                    let len = 1 + ((t * 7919 + i * 104_729) % 70_000);
                    let o = verified(
                        &d,
                        op,
                        (t % nq) as u8,
                        len,
                        0,
                        (t * 1000 + i) as u32,
                        (t as u64) << 20,
                    );
                    if o.verified {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        report_xfer(&o, "concurrent");
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
fn batch() -> Result<(), String> {
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    // (request, source, destination)
    let run = |reqs: Vec<(Request, Vec<u8>, Vec<u8>)>, what: &str| -> Result<(), String> {
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
    };
    let req = |op: u8, queue: usize, len: usize, i: u32| {
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
    };
    let mixed = (0..abi::MAX_BATCH)
        .map(|i| {
            let op = [abi::OP_COPY, abi::OP_FILL, abi::OP_CHECKSUM][i as usize % 3];
            let len = [1, 4096, 12_347, 65_536][i as usize % 4];
            req(op, i as usize % nq, len, i)
        })
        .collect();
    run(mixed, "32 mixed requests on every queue")?;
    let big = (0..8)
        .map(|i| req(abi::OP_COPY, 0, 1 << 20, 100 + i))
        .collect();
    run(big, "8 MiB of COPYs on one queue")?;
    // a bad opcode in the middle fails alone, with EINVAL
    let mut reqs: Vec<_> = (0..3)
        .map(|i| req(abi::OP_COPY, 1 % nq, 4096, 200 + i))
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
    // three full batches on one queue at once: 96 requests for 63 ring slots, so a batch must
    // ring what it posted rather than wait for a slot another batch holds unrung
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
    // more than MAX_BATCH: refused whole
    let mut too_many = vec![Request::default(); abi::MAX_BATCH as usize + 1];
    match d.submit_batch(&mut too_many) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => Err(format!(
            "a batch of {} requests: expected EINVAL, got {other:?}",
            abi::MAX_BATCH + 1
        )),
    }
}

fn reload(module: &str) -> Result<(), String> {
    for round in 0..3 {
        unload()?;
        load(module)?;
        let d = Dev::open(0)?;
        let o = verified(&d, abi::OP_COPY, 0, 8192, 0, round, 0);
        report_xfer(&o, "reload");
    }
    Ok(())
}

fn stats() -> Result<(), String> {
    let d = Dev::open(0)?;
    let s = d.stats()?;
    let nq = d.info()?.queues as usize;
    report(Report::Stats(Stats {
        queues: nq as u32,
        ioctl: Box::new(s),
    }));
    Ok(())
}

/// Requests the device must refuse: the driver must turn each into a status, not a hang.
fn errors() -> Result<(), String> {
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

/// For fault tests: six 4000-byte COPYs on queue 0 with a 5 s timeout, each reported with what the
/// driver said, then one verified COPY on every queue to show the device is usable again.
fn probe() -> Result<(), String> {
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

/// A seeded fault campaign, cut into units of `dmalab.unit` requests (default 20): before each
/// unit the agent writes its number to the device's `FAULT_EPOCH`, so the faults a unit meets
/// depend only on the seed and the unit, and any VM can run any unit (`--shard`, `--jobs`,
/// resume). Request `i`'s opcode and size follow from the seed and `i`; it runs on queue
/// `i % queues`. Concurrent (the default): one thread per queue, each running its queue's
/// requests in order, so requests are in flight on every queue at once. `dmalab.mode=serial`:
/// one request at a time, for exact reproduction. `dmalab.units=a-b` runs units a..b only.
fn campaign() -> Result<(), String> {
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
fn splitmix(s: &mut u64) -> u64 {
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
fn campaign_op(d: &Dev, seed: u64, i: u64, nq: u64) -> u64 {
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
fn write_read_pair(d: &Dev, queue: u8, len: usize, seed: u32, dev_off: u64) -> Vec<Outcome> {
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
    } else {
        let first_bad = dst.iter().zip(src.iter()).position(|(a, b)| a != b);
        format!(
            "read back: status {} first differing byte {first_bad:?}",
            r.status
        )
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

/// Queue resets after a timeout, with the late completion still to come: on every queue at
/// once, `dmalab.rounds` times (default 5), a 4000-byte COPY with a 200 ms timeout (the host
/// delays 4000-byte completions longer), then a verified COPY on the same queue. Each late one
/// must time out (the driver resets the queue), and the queue must work right after.
fn timeout_late() -> Result<(), String> {
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

/// Probe error paths: load the module with `probe_fail_step=1, 2, ...` until a probe succeeds.
/// After each failed probe: no device node, no DMA-API entry left for the device, no new DMA-API
/// error; at the end the probe that succeeds gives a device that transfers correctly, and
/// kmemleak's suspects now and the first one's report, after waiting out its 5 s grace
/// period and scanning twice (as its documentation advises, to settle transient references);
/// `None` when kmemleak is off.
fn kmemleak_suspects() -> Option<(u64, String)> {
    std::thread::sleep(Duration::from_secs(6));
    dev::kmemleak_scan()?;
    let text = dev::kmemleak_scan()?;
    let n = text.matches("unreferenced object").count() as u64;
    if n > 0 {
        eprintln!("kmemleak:\n{text}");
    }
    let first = text
        .split("unreferenced object")
        .nth(1)
        .map(|t| {
            format!(
                "unreferenced object{}",
                t.lines().take(12).collect::<Vec<_>>().join(" | ")
            )
        })
        .unwrap_or_default();
    Some((n, first))
}

/// kmemleak (when the kernel was booted with `kmemleak=on`) finds nothing leaked.
fn probe_unwind(module: &str) -> Result<(), String> {
    unload()?;
    let bdf = dev::dmalab_devices()
        .into_iter()
        .next()
        .ok_or("no dmalab device on the PCI bus")?;
    let kmemleak = dev::kmemleak_clear();
    let errors_before = dev::dma_api_errors();
    let mut step = 1u32;
    loop {
        if step > 32 {
            return Err("probe still fails with probe_fail_step=32".into());
        }
        dev::insmod_with(module, &format!("probe_fail_step={step}"))?;
        // Probe runs synchronously inside module init for a present device.
        let bound = std::path::Path::new(&format!("/sys/bus/pci/drivers/dmalab/{bdf}")).exists();
        let node = std::path::Path::new("/dev/dmalab0").exists();
        if bound {
            // the bound driver's rings and pools: proves the DMA-API dump is read correctly
            let entries = dev::dma_api_entries(&bdf);
            report(Report::ProbeStep(ProbeStep {
                step,
                bound: true,
                node,
                dma_entries: entries.map(|n| n as u64),
                dma_errors: None,
            }));
            break;
        }
        // A failed probe must leave nothing behind; read before unloading, which would hide
        // leaked DMA entries behind the module's own teardown.
        let entries = dev::dma_api_entries(&bdf);
        dev::rmmod("dmalab")?;
        report(Report::ProbeStep(ProbeStep {
            step,
            bound: false,
            node,
            dma_entries: entries.map(|n| n as u64),
            dma_errors: dev::dma_api_errors(),
        }));
        step += 1;
    }
    // The probe that succeeded must give a working device.
    let d = Dev::open(0)?;
    let nq = d.info()?.queues as usize;
    for q in 0..nq {
        let o = verified(&d, abi::OP_COPY, q as u8, 65536, 0, 700 + q as u32, 0);
        report_xfer(&o, "probe_unwind");
    }
    drop(d);
    unload()?;
    let errors_after = dev::dma_api_errors();
    let leaks = if kmemleak {
        kmemleak_suspects().map(|(n, _)| n)
    } else {
        None
    };
    report(Report::ProbeUnwind(ProbeUnwind {
        failed_steps: step - 1,
        dma_errors: match (errors_before, errors_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
        kmemleak: leaks,
    }));
    Ok(())
}

/// Surprise removal: ask the host to make the device vanish, then keep using it. The first
/// request may wait for its timeout; after that every request must fail fast with ENODEV.
fn removal() -> Result<(), String> {
    let d = Dev::open(0)?;
    let src = data(4096, 1);
    let mut dst = vec![0u8; 4096];
    let o = verified(&d, abi::OP_COPY, 0, 4096, 0, 1, 0);
    report_xfer(&o, "before_removal");
    report(Report::RemoveMe);
    // the host kills the device server when it sees the line above
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..4 {
        let mut r = Request {
            opcode: abi::OP_COPY,
            queue: (i % 2) as u8,
            len: 4096,
            src: src.as_ptr() as u64,
            dst: dst.as_mut_ptr() as u64,
            timeout_ms: FAULT_TIMEOUT_MS,
            ..Default::default()
        };
        let t = Instant::now();
        let errno = submit(&d, &mut r);
        report(Report::AfterRemoval(AfterRemoval {
            errno,
            ms: t.elapsed().as_millis() as u64,
        }));
    }
    Ok(())
}

/// The PCI address of the device bound to dmalab.
fn bound_device() -> Result<String, String> {
    std::fs::read_dir("/sys/bus/pci/drivers/dmalab")
        .map_err(|e| format!("dmalab driver not registered: {e}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("0000:"))
        .ok_or_else(|| "no device bound to dmalab".to_string())
}

/// Unbind the device while threads keep requests in flight on every queue: every thread must
/// get ENODEV (none may hang), then a rebind must give a working device again.
fn unbind_busy() -> Result<(), String> {
    unbind_busy_round(&bound_device()?)
}

/// `unbind_busy` `dmalab.rounds` times (default 10) in a row: every round binds again, fills
/// every queue and unbinds while requests are in flight. With completions delayed by a fault
/// rule, interrupts are being handled at the moment of the unbind's reset, which is the window
/// of the teardown race.
fn unbind_repeat() -> Result<(), String> {
    let rounds: u32 = crate::cmdline_param("dmalab.rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let bdf = bound_device()?;
    for _ in 0..rounds {
        unbind_busy_round(&bdf)?;
    }
    Ok(())
}

fn unbind_busy_round(bdf: &str) -> Result<(), String> {
    let bdf = bdf.to_string();
    let nq = Dev::open(0)?.info()?.queues as usize;
    let threads = 2 * nq;
    let started = Arc::new(AtomicU64::new(0));
    // Every worker's file is open before any request runs: a worker that opened its own could
    // still be starting when the others' requests trigger the unbind, and find no device.
    let devs = (0..threads)
        .map(|_| Dev::open(0))
        .collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = devs
        .into_iter()
        .enumerate()
        .map(|(t, d)| {
            let started = started.clone();
            std::thread::spawn(move || -> (u64, i32) {
                let src = data(65536, t as u32);
                let mut dst = vec![0u8; 65536];
                let mut ok = 0;
                loop {
                    let mut r = Request {
                        opcode: abi::OP_COPY,
                        queue: (t % nq) as u8,
                        len: 65536,
                        src: src.as_ptr() as u64,
                        dst: dst.as_mut_ptr() as u64,
                        ..Default::default()
                    };
                    let e = submit(&d, &mut r);
                    started.fetch_add(1, Ordering::Relaxed);
                    if e != 0 {
                        return (ok, e);
                    }
                    ok += 1;
                }
            })
        })
        .collect();
    while started.load(Ordering::Relaxed) < 4 * threads as u64 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    std::fs::write("/sys/bus/pci/drivers/dmalab/unbind", &bdf)
        .map_err(|e| format!("unbind {bdf}: {e}"))?;
    let unbind_us = t.elapsed().as_micros() as u64;
    let mut enodev = 0;
    let mut other = 0;
    let mut completed = 0;
    for h in handles {
        let (ok, e) = h.join().map_err(|_| "worker thread panicked".to_string())?;
        completed += ok;
        if e == libc::ENODEV {
            enodev += 1;
        } else {
            other += 1;
            report(Report::UnbindError(UnbindError { errno: e }));
        }
    }
    dma_api("after_busy_unbind");
    std::fs::write("/sys/bus/pci/drivers/dmalab/bind", &bdf)
        .map_err(|e| format!("bind {bdf}: {e}"))?;
    let d = Dev::open(0)?;
    let o = verified(&d, abi::OP_COPY, 0, 65536, 0, 3, 0);
    report(Report::UnbindBusy(UnbindBusy {
        threads: threads as u64,
        completed_before: completed,
        enodev,
        other_errors: other,
        unbind_us,
    }));
    report_xfer(&o, "unbind_busy");
    Ok(())
}

/// Unbind while a request is certainly in flight (the host makes the queue stall): the
/// waiter must be released with ENODEV at once, not when its 30 s timeout runs out.
fn unbind_stalled() -> Result<(), String> {
    let bdf = bound_device()?;
    let waiter = std::thread::spawn(|| -> (i32, u64) {
        let d = Dev::open(0).expect("open");
        let src = data(4096, 9);
        let mut dst = vec![0u8; 4096];
        let mut r = copy_request(&src, &mut dst, 30_000);
        let t = Instant::now();
        let e = submit(&d, &mut r);
        (e, t.elapsed().as_millis() as u64)
    });
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write("/sys/bus/pci/drivers/dmalab/unbind", &bdf)
        .map_err(|e| format!("unbind {bdf}: {e}"))?;
    let (errno, ms) = waiter.join().map_err(|_| "waiter panicked".to_string())?;
    dma_api("after_stalled_unbind");
    report(Report::UnbindStalled(UnbindStalled {
        errno,
        waited_ms: ms,
    }));
    std::fs::write("/sys/bus/pci/drivers/dmalab/bind", &bdf)
        .map_err(|e| format!("bind {bdf}: {e}"))?;
    let o = verified(&Dev::open(0)?, abi::OP_COPY, 0, 4096, 0, 4, 0);
    report_xfer(&o, "unbind_stalled");
    Ok(())
}

/// A device reset from user space, then the device must work as before.
fn reset() -> Result<(), String> {
    let d = Dev::open(0)?;
    // A device reset zeroes the internal memory: something written before must read back as
    // zeros after, or the reset never reached the device.
    let before = data(4096, 3);
    let mut w = Request {
        opcode: abi::OP_WRITE,
        len: 4096,
        src: before.as_ptr() as u64,
        dev_offset: 0,
        ..Default::default()
    };
    let written = submit(&d, &mut w) == 0;
    let r = d.reset();
    report(Report::Reset(ResetOutcome {
        ok: r.is_ok(),
        error: r.err().map(|e| e.to_string()).unwrap_or_default(),
    }));
    let mut after = vec![0xffu8; 4096];
    let mut rd = Request {
        opcode: abi::OP_READ,
        len: 4096,
        dst: after.as_mut_ptr() as u64,
        dev_offset: 0,
        ..Default::default()
    };
    let errno = submit(&d, &mut rd);
    report_xfer(
        &Outcome {
            req: rd,
            errno,
            verified: written && errno == 0 && after.iter().all(|&b| b == 0),
            detail: "internal memory reads zeros after IOC_RESET".into(),
        },
        "reset_cleared",
    );
    let o = verified(&d, abi::OP_COPY, 0, 4096, 0, 77, 0);
    report_xfer(&o, "reset");
    Ok(())
}

/// Throughput: COPY of 4 KiB and 1 MiB at queue depth 1 and 32.
fn bench() -> Result<(), String> {
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
