//! Probe, unbind, removal and reset: the device's life around the requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Request};
use dmalab_report::*;

use crate::dev::{self, Dev};
use crate::kmod::{bound_device, dma_api, insmod, load, unload};
use crate::pattern::data;
use crate::report::report;

use super::verify::{copy_request, report_xfer, submit, verified, Outcome, FAULT_TIMEOUT_MS};

/// Ladder step 1: loads the module (which need not create `/dev/dmalab0`), reports the driver
/// bound to the device and its command register, unloads it and reports again.
pub(super) fn bind(module: &str) -> Result<(), String> {
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
        // how many times the PCI core counted the device enabled (pci_enable_device*)
        let enable_count = std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/enable"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        report(Report::Bound(Bound {
            when: when.into(),
            bdf: bdf.clone(),
            driver,
            command,
            enable_count,
        }));
    };
    insmod(module)?;
    look("loaded");
    dma_api("loaded");
    unload()?;
    look("unloaded");
    Ok(())
}

pub(super) fn reload(module: &str) -> Result<(), String> {
    for round in 0..3 {
        unload()?;
        load(module)?;
        let d = Dev::open(0)?;
        let o = verified(&d, abi::OP_COPY, 0, 8192, 0, round, 0);
        report_xfer(&o, "reload");
    }
    Ok(())
}

pub(super) fn info() -> Result<(), String> {
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
        kernel_dma_mask_bits: crate::dev::dmalab_devices()
            .first()
            .and_then(|bdf| {
                std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/dma_mask_bits")).ok()
            })
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0),
        mem_size: i.mem_size,
        bdf: i.bdf,
        dma_mode: i.dma_mode,
        zero_copy_min: i.zero_copy_min,
    }));
    Ok(())
}

pub(super) fn stats() -> Result<(), String> {
    let d = Dev::open(0)?;
    let s = d.stats()?;
    let nq = d.info()?.queues as usize;
    report(Report::Stats(Stats {
        queues: nq as u32,
        ioctl: Box::new(s),
    }));
    Ok(())
}

/// Probe error paths: load the module with `probe_fail_step=1, 2, ...` until a probe succeeds.
/// After each failed probe: no device node, no DMA-API entry left for the device, no new DMA-API
/// error; at the end the probe that succeeds gives a device that transfers correctly, and
/// kmemleak's suspects now and the first one's report, after waiting out its 5 s grace
/// period and scanning twice (as its documentation advises, to settle transient references);
/// `None` when kmemleak is off.
pub(super) fn kmemleak_suspects() -> Option<(u64, String)> {
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
pub(super) fn probe_unwind(module: &str) -> Result<(), String> {
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
pub(super) fn removal() -> Result<(), String> {
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

/// Unbind the device while threads keep requests in flight on every queue: every thread must
/// get ENODEV (none may hang), then a rebind must give a working device again.
pub(super) fn unbind_busy() -> Result<(), String> {
    unbind_busy_round(&bound_device()?)
}

/// `unbind_busy` `dmalab.rounds` times (default 10) in a row: every round binds again, fills
/// every queue and unbinds while requests are in flight. With completions delayed by a fault
/// rule, interrupts are being handled at the moment of the unbind's reset, which is the window
/// of the teardown race.
pub(super) fn unbind_repeat() -> Result<(), String> {
    let rounds: u32 = crate::cmdline_param("dmalab.rounds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let bdf = bound_device()?;
    for _ in 0..rounds {
        unbind_busy_round(&bdf)?;
    }
    Ok(())
}

pub(super) fn unbind_busy_round(bdf: &str) -> Result<(), String> {
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
pub(super) fn unbind_stalled() -> Result<(), String> {
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
pub(super) fn reset() -> Result<(), String> {
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

/// Unbind while another process holds `/dev/dmalab0` open and keeps calling it: its calls must
/// fail with ENODEV (no crash, no hang), and the driver's DMA memory must be gone at the unbind
/// (DMA-API debug's live entries for the device: 0 while the file is still open), not when the
/// last file closes. Then the device is bound again and works.
pub(super) fn unbind_held() -> Result<(), String> {
    let bdf = bound_device()?;
    let pipe = || -> Result<[i32; 2], String> {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a two-element array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err("pipe failed".into());
        }
        Ok(fds)
    };
    let (to_child, from_child) = (pipe()?, pipe()?);
    // SAFETY: fork(2); no other thread runs here, and the child only opens the device, calls
    // it, talks over its pipes and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: non-blocking reads of the parent's commands.
        unsafe { libc::fcntl(to_child[0], libc::F_SETFL, libc::O_NONBLOCK) };
        let say = |s: &str| {
            // SAFETY: writes `s` to our end of the pipe.
            unsafe { libc::write(from_child[1], s.as_ptr().cast(), s.len()) };
        };
        let d = match Dev::open(0) {
            Ok(d) => d,
            Err(_) => {
                say("fail\n");
                // SAFETY: leaves the child.
                unsafe { libc::_exit(1) }
            }
        };
        let (src, mut dst) = (data(4096, 5), vec![0u8; 4096]);
        let (mut unbound, mut after, mut enodev, mut other) = (false, 0u64, 0u64, 0i32);
        let mut announced = false;
        loop {
            let mut cmd = [0u8; 1];
            // SAFETY: reads at most one byte into `cmd`.
            if unsafe { libc::read(to_child[0], cmd.as_mut_ptr().cast(), 1) } == 1 {
                match cmd[0] {
                    b'u' => unbound = true,
                    _ => break,
                }
            }
            let mut r = copy_request(&src, &mut dst, FAULT_TIMEOUT_MS);
            let results = [d.info_errno(), submit(&d, &mut r)];
            if !announced {
                say("ready\n");
                announced = true;
            }
            if unbound {
                for e in results {
                    after += 1;
                    match e {
                        libc::ENODEV => enodev += 1,
                        // the first call that did not fail with ENODEV: -1 if it succeeded
                        _ if other != 0 => {}
                        0 => other = -1,
                        e => other = e,
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(d);
        say(&format!("{after} {enodev} {other}\n"));
        // SAFETY: leaves the child.
        unsafe { libc::_exit(0) }
    }
    if pid < 0 {
        return Err("fork failed".into());
    }
    let tell = |c: u8| {
        // SAFETY: writes one byte to the child's command pipe.
        unsafe { libc::write(to_child[1], [c].as_ptr().cast(), 1) };
    };
    let mut from = std::io::BufReader::new(unsafe_file(from_child[0]));
    let mut line = String::new();
    use std::io::BufRead;
    from.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!(
            "the holder process could not use the device: {line}"
        ));
    }
    std::fs::write("/sys/bus/pci/drivers/dmalab/unbind", &bdf)
        .map_err(|e| format!("unbind {bdf}: {e}"))?;
    tell(b'u');
    // the holder keeps calling for a while, its file still open
    std::thread::sleep(Duration::from_millis(300));
    let entries_while_held = dev::dma_api_entries(&bdf);
    tell(b's');
    line.clear();
    from.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let n: Vec<i64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let [after, enodev, other] = n[..] else {
        return Err(format!("the holder process reported '{}'", line.trim()));
    };
    let entries_after_close = dev::dma_api_entries(&bdf);
    report(Report::UnbindHeld(UnbindHeld {
        calls_after: after as u64,
        enodev: enodev as u64,
        other_errno: if other < 0 { -1 } else { other as i32 },
        entries_while_held,
        entries_after_close,
    }));
    std::fs::write("/sys/bus/pci/drivers/dmalab/bind", &bdf)
        .map_err(|e| format!("bind {bdf}: {e}"))?;
    let o = verified(&Dev::open(0)?, abi::OP_COPY, 0, 65536, 0, 4, 0);
    report_xfer(&o, "unbind_held");
    Ok(())
}

/// `fd` as a File that closes it.
fn unsafe_file(fd: i32) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is a pipe end this process owns and hands over here.
    unsafe { std::fs::File::from_raw_fd(fd) }
}
