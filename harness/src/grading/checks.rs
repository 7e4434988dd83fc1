//! The table of checks: every check `dmalab check` grades, for the contract's levels and for
//! the tutorial ladder's steps, each once. The order is the card's within a level or step.

use std::sync::OnceLock;

use dmalab_abi as abi;
use dmalab_device::eventlog::Event;
use dmalab_report::{
    AfterRemoval, Bound, Concurrent, DmaApi, DmaSelfTest, Info, Insmod, Interrupts, Refused,
    ResetOutcome, Rmmod, ScenarioEnd, StaleBytes, Stalled, Stats, UnbindBusy, UnbindHeld,
    UnbindStalled, Xfer,
};

use super::boots::NEVER_RETURNED;
use super::judge::{
    all_verified, all_verified_in, clean, device_account, driver_complaints, ensure, errno_hint,
    leaks, status_name,
};
use super::{Check, Ctx, Graded, Steps};
use crate::campaign::{campaign_faults, campaign_xfers};
use crate::verdict::{judge, unexplained_failures, Verdict};
use crate::vm::Run;

/// Every streaming self-test round came back with the device's bytes, as the CPU saw them
/// after taking the memory back (`sync_for_cpu`).
fn selftests_verified(r: &Run) -> Graded {
    let tests = r.all::<DmaSelfTest>();
    if tests.is_empty() {
        return Err(format!(
            "no streaming self-test answered (IOC_DMA_SELFTEST){}",
            driver_complaints(r)
        ));
    }
    match tests.iter().find(|t| t.errno != 0 || t.verified != t.rounds) {
        Some(t) if t.errno != 0 => Err(format!(
            "streaming self-test of {} bytes failed with errno {}{} after {} of {} rounds came back right{}",
            t.len,
            t.errno,
            errno_hint(t.errno),
            t.verified,
            t.rounds,
            driver_complaints(r)
        )),
        Some(t) => Err(format!(
            "streaming self-test of {} bytes: {} of {} rounds gave the CPU the device's bytes: with every mapping bounced, the device sees only what the CPU wrote before handing the memory over (the map, sync_for_device), and the CPU sees the device's data only after sync_for_cpu (or the unmap) copies it back",
            t.len,
            t.verified,
            t.rounds
        )),
        None => Ok(()),
    }
}

/// Every queue the driver uses completed at least `min` descriptors (the device's account):
/// with 64-entry rings, tail and phase wrapped `min / 64` times.
fn wrapped(r: &Run, min: usize) -> Graded {
    let nq = r.all::<Info>().first().map_or(4, |i| i.queues as u16);
    let mut done = vec![0usize; usize::from(nq)];
    for e in r.events("complete") {
        if let Event::Complete { queue, .. } = e {
            if let Some(n) = done.get_mut(usize::from(*queue)) {
                *n += 1;
            }
        }
    }
    match done.iter().position(|&n| n < min) {
        Some(q) => Err(format!(
            "queue {q} completed {} descriptors, expected at least {min} (the rings must wrap)",
            done[q]
        )),
        None => Ok(()),
    }
}

/// Every check, in the order of the card.
pub fn table() -> &'static [Check] {
    static TABLE: OnceLock<Vec<Check>> = OnceLock::new();
    TABLE.get_or_init(build)
}

fn build() -> Vec<Check> {
    vec![
        // --- binding: the contract's level 1 (boot "bind"), the ladder's step 1 ("step1")
        Check {
            id: "loads",
            name: "loads and creates /dev/dmalab0",
            level: Some(1),
            steps: None,
            see: "docs/contract.md#1--binds",
            chapter: None,
            boot: "bind",
            judge: |r, _| {
                ensure(
                    r.all::<Insmod>().first().is_some_and(|i| i.ok),
                    "insmod failed or /dev/dmalab0 never appeared",
                )
            },
        },
        Check {
            id: "info",
            name: "IOC_INFO reports the ID and version registers",
            level: Some(1),
            steps: None,
            see: "docs/datasheet.md#bar0-register-map",
            chapter: None,
            boot: "bind",
            judge: |r, _| {
                r.all::<Info>()
                    .first()
                    .map_or(Err("no IOC_INFO answer".into()), |i| {
                        ensure(
                            i.magic == abi::DEVICE_MAGIC
                                && i.version >> 16 == u32::from(abi::VERSION_MAJOR),
                            format!("ID {:#x} version {:#x}", i.magic, i.version),
                        )
                    })
            },
        },
        Check {
            id: "unloads",
            name: "unloads cleanly (kernel log, DMA-API debug, device account)",
            level: Some(1),
            steps: None,
            see: "docs/contract.md#1--binds",
            chapter: None,
            boot: "bind",
            judge: |r, _| {
                ensure(
                    r.all::<Rmmod>()
                        .first()
                        .is_some_and(|m| m.ok && !m.still_loaded),
                    "rmmod failed",
                )
                .and_then(|_| clean(r))
            },
        },
        Check {
            id: "no_leaks",
            name: "kmemleak finds nothing leaked after a load, transfers and an unload",
            level: Some(1),
            steps: None,
            see: "docs/contract.md#1--binds",
            chapter: None,
            boot: "bind",
            judge: |r, _| leaks(r),
        },
        Check {
            id: "module_loads",
            name: "the module loads",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md",
            chapter: None,
            boot: "step1",
            judge: |r, _| {
                ensure(
                    r.all::<Insmod>().first().is_some_and(|i| i.ok),
                    format!(
                        "insmod failed: {}",
                        r.all::<Insmod>()
                            .first()
                            .map_or("no report from the agent".into(), |i| i.error.clone())
                    ),
                )
            },
        },
        Check {
            id: "binds",
            name: "it binds the dmalab device",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md#binding",
            chapter: None,
            boot: "step1",
            judge: |r, _| match bound(r, "loaded") {
                Some(b) if b.driver.as_deref() == Some("dmalab") => Ok(()),
                Some(b) => Err(format!(
                    "the device is bound to {}, not to dmalab: probe() failed{}",
                    b.driver.as_deref().unwrap_or("no driver"),
                    driver_complaints(r)
                )),
                None => Err(format!(
                    "not looked at: the module did not load{}",
                    driver_complaints(r)
                )),
            },
        },
        Check {
            id: "enables",
            name: "it enables memory decoding and bus mastering",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md#enabling",
            chapter: None,
            boot: "step1",
            judge: |r, _| {
                let Some(b) = bound(r, "loaded") else {
                    return Err("not looked at: the module did not load".into());
                };
                // the device's own account: what the guest wrote into its command register
                let bus_master = r.events("command").iter().any(|e| {
                    matches!(e, Event::Command { bus_master: true, .. })
                });
                if !bus_master {
                    return Err(format!(
                        "the device never saw bus mastering turned on (PCI command register bit 2 stayed clear; it reads {:#06x} while bound): without it the device may not touch memory. Call pdev.set_master() in probe",
                        b.command
                    ));
                }
                match b.enable_count {
                    Some(0) => Err(format!(
                        "the kernel counts no enable of the device while the driver is bound (sysfs 'enable' reads 0): memory decoding is on only because the firmware left it on (command register {:#06x}). Call pdev.enable_device_mem() in probe",
                        b.command
                    )),
                    _ => ensure(
                        b.enabled(),
                        format!(
                            "PCI command register {:#06x} while bound: memory decoding (bit 1) is off",
                            b.command
                        ),
                    ),
                }
            },
        },
        Check {
            id: "logs_version",
            name: "it reads the VERSION register and logs the version",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md#identity",
            chapter: None,
            boot: "step1",
            judge: |r, _| {
                let version = format!("v{}.{}", abi::VERSION_MAJOR, abi::VERSION_MINOR);
                ensure(
                    r.console.lines().any(|l| {
                        l.contains("dmalab")
                            && l.contains(&version)
                            && !l.contains(dmalab_report::PREFIX)
                    }),
                    format!("no kernel log line from the driver says {version}"),
                )
            },
        },
        Check {
            id: "unbinds",
            name: "it unbinds cleanly",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md#unbinding",
            chapter: None,
            boot: "step1",
            judge: |r, _| {
                let rm = r.all::<Rmmod>();
                ensure(
                    rm.first().is_some_and(|m| m.ok && !m.still_loaded),
                    format!(
                        "rmmod failed: {}",
                        rm.first()
                            .map_or("no report from the agent".into(), |m| m.error.clone())
                    ),
                )
                .and_then(|_| {
                    ensure(
                        bound(r, "unloaded").is_some_and(|b| b.driver.is_none()),
                        "the device is still bound after rmmod",
                    )
                })
                .and_then(|_| clean(r))
            },
        },
        Check {
            id: "unbind_no_leaks",
            name: "kmemleak finds nothing leaked after the unbind",
            level: None,
            steps: Some(Steps::From(1)),
            see: "docs/tutorial/01-bind.md#unbinding",
            chapter: None,
            boot: "step1",
            judge: |r, _| leaks(r),
        },
        // --- transfers: level 2 ("transfers"), ladder steps 2-5 ("ladder")
        Check {
            id: "every_opcode",
            name: "every opcode, size and queue, byte for byte",
            level: Some(2),
            steps: None,
            see: "docs/datasheet.md#opcodes",
            chapter: None,
            boot: "transfers",
            judge: |r, _| all_verified(r, 25),
        },
        Check {
            id: "concurrent",
            name: "concurrent requests on every queue",
            level: Some(2),
            steps: None,
            see: "docs/contract.md#2--transfers",
            chapter: None,
            boot: "transfers",
            judge: |r, _| concurrent_ok(r),
        },
        Check {
            id: "interrupts",
            name: "interrupts on every queue",
            level: Some(2),
            steps: None,
            see: "docs/datasheet.md#interrupts",
            chapter: None,
            boot: "transfers",
            judge: |r, _| {
                r.all::<Stats>()
                    .first()
                    .map_or(Err("no IOC_STATS answer".into()), |s| {
                        ensure(
                            s.per_queue().iter().all(|q| q.completed > 0 && q.irqs > 0),
                            "a queue saw no completion or no interrupt",
                        )
                    })
            },
        },
        Check {
            id: "transfers_clean",
            name: "the run is clean",
            level: Some(2),
            steps: None,
            see: "docs/contract.md#2--transfers",
            chapter: None,
            boot: "transfers",
            judge: |r, _| clean(r),
        },
        Check {
            id: "ring_wrap",
            name: "rings wrap several times with threads sharing a queue, completions out of order",
            level: Some(2),
            steps: None,
            see: "docs/contract.md#2--transfers",
            chapter: None,
            boot: "wrap",
            judge: |r, _| {
                concurrent_ok(r)
                    .and_then(|()| wrapped(r, 3 * 64))
                    .and_then(|()| {
                        ensure(
                            r.faults().iter().any(|f| f.rule == "swap"),
                            "no completion came out of order (the fault never fired)",
                        )
                    })
                    .and_then(|()| clean(r))
            },
        },
        Check {
            id: "high_addresses",
            name: "transfers with every DMA address above 4 GiB",
            level: Some(2),
            steps: None,
            see: "docs/contract.md#platform-conditions",
            chapter: None,
            boot: "high_iova",
            judge: |r, _| all_verified(r, 25).and_then(|()| clean(r)),
        },
        Check {
            id: "device_reach",
            name: "DMA mask = the device's reach (CAP_DMA_BITS below 64, addresses above it)",
            level: Some(2),
            steps: None,
            see: "docs/datasheet.md#dma-addressing",
            chapter: None,
            boot: "narrow_device",
            judge: |r, _| {
                // what the kernel holds, where the agent could read it; else what IOC_INFO says
                let mask = r.all::<Info>().first().map(|i| match i.kernel_dma_mask_bits {
                    0 => i.dma_mask_bits,
                    k => k,
                });
                let wide = match mask {
                    // this VM's device drives fewer than 64 bits (`dma32` by default)
                    Some(bits) if bits >= 64 => format!(
                        " (the driver set a {bits}-bit DMA mask; this device drives fewer address bits: set the mask to CAP_DMA_BITS)"
                    ),
                    _ => String::new(),
                };
                all_verified(r, 25)
                    .and_then(|()| clean(r))
                    .map_err(|e| format!("{e}{wide}"))
            },
        },
        Check {
            id: "bounce_buffers",
            name: "transfers and the streaming self-test with every mapping bounced (swiotlb)",
            level: Some(2),
            steps: None,
            see: "docs/contract.md#platform-conditions",
            chapter: None,
            boot: "bounce",
            judge: |r, _| {
                all_verified(r, 25)
                    .and_then(|()| selftests_verified(r))
                    .and_then(|()| clean(r))
            },
        },
        Check {
            id: "device_node",
            name: "/dev/dmalab0 appears",
            level: None,
            steps: Some(Steps::From(2)),
            see: "docs/tutorial/02-direct-dma.md#the-misc-device",
            chapter: None,
            boot: "ladder",
            judge: |r, _| {
                ensure(
                    !r.all::<ScenarioEnd>()
                        .iter()
                        .any(|e| e.scenario == "load" && !e.completed),
                    format!("/dev/dmalab0 never appeared{}", driver_complaints(r)),
                )
            },
        },
        Check {
            id: "small_opcodes",
            name: "every opcode at 1 B to 64 KiB, byte for byte",
            level: None,
            steps: Some(Steps::From(2)),
            see: "docs/datasheet.md#opcodes",
            chapter: Some("docs/tutorial/02-direct-dma.md#the-transfer"),
            boot: "ladder",
            judge: |r, _| all_verified_in(r, "basic", 20),
        },
        Check {
            id: "in_a_row",
            name: "100 transfers in a row",
            level: None,
            steps: Some(Steps::From(2)),
            see: "docs/tutorial/02-direct-dma.md",
            chapter: None,
            boot: "ladder",
            judge: |r, _| all_verified_in(r, "basic_wrap", 100),
        },
        Check {
            id: "direct_registers",
            name: "the transfers used the direct-transfer registers",
            level: None,
            steps: Some(Steps::Only(2)),
            see: "docs/datasheet.md#direct-transfers",
            chapter: None,
            boot: "ladder",
            judge: |r, _| {
                let n = fetched_on(r, abi::DIRECT_QUEUE);
                ensure(n >= 120, format!("the device ran {n} direct transfers"))
            },
        },
        Check {
            id: "timeout_reset",
            name: "a transfer that times out fails with ETIMEDOUT, and the device is reset before the next one",
            level: None,
            steps: Some(Steps::Only(2)),
            see: "docs/tutorial/02-direct-dma.md#the-transfer",
            chapter: Some("docs/tutorial/02-direct-dma.md#the-transfer"),
            boot: "ladder_timeout",
            judge: |r, _| {
                let Some(s) = r.all::<Stalled>().first().cloned() else {
                    return Err(format!(
                        "not looked at: the stalled transfer was never submitted{}",
                        driver_complaints(r)
                    ));
                };
                if !s.returned {
                    return Err("a transfer the device never finishes did not come back within 20 s: the driver must give up after the request's timeout (2000 ms here) and return ETIMEDOUT".into());
                }
                if s.errno != libc::ETIMEDOUT {
                    return Err(format!(
                        "the stalled transfer came back with errno {}{} after {} ms, not ETIMEDOUT",
                        s.errno,
                        errno_hint(s.errno),
                        s.ms
                    ));
                }
                reset_after_stall(r)?;
                all_verified_in(r, "after_stall", 1).and_then(|()| clean(r))
            },
        },
        Check {
            id: "rings",
            name: "the transfers went through queue 0's rings",
            level: None,
            steps: Some(Steps::Only(3)),
            see: "docs/tutorial/03-rings.md",
            chapter: None,
            boot: "ladder",
            judge: |r, _| {
                let n = fetched_on(r, 0);
                ensure(
                    n >= 120,
                    format!("the device fetched {n} descriptors from queue 0"),
                )
            },
        },
        Check {
            id: "msix",
            name: "IOC_INFO: MSI-X, a vector per queue and one for errors",
            level: None,
            steps: Some(Steps::From(4)),
            see: "docs/tutorial/04-msix.md#vectors",
            chapter: None,
            boot: "ladder",
            judge: |r, _| match r.all::<Info>().first() {
                Some(i) => ensure(
                    i.irq_mode == "msix" && i.vectors > i.queues && i.queues >= 1,
                    format!(
                        "{} queues, {} vectors, mode {}",
                        i.queues, i.vectors, i.irq_mode
                    ),
                ),
                None => Err(format!("no IOC_INFO answer{}", driver_complaints(r))),
            },
        },
        Check {
            id: "every_queue",
            name: "every opcode on every queue",
            level: None,
            steps: Some(Steps::From(4)),
            see: "docs/tutorial/04-msix.md",
            chapter: None,
            boot: "ladder",
            judge: |r, _| all_verified_in(r, "queues", 5 * queues(r).max(1) as usize),
        },
        Check {
            id: "threads",
            name: "threads on every queue at once",
            level: None,
            steps: Some(Steps::From(4)),
            see: "docs/tutorial/04-msix.md#waiting",
            chapter: None,
            boot: "ladder",
            judge: |r, _| {
                r.all::<Concurrent>()
                    .first()
                    .map_or(Err("not run".into()), |c| {
                        ensure(
                            c.failed == 0 && c.verified > 0,
                            format!("{} of {} failed", c.failed, c.verified + c.failed),
                        )
                    })
            },
        },
        Check {
            id: "vectors_fire",
            name: "each queue's vector fires and its handler runs",
            level: None,
            steps: Some(Steps::From(4)),
            see: "docs/datasheet.md#interrupts",
            chapter: None,
            boot: "ladder",
            judge: |r, _| vectors_fire(r),
        },
        Check {
            id: "dma_mask",
            name: "a 64-bit DMA mask, set in the kernel and reported by IOC_INFO",
            level: None,
            steps: Some(Steps::From(5)),
            see: "docs/tutorial/05-sg.md#the-dma-mask",
            chapter: None,
            boot: "ladder",
            judge: |r, _| {
                r.all::<Info>()
                    .first()
                    .map_or(Err("no IOC_INFO answer".into()), |i| dma_mask_is_64(i))
            },
        },
        Check {
            id: "large",
            name: "1 MiB requests on every queue, byte for byte",
            level: None,
            steps: Some(Steps::From(5)),
            see: "docs/tutorial/05-sg.md",
            chapter: None,
            boot: "ladder",
            judge: |r, _| all_verified_in(r, "transfers", 25),
        },
        Check {
            id: "sg_lists",
            name: "scatter-gather lists of 16 to 256 segments",
            level: None,
            steps: Some(Steps::From(5)),
            see: "docs/datasheet.md#scatter-gather-entry-16-bytes",
            chapter: Some("docs/tutorial/05-sg.md#building-a-list"),
            boot: "ladder",
            judge: |r, _| sg_lists(r),
        },
        Check {
            id: "ladder_clean",
            name: "the run is clean",
            level: None,
            steps: Some(Steps::From(2)),
            see: "docs/tutorial/README.md#rules-that-hold-in-every-step",
            chapter: None,
            boot: "ladder",
            judge: |r, _| clean(r),
        },
        Check {
            id: "iommu_transfers",
            name: "behind a vIOMMU: 1 MiB and scatter-gather transfers, byte for byte",
            level: None,
            steps: Some(Steps::From(6)),
            see: "docs/tutorial/06-iommu.md",
            chapter: None,
            boot: "ladder_iommu",
            judge: |r, _| {
                all_verified_in(r, "transfers", 25).and_then(|_| all_verified_in(r, "sg", 16))
            },
        },
        Check {
            id: "iommu_unbind",
            name: "unbind behind a vIOMMU: the device is stopped before its memory is unmapped",
            level: None,
            steps: Some(Steps::From(6)),
            see: "docs/tutorial/06-iommu.md#teardown-as-a-guard",
            chapter: None,
            boot: "ladder_iommu",
            judge: |r, _| clean(r),
        },
        Check {
            id: "iommu_nothing_left",
            name: "no DMA memory left allocated or mapped after unbind",
            level: None,
            steps: Some(Steps::From(6)),
            see: "docs/tutorial/06-iommu.md#teardown-as-a-guard",
            chapter: None,
            boot: "ladder_iommu",
            judge: |r, _| {
                let after = r
                    .all::<DmaApi>()
                    .into_iter()
                    .find(|d| d.when == "unloaded")
                    .and_then(|d| d.entries);
                match after {
                    Some(0) => Ok(()),
                    Some(n) => Err(format!("DMA-API debug lists {n} entries for the device")),
                    None => Err("DMA-API debug was not read after the unload".into()),
                }
            },
        },
        // --- refusals: level 3, step 7 ("refusals")
        Check {
            id: "status_errno",
            name: "device error statuses become errnos (INTERNAL_RANGE: ERANGE)",
            level: Some(3),
            steps: Some(Steps::From(7)),
            see: "docs/driver.md#request",
            chapter: Some("docs/tutorial/07-errors.md#statuses"),
            boot: "refusals",
            judge: |r, _| {
                let f = r.all::<Refused>();
                ensure(
                    f.first().is_some_and(|x| x.errno == libc::ERANGE),
                    format!(
                        "{}{}",
                        f.first().map_or("no bad request was reported".into(), |x| format!(
                            "the bad request '{}' on queue {} came back with errno {}{}, status {}",
                            x.case,
                            x.queue,
                            x.errno,
                            super::judge::errno_hint(x.errno),
                            super::judge::status_name(x.status)
                        )),
                        driver_complaints(r)
                    ),
                )
            },
        },
        Check {
            id: "refuses_bad",
            name: "bad requests are refused with EINVAL before the device sees them",
            level: Some(3),
            steps: Some(Steps::From(7)),
            see: "docs/contract.md#3--refusals",
            chapter: None,
            boot: "refusals",
            judge: |r, _| {
                let f = r.all::<Refused>();
                if f.len() != 3 {
                    return Err(format!(
                        "{} of the 3 bad requests answered (the agent stops at the first failure){}",
                        f.len(),
                        driver_complaints(r)
                    ));
                }
                match f[1..].iter().find(|x| x.errno != libc::EINVAL) {
                    Some(x) => Err(format!(
                        "the bad request \"{}\" on queue {} got errno {}{}{}, expected EINVAL from the driver before the device sees it",
                        x.case,
                        x.queue,
                        x.errno,
                        errno_hint(x.errno),
                        if x.status != 0 {
                            format!(" with status {} (the device saw it)", status_name(x.status))
                        } else {
                            String::new()
                        }
                    )),
                    None => Ok(()),
                }
            },
        },
        Check {
            id: "reset",
            name: "IOC_RESET resets the device, it works afterwards, the run is clean",
            level: Some(3),
            steps: Some(Steps::From(7)),
            see: "docs/contract.md#3--refusals",
            chapter: Some("docs/tutorial/07-errors.md#device-reset"),
            boot: "refusals",
            judge: |r, _| {
                let outcome = r.all::<ResetOutcome>();
                ensure(
                    outcome.first().is_some_and(|x| x.ok),
                    format!(
                        "IOC_RESET failed: {}",
                        outcome
                            .first()
                            .map_or("no report from the agent".into(), |x| x.error.clone())
                    ),
                )
                .and_then(|_| {
                    all_verified_in(r, "reset_cleared", 1)
                        .map_err(|e| format!("the device was not reset: {e}"))
                })
                .and_then(|_| all_verified_in(r, "reset", 1))
                .and_then(|_| clean(r))
            },
        },
        // --- faults: level 4, step 7
        Check {
            id: "faults_handled",
            name: "every injected fault handled as docs/faults.md says",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/faults.md",
            chapter: None,
            boot: "faults",
            judge: faults_handled,
        },
        Check {
            id: "faults_explained",
            name: "no request fails without a fault",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/contract.md#4--faults",
            chapter: Some("docs/tutorial/07-errors.md"),
            boot: "faults",
            judge: |r, _| {
                let (faults, xfers) = (campaign_faults(r), campaign_xfers(r));
                let u = unexplained_failures(&faults, &xfers);
                ensure(u.is_empty(), format!("{} unexplained failures", u.len()))
            },
        },
        Check {
            id: "faults_clean",
            name: "the run under faults is clean",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/contract.md#4--faults",
            chapter: Some("docs/tutorial/07-errors.md"),
            boot: "faults",
            judge: |r, _| clean(r),
        },
        Check {
            id: "fatal",
            name: "a fatal error: the request fails with EIO at once, the device is reset, all goes on",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/faults.md",
            chapter: Some("docs/tutorial/07-errors.md#fatal-errors"),
            boot: "fatal",
            judge: |r, _| fatal(r),
        },
        Check {
            id: "stall",
            name: "a stalled request times out with ETIMEDOUT and its queue works again",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/faults.md",
            chapter: Some("docs/tutorial/07-errors.md#timeouts"),
            boot: "stall",
            judge: |r, _| stall(r),
        },
        Check {
            id: "error_paths",
            name: "error paths give back what they took (40 failed requests, then one more)",
            level: Some(4),
            steps: Some(Steps::From(7)),
            see: "docs/contract.md#4--faults",
            chapter: Some("docs/tutorial/07-errors.md#statuses"),
            boot: "error_paths",
            judge: |r, _| error_paths(r),
        },
        Check {
            id: "by_tag",
            name: "completions are matched by tag, not by position",
            level: Some(4),
            steps: None,
            see: "docs/datasheet.md#completion-16-bytes",
            chapter: None,
            boot: "reorder",
            judge: |r, _| {
                all_verified(r, 2)
                    .and_then(|_| match r.all::<Xfer>().iter().find(|x| x.bytes != x.len) {
                        // the data may well be right (the device wrote it before the wrong
                        // completion was read), but the completion was another request's
                        Some(x) => Err(format!(
                            "a {}-byte request was completed with another's completion ({} bytes)",
                            x.len, x.bytes
                        )),
                        None => Ok(()),
                    })
                    .and_then(|_| clean(r))
            },
        },
        Check {
            id: "removal",
            name: "surprise removal: requests fail with ENODEV, rmmod works",
            level: None,
            steps: Some(Steps::From(7)),
            see: "docs/tutorial/07-errors.md#surprise-removal",
            chapter: None,
            boot: "removal",
            judge: |r, _| removal(r),
        },
        // --- teardown: level 5, step 8
        Check {
            id: "stale_bytes",
            name: "no caller gets bytes another process's request left behind",
            level: Some(4),
            steps: None,
            see: "docs/contract.md#4--faults",
            chapter: None,
            boot: "stale",
            judge: |r, _| match r.all::<StaleBytes>().first() {
                None => Err(format!("the stale-bytes scenario did not report{}", driver_complaints(r))),
                Some(s) if s.seeded == 0 => Err(format!(
                    "another process's COPYs (the seeding) all failed{}",
                    driver_complaints(r)
                )),
                Some(s) if s.completed == 0 => Err(format!(
                    "none of {} READs completed OK (a silently short transfer reports success)",
                    s.reads
                )),
                Some(s) if s.leaked > 0 => Err(format!(
                    "{} of {} READs of {} bytes returned another process's data ({} of the first one's bytes were its secret): the device moved 16 bytes and claimed {}, and the driver handed back what an earlier request left in its buffer. Clear (or fill from the caller's buffer) what the device may write before posting, as swiotlb does",
                    s.leaked, s.completed, s.len, s.secret_bytes, s.len
                )),
                Some(_) => Ok(()),
            },
        },
        Check {
            id: "unbind_held",
            name: "unbind releases the DMA memory while another process holds the file",
            level: Some(5),
            steps: None,
            see: "docs/contract.md#5--teardown",
            chapter: None,
            boot: "unbind_held",
            judge: |r, _| match r.all::<UnbindHeld>().first() {
                None => Err(format!("the unbind-while-held scenario did not report{}", driver_complaints(r))),
                Some(h) if h.calls_after == 0 => Err("the holder made no call after the unbind".into()),
                Some(h) if h.enodev != h.calls_after => Err(format!(
                    "{} of the holder's {} calls after the unbind did not fail with ENODEV (the first: {}): an unbound device answers nothing",
                    h.calls_after - h.enodev,
                    h.calls_after,
                    if h.other_errno < 0 { "it succeeded".to_string() } else { format!("errno {}", h.other_errno) }
                )),
                Some(h) if h.entries_while_held.is_some_and(|n| n > 0) => Err(format!(
                    "{} DMA allocations or mappings of the device were still live after the unbind while the file was open ({} after it closed): the DMA memory must go at unbind, not at the last close",
                    h.entries_while_held.unwrap_or(0),
                    h.entries_after_close.map_or("?".into(), |n| n.to_string())
                )),
                Some(_) => clean(r),
            },
        },
        Check {
            id: "teardown",
            name: "unbind with requests in flight: every waiter gets ENODEV, nothing touches the reset device, a rebind works",
            level: Some(5),
            steps: Some(Steps::From(8)),
            see: "docs/driver.md#binding",
            chapter: Some("docs/tutorial/08-teardown.md"),
            boot: "teardown",
            judge: |r, _| {
                let b = r.all::<UnbindBusy>();
                if b.len() != 6 {
                    return Err(format!(
                        "{} of the 6 unbinds under load finished{}",
                        b.len(),
                        driver_complaints(r)
                    ));
                }
                match b
                    .iter()
                    .position(|x| x.other_errors != 0 || x.enodev != x.threads)
                {
                    Some(i) => Err(format!(
                        "unbind {} of 6: of {} threads waiting on requests, {} got ENODEV and {} another error (every waiter must get ENODEV){}",
                        i + 1,
                        b[i].threads,
                        b[i].enodev,
                        b[i].other_errors,
                        driver_complaints(r)
                    )),
                    None => clean(r),
                }
            },
        },
        Check {
            id: "unbind_stalled",
            name: "unbind releases a request stuck in the device at once, with ENODEV",
            level: None,
            steps: Some(Steps::From(8)),
            see: "docs/tutorial/08-teardown.md#releasing-every-waiter",
            chapter: None,
            boot: "unbind_stalled",
            judge: |r, _| match r.all::<UnbindStalled>().first() {
                None => Err(format!(
                    "the scenario did not finish{}",
                    driver_complaints(r)
                )),
                // the request's own timeout is 30 s: half of it is "not at once" by any measure
                Some(s) if s.errno != libc::ENODEV || s.waited_ms > 15_000 => Err(format!(
                    "the waiter waited {} ms (its own timeout is 30000 ms) and got errno {}{}: unbind must fail every waiting request with ENODEV at once (fail them before it waits for them), not leave them to their timeouts",
                    s.waited_ms,
                    s.errno,
                    errno_hint(s.errno)
                )),
                Some(_) => all_verified_in(r, "unbind_stalled", 1).and_then(|_| clean(r)),
            },
        },
        // --- DMA ownership: level 6, step 8
        Check {
            id: "ownership",
            name: "never touches memory the device owns",
            level: Some(6),
            steps: Some(Steps::From(8)),
            see: "docs/oracle.md",
            chapter: None,
            boot: "ownership",
            judge: |r, _| clean(r),
        },
        // --- streaming DMA: step 9
        Check {
            id: "streaming_selftest",
            name: "the streaming self-test with every mapping bounced: each round the CPU reads the device's bytes",
            level: None,
            steps: Some(Steps::From(9)),
            see: "docs/tutorial/09-streaming.md#the-cycle",
            chapter: Some("docs/tutorial/09-streaming.md#the-cycle"),
            boot: "ladder_bounce",
            judge: |r, _| selftests_verified(r).and_then(|()| clean(r)),
        },
    ]
}

/// The device's account of a direct transfer that timed out: after the stalled transfer, the
/// driver reset the device before it started another one (a transfer that never finished still
/// owns its buffers, and the device refuses a new command while it runs).
fn reset_after_stall(r: &Run) -> Graded {
    let events: Vec<&Event> = r.events.iter().map(|rec| &rec.event).collect();
    let Some(stall) = events
        .iter()
        .position(|e| matches!(e, Event::Fault(f) if f.queue == abi::DIRECT_QUEUE))
    else {
        return Err("the device never stalled a transfer (the fault rule did not fire)".into());
    };
    for e in &events[stall + 1..] {
        match e {
            Event::Reset { queue: None, .. } => return Ok(()),
            Event::Fetch { queue, .. } if *queue == abi::DIRECT_QUEUE => break,
            _ => {}
        }
    }
    let refused = events[stall + 1..].iter().find_map(|e| match e {
        Event::Error { what, .. } => Some(what.as_str()),
        _ => None,
    });
    Err(format!(
        "after the stalled transfer failed with ETIMEDOUT, the driver started another without resetting the device: the device's log has no reset between them{}. The device still runs a transfer that timed out, and owns its buffers: reset it (DEV_CTRL.RESET) before returning ETIMEDOUT",
        refused.map_or(String::new(), |w| format!(" (and it says: {w})"))
    ))
}

/// The driver binding reported `when` ("loaded", "unloaded").
fn bound(r: &Run, when: &str) -> Option<Bound> {
    r.all::<Bound>()
        .into_iter()
        .find(|b| b.when == when)
        .cloned()
}

/// Descriptors the device fetched on queue `q` (the direct block: `abi::DIRECT_QUEUE`).
fn fetched_on(r: &Run, q: u16) -> usize {
    r.events("fetch")
        .iter()
        .filter(|e| e.queue() == Some(q))
        .count()
}

/// The queues IOC_INFO reported (0 without an answer).
fn queues(r: &Run) -> u32 {
    r.all::<Info>().first().map_or(0, |i| i.queues)
}

fn concurrent_ok(r: &Run) -> Graded {
    r.all::<Concurrent>()
        .first()
        .map_or(Err(format!("not run{}", driver_complaints(r))), |c| {
            // the first failure the threads reported, in the user's terms
            let first = r
                .all::<Xfer>()
                .into_iter()
                .find(|x| !x.ok())
                .map(|x| {
                    format!(
                        "; the first: {} of {} bytes on queue {}, errno {}{}, status {} {}",
                        x.op,
                        x.len,
                        x.queue,
                        x.errno,
                        errno_hint(x.errno),
                        status_name(x.status),
                        x.detail
                    )
                })
                .unwrap_or_default();
            ensure(
                c.failed == 0,
                format!(
                    "{} of {} failed{first}{}",
                    c.failed,
                    c.verified + c.failed,
                    device_account(r)
                ),
            )
        })
}

fn vectors_fire(r: &Run) -> Graded {
    let nq = queues(r);
    if nq == 0 {
        return Err(format!(
            "not looked at: IOC_INFO reported no queues (did probe finish?){}",
            driver_complaints(r)
        ));
    }
    let irq = |q: u32| {
        r.events("irq")
            .iter()
            .any(|e| matches!(e, Event::Irq { vector, delivered: true } if u32::from(*vector) == q))
    };
    let lines = r
        .all::<Interrupts>()
        .first()
        .map(|i| i.lines.clone())
        .unwrap_or_default();
    let firing = lines.iter().filter(|l| l.1 > 0).count();
    match (0..nq).find(|&q| !irq(q)) {
        Some(q) => Err(format!("the device raised no interrupt on vector {q}")),
        None => ensure(
            firing >= nq as usize,
            format!(
                "{firing} of the driver's {} interrupt lines counted interrupts, expected {nq}",
                lines.len()
            ),
        ),
    }
}

fn sg_lists(r: &Run) -> Graded {
    all_verified_in(r, "sg", 16)?;
    let lists = r
        .events("fetch")
        .iter()
        .filter(|e| {
            matches!(e, Event::Fetch { flags, .. }
                if flags & (abi::DESC_SRC_SG | abi::DESC_DST_SG) != 0)
        })
        .count();
    match r
        .all::<Xfer>()
        .iter()
        .find(|x| x.scenario == "sg" && x.segments < 16)
    {
        Some(x) => Err(format!(
            "a {}-byte {} asked for at least 16 segments and used {}",
            x.len, x.op, x.segments
        )),
        None => ensure(
            lists >= 16,
            format!("the device saw {lists} descriptors with SG lists"),
        ),
    }
}

/// The campaign's verdicts: every fault handled as its verdict says; the card gets a note of
/// them kind by kind.
fn faults_handled(r: &Run, ctx: &Ctx) -> Graded {
    let (faults, xfers) = (campaign_faults(r), campaign_xfers(r));
    let verdicts = judge(&faults, &xfers);
    note_verdicts(ctx, &verdicts);
    let failed: Vec<_> = verdicts.iter().filter(|v| !v.pass).collect();
    match failed.first() {
        _ if verdicts.is_empty() => Err(format!("no fault was injected{}", driver_complaints(r))),
        Some(v) => Err(format!(
            "{} of {}: {} on queue {} tag {}: expected {}, observed {}",
            failed.len(),
            verdicts.len(),
            v.kind,
            v.queue,
            v.tag,
            v.expected,
            v.observed
        )),
        None => Ok(()),
    }
}

/// Puts a campaign's verdicts on the card, kind by kind: "stall 2/2 · corrupt 3/3 · ...".
fn note_verdicts(ctx: &Ctx, verdicts: &[Verdict]) {
    let mut kinds: Vec<(&str, usize, usize)> = Vec::new();
    for v in verdicts {
        match kinds.iter_mut().find(|k| k.0 == v.kind) {
            Some(k) => {
                k.1 += usize::from(v.pass);
                k.2 += 1;
            }
            None => kinds.push((&v.kind, usize::from(v.pass), 1)),
        }
    }
    kinds.sort();
    let text = kinds
        .iter()
        .map(|(k, p, n)| format!("{k} {p}/{n}"))
        .collect::<Vec<_>>()
        .join(" · ");
    ctx.notes
        .borrow_mut()
        .push((format!("fault verdicts ({}_faults)", ctx.grading), text));
}

/// A fatal device error on the first request of queue 1, in 12 requests over every queue: that
/// request must fail with EIO (the driver acted on the error vector instead of waiting for its
/// timeout, which would say ETIMEDOUT), and every other request must succeed (the driver reset
/// the device and reprogrammed its queues).
fn fatal(r: &Run) -> Graded {
    let (faults, xfers) = (campaign_faults(r), campaign_xfers(r));
    let verdicts = judge(&faults, &xfers);
    let unexplained = unexplained_failures(&faults, &xfers);
    match verdicts.first() {
        None => Err(format!(
            "the fault was never injected{}",
            driver_complaints(r)
        )),
        Some(v) if !v.pass => Err(format!("expected {}, observed {}", v.expected, v.observed)),
        Some(_) if !unexplained.is_empty() => Err(format!(
            "{} later requests failed (was the device reset and its queues reprogrammed?)",
            unexplained.len()
        )),
        Some(_) => clean(r),
    }
}

/// The device stalls queue 1's first request (2 s timeout): it must come back as ETIMEDOUT,
/// and queue 1 must work again afterwards.
fn stall(r: &Run) -> Graded {
    match r.all::<Stalled>().first() {
        None => Err(format!("the scenario did not run{}", driver_complaints(r))),
        Some(s) if !s.returned => Err(format!(
            "{NEVER_RETURNED}: not after {} ms, its timeout being 2000 ms (does the driver time out at all?)",
            s.ms
        )),
        Some(s) if s.errno != libc::ETIMEDOUT => Err(format!(
            "the stalled request returned errno {}{}, expected ETIMEDOUT",
            s.errno,
            errno_hint(s.errno)
        )),
        Some(_) => all_verified_in(r, "after_stall", 1)
            .map_err(|e| format!("the queue stayed stuck after the timeout (was it reset?): {e}"))
            .and_then(|_| clean(r)),
    }
}

/// 40 requests of 64 KiB fail on queue 0 (an injected error status), more bounce memory in all
/// than a queue has: a request after them must still succeed, or an error path kept what it
/// took.
fn error_paths(r: &Run) -> Graded {
    let failed = r
        .all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "error_paths")
        .collect::<Vec<_>>();
    match failed.iter().position(|x| x.errno != libc::EIO) {
        Some(i) => Err(format!(
            "request {} of {}: errno {}{}, expected EIO for the device's error status (did the earlier failures keep their buffers?)",
            i + 1,
            failed.len(),
            failed[i].errno,
            errno_hint(failed[i].errno)
        )),
        None => all_verified_in(r, "after_errors", 1)
            .map_err(|e| format!("after 40 failed requests: {e}"))
            .and_then(|_| clean(r)),
    }
}

fn removal(r: &Run) -> Graded {
    let after = r.all::<AfterRemoval>();
    let told =
        |a: &AfterRemoval| format!("errno {}{} after {} ms", a.errno, errno_hint(a.errno), a.ms);
    if after.len() != 4 {
        return Err(format!(
            "{} of the 4 requests after the removal answered{}",
            after.len(),
            driver_complaints(r)
        ));
    }
    ensure(
        [libc::ENODEV, libc::ETIMEDOUT].contains(&after[0].errno),
        format!(
            "the first request after the device vanished got {}: expected ENODEV (or ETIMEDOUT, if it was already waiting)",
            told(after[0])
        ),
    )?;
    if let Some(a) = after[1..].iter().find(|a| a.errno != libc::ENODEV) {
        return Err(format!(
            "a later request got {}: once the device is known gone every request must fail with ENODEV at once",
            told(a)
        ));
    }
    ensure(
        r.all::<Rmmod>().first().is_some_and(|m| m.ok),
        "rmmod failed after the removal",
    )?;
    clean(r)
}

/// The ladder's DMA mask check: the kernel's mask for the device (sysfs `dma_mask_bits`, what
/// `dma_set_mask_and_coherent` set) is 64 bits, and IOC_INFO says the same. A driver that never
/// sets the mask keeps the PCI default of 32 bits, whatever it reports.
fn dma_mask_is_64(i: &Info) -> Result<(), String> {
    let (said, held) = (i.dma_mask_bits, i.kernel_dma_mask_bits);
    if held != 0 && held != 64 {
        return Err(format!(
            "the kernel holds a {held}-bit DMA mask for the device (sysfs dma_mask_bits{}): \
             set it with dma_set_mask_and_coherent(DmaMask::new::<64>()) in probe",
            if held == 32 {
                ", the PCI default: the driver never set it"
            } else {
                ""
            }
        ));
    }
    if held != 0 && said != held {
        return Err(format!(
            "IOC_INFO reports a {said}-bit DMA mask, the kernel holds {held} bits: report the mask the driver set"
        ));
    }
    ensure(
        said == 64,
        format!("IOC_INFO reports a {said}-bit DMA mask"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{boots, Mode};
    use super::*;

    /// Ids are unique, every check is graded somewhere, names its boot, and each level and
    /// step has checks.
    #[test]
    fn the_table_is_consistent() {
        let t = table();
        let mut ids: Vec<&str> = t.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), t.len(), "two checks share an id");
        for c in t {
            assert!(
                c.level.is_some() || c.steps.is_some(),
                "{} is graded nowhere",
                c.id
            );
            let _ = boots::by_name(c.boot);
        }
        for level in 1..=6 {
            let m = Mode::Levels {
                from: level,
                to: level,
            };
            assert!(
                t.iter().any(|c| c.selected(m)),
                "level {level} has no check"
            );
        }
        for step in 1..=crate::tutorial::STEPS {
            assert!(
                t.iter().any(|c| c.selected(Mode::Step(step))),
                "step {step}"
            );
        }
        // a step grades what the steps before it did, except what it replaces
        let at = |s| t.iter().filter(|c| c.selected(Mode::Step(s))).count();
        assert!(at(9) > at(8) && at(8) > at(7) && at(7) > at(6));
    }

    /// Every mistake of the tutorial's catalogue names a check that its step grades.
    #[test]
    fn every_catalogued_mistake_names_a_check_its_step_grades() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        for m in crate::tutorial::mistakes(&root).unwrap() {
            let check = table()
                .iter()
                .find(|c| c.id == m.check)
                .unwrap_or_else(|| panic!("{}: no check {}", m.id, m.check));
            assert!(
                check.steps.is_some_and(|s| s.graded_at(m.step)),
                "{}: step {} does not grade {}",
                m.id,
                m.step,
                m.check
            );
        }
    }

    /// The checks a contract level and a ladder step share are one entry each: no two
    /// checks say the same thing.
    #[test]
    fn no_check_is_written_twice() {
        let t = table();
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert!(
                    a.name != b.name || a.boot != b.boot,
                    "{} and {} are the same check",
                    a.id,
                    b.id
                );
            }
        }
    }
}
