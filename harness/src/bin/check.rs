//! `dmalab check --driver path/to/dmalab.ko`: grades a driver for the dmalab device that you
//! bring (a rewrite, a C driver, a driver on a newer `kernel::dma`). It boots the VM with that
//! module instead of ours, runs the checks of docs/contract.md level by level, and prints a
//! report card; the exit status says pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use dmalab_abi as abi;
use dmalab_device::eventlog::Event;
use dmalab_harness::vm::{run, Run, VmOptions};
use dmalab_report::{Concurrent, Info, Insmod, Refused, Rmmod, ScenarioEnd, Stats, Xfer};

#[derive(clap::Parser, Debug)]
#[command(about = "Grade a driver for the dmalab device (docs/contract.md)")]
struct Args {
    /// The module under test, built against the guest kernel (make prints its build directory)
    #[arg(long)]
    driver: PathBuf,
    /// Run the checks of levels 1..=N only (1 binds, 2 transfers, 3 refusals, 4 faults,
    /// 5 teardown, 6 DMA ownership)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=6))]
    level: u32,
    /// Start at level N instead of 1 (to look at one level of a driver known to pass the
    /// earlier ones)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=6))]
    from: u32,
    /// Grade a tutorial module instead (docs/tutorial/): the checks of ladder steps 1..=N,
    /// which need only the part of the contract those steps build
    #[arg(long, conflicts_with = "level", value_parser = clap::value_parser!(u32).range(1..=8))]
    step: Option<u32>,
    /// Boot this kernel image (bzImage) instead of the one the build made; the module must be
    /// built against it, and its configuration must have what the checks read (see
    /// guest-kernel/dmalab.config: DMA-API debug, lockdep, kmemleak, the IOMMU)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Extra guest kernel command line (module parameters as dmalab_module.NAME=VALUE)
    #[arg(long, default_value = "")]
    append: String,
    /// Name of this grading: its VMs keep their logs in target/e2e/NAME_<check>, its initramfs
    /// and report card are in target/NAME (several gradings at once need different names)
    #[arg(long, default_value = "check", value_parser = run_name)]
    run_name: String,
}

/// A grading's name becomes directory names: letters, digits, `-` and `_` only.
fn run_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| s.to_string())
        .ok_or_else(|| "1 to 64 letters, digits, '-' or '_'".into())
}

/// One graded check.
struct Check {
    /// Its level (or ladder step, with `--step`).
    level: u32,
    name: &'static str,
    /// Where the expected behaviour is explained.
    see: &'static str,
    result: Result<(), String>,
}

/// Runs one VM for `name` with `scenarios`, tuned by `tune`.
fn boot(
    args: &Args,
    initramfs: &Path,
    name: &str,
    scenarios: &str,
    tune: impl FnOnce(&mut VmOptions),
) -> Run {
    let mut o = VmOptions::new(&format!("{}_{name}", args.run_name), scenarios);
    o.initramfs = Some(initramfs.to_path_buf());
    o.kernel = args.kernel.clone();
    o.append = args.append.clone();
    tune(&mut o);
    eprintln!("dmalab check: {name} ...");
    run(&o)
}

/// Everything `Run::assert_clean` checks, as a result instead of a panic.
fn clean(r: &Run) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.assert_clean())).map_err(|e| {
        // the message's first line says what, the next one names the first instance
        e.downcast_ref::<String>()
            .map(|s| {
                let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
                let what = lines.next().unwrap_or("");
                match lines.next() {
                    Some(first) if !first.starts_with("logs kept") => format!("{what} {first}"),
                    _ => what.to_string(),
                }
            })
            .unwrap_or_else(|| "the run was not clean".into())
    })
}

fn ensure(cond: bool, why: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why.into())
    }
}

/// Every transfer the agent reported, at least `min` of them, submitted, completed OK and
/// verified byte for byte.
fn all_verified(r: &Run, min: usize) -> Result<(), String> {
    verified_among(r, r.all::<Xfer>(), min)
}

/// The kernel's lines about the dmalab device or driver that say something went wrong (a probe
/// that failed, a `dev_err!`), for a failure's reason.
fn driver_complaints(r: &Run) -> String {
    let lines: Vec<&str> = r
        .console
        .lines()
        .filter(|l| !l.contains(dmalab_report::PREFIX))
        .filter(|l| l.contains("dmalab"))
        .filter(|l| {
            ["fail", "error", "not ", "TODO", "refus"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(|l| l.split_once("] ").map_or(l, |(_, m)| m).trim())
        .take(2)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the kernel log says: {}", lines.join(" / "))
    }
}

/// What an errno from a tutorial module most likely means.
fn errno_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => " (ENOSYS: a TODO of the skeleton still returns its stub)",
        libc::ENODEV => " (ENODEV: the device or its buffers are gone, or were never set up)",
        libc::ETIMEDOUT => {
            " (ETIMEDOUT: DONE or a completion never came; was the transfer started?)"
        }
        libc::EINVAL => " (EINVAL: the driver refused the request)",
        libc::EBUSY => " (EBUSY: the driver ran out of DMA memory for the request)",
        _ => "",
    }
}

/// As [`all_verified`], for the transfers of one scenario.
fn all_verified_in(r: &Run, scenario: &str, min: usize) -> Result<(), String> {
    let x = r
        .all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == scenario);
    verified_among(r, x.collect(), min)
}

fn verified_among(r: &Run, x: Vec<&Xfer>, min: usize) -> Result<(), String> {
    match x.iter().find(|x| !x.ok()) {
        Some(bad) => Err(format!(
            "{} of {} bytes on queue {}: errno {}{}, status {}, verified {} {}",
            bad.op,
            bad.len,
            bad.queue,
            bad.errno,
            errno_hint(bad.errno),
            bad.status,
            bad.verified,
            bad.detail
        )),
        None => ensure(
            x.len() >= min,
            format!(
                "{} transfers reported, expected {min} (the agent stops at the first failure){}",
                x.len(),
                driver_complaints(r)
            ),
        ),
    }
}

/// A fatal device error on the first request of queue 1, in 24 requests over every queue: that
/// request must fail with EIO (the driver acted on the error vector instead of waiting for its
/// timeout, which would say ETIMEDOUT), and every other request must succeed (the driver reset
/// the device and reprogrammed its queues).
fn fatal_check(args: &Args, initramfs: &Path, name: &str) -> Result<(), String> {
    let r = boot(args, initramfs, name, "load,campaign,unload", |o| {
        o.faults =
            Some("[[rule]]\nname = \"fatal\"\nkind = \"fatal\"\nqueue = 1\ntimes = 1\n".into());
        // one request at a time: "every other request succeeds" is exact only then (a fatal
        // error fails every request in flight)
        o.append = format!(
            "dmalab.seed=3 dmalab.ops=24 dmalab.mode=serial {}",
            o.append
        );
    });
    let faults = r.faults();
    let xfers = dmalab_harness::campaign::campaign_xfers(&r);
    let verdicts = dmalab_harness::verdict::judge(&faults, &xfers);
    let unexplained = dmalab_harness::verdict::unexplained_failures(&faults, &xfers);
    match verdicts.first() {
        None => Err(format!(
            "the fault was never injected{}",
            driver_complaints(&r)
        )),
        Some(v) if !v.pass => Err(format!("expected {}, observed {}", v.expected, v.observed)),
        Some(_) if !unexplained.is_empty() => Err(format!(
            "{} later requests failed (was the device reset and its queues reprogrammed?)",
            unexplained.len()
        )),
        Some(_) => clean(&r),
    }
}

/// kmemleak's verdict on a run that ended with the `kmemleak` scenario.
fn leaks(r: &Run) -> Result<(), String> {
    match r.all::<dmalab_report::Leaks>().first() {
        None => Err("kmemleak was not read".into()),
        Some(l) => match l.suspects {
            None => Err("kmemleak is off in this kernel (boot with kmemleak=on)".into()),
            Some(0) => Ok(()),
            Some(n) => Err(format!(
                "{n} unreferenced object(s); the first: {}",
                l.first
            )),
        },
    }
}

/// A WRITE past the internal memory, a bad opcode, a too-long request, then `IOC_RESET`:
/// (INTERNAL_RANGE became ERANGE, the driver refused the other two with EINVAL, the reset
/// reached the device and it works afterwards in a clean run).
fn refusal_checks(args: &Args, initramfs: &Path, name: &str) -> [Graded; 3] {
    let r = boot(args, initramfs, name, "load,errors,reset,unload", |_| {});
    let f = r.all::<Refused>();
    let range = ensure(
        f.first().is_some_and(|x| x.errno == libc::ERANGE),
        format!("{:?}{}", f.first(), driver_complaints(&r)),
    );
    let invalid = ensure(
        f.len() == 3 && f[1].errno == libc::EINVAL && f[2].errno == libc::EINVAL,
        format!("{f:?}"),
    );
    let outcome = r.all::<dmalab_report::ResetOutcome>();
    let reset = ensure(
        outcome.first().is_some_and(|x| x.ok),
        format!("IOC_RESET: {:?}", outcome.first().map(|x| &x.error)),
    )
    .and_then(|_| {
        all_verified_in(&r, "reset_cleared", 1)
            .map_err(|e| format!("the device was not reset: {e}"))
    })
    .and_then(|_| all_verified_in(&r, "reset", 1))
    .and_then(|_| clean(&r));
    [range, invalid, reset]
}

/// The stall check, then (unless it found that the driver never times out, which would hang
/// the campaign's VM until the harness gave up on it) the campaign's three verdicts.
fn fault_checks(args: &Args, initramfs: &Path, prefix: &str) -> (Graded, Graded, Graded, Graded) {
    let stall = stall_check(args, initramfs, &format!("{prefix}stall"));
    let (handled, explained, clean_run) = match &stall {
        Err(e) if e.contains(NEVER_RETURNED) => {
            let no = || Err(format!("not run: {NEVER_RETURNED} (the stall check)"));
            (no(), no(), no())
        }
        _ => campaign_checks(args, initramfs, &format!("{prefix}faults")),
    };
    (stall, handled, explained, clean_run)
}

/// How the stall check says that the driver never gave up on a request.
const NEVER_RETURNED: &str = "a stalled request never returned";

/// One check's outcome: passed, or why not.
type Graded = Result<(), String>;

/// A seeded campaign of 120 requests with every kind of fault of `campaigns/mix.toml`:
/// (every fault handled as its verdict says, no request failing without a fault, a clean run).
fn campaign_checks(args: &Args, initramfs: &Path, name: &str) -> (Graded, Graded, Graded) {
    let rules =
        std::fs::read_to_string(dmalab_harness::artifacts::root().join("campaigns/mix.toml"))
            .unwrap_or_default();
    let r = boot(args, initramfs, name, "load,campaign,unload", |o| {
        o.faults = Some(dmalab_harness::campaign::with_seed(&rules, 1));
        o.append = format!("dmalab.seed=1 dmalab.ops=120 {}", o.append);
    });
    let faults = r.faults();
    let xfers = dmalab_harness::campaign::campaign_xfers(&r);
    let verdicts = dmalab_harness::verdict::judge(&faults, &xfers);
    let failed: Vec<_> = verdicts.iter().filter(|v| !v.pass).collect();
    let handled = match failed.first() {
        _ if verdicts.is_empty() => Err(format!("no fault was injected{}", driver_complaints(&r))),
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
    };
    let u = dmalab_harness::verdict::unexplained_failures(&faults, &xfers);
    let explained = ensure(u.is_empty(), format!("{} unexplained failures", u.len()));
    note_verdicts(name, &verdicts);
    (handled, explained, clean(&r))
}

/// Notes printed under the report card: (heading, text).
static NOTES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Puts a campaign's verdicts on the card, kind by kind: "stall 2/2 · corrupt 3/3 · ...".
fn note_verdicts(campaign: &str, verdicts: &[dmalab_harness::verdict::Verdict]) {
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
    NOTES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((format!("fault verdicts ({campaign})"), text));
}

/// The device stalls queue 1's first request (2 s timeout): it must come back as ETIMEDOUT,
/// and queue 1 must work again afterwards.
fn stall_check(args: &Args, initramfs: &Path, name: &str) -> Result<(), String> {
    let r = boot(args, initramfs, name, "load,stall_recovery,unload", |o| {
        o.faults =
            Some("[[rule]]\nname = \"stall\"\nkind = \"stall\"\nqueue = 1\ntimes = 1\n".into());
    });
    match r.all::<dmalab_report::Stalled>().first() {
        None => Err(format!("the scenario did not run{}", driver_complaints(&r))),
        Some(s) if !s.returned => Err(format!(
            "{NEVER_RETURNED}: not after {} ms, its timeout being 2000 ms (does the driver time out at all?)",
            s.ms
        )),
        Some(s) if s.errno != libc::ETIMEDOUT => Err(format!(
            "the stalled request returned errno {}{}, expected ETIMEDOUT",
            s.errno,
            errno_hint(s.errno)
        )),
        Some(_) => all_verified_in(&r, "after_stall", 1)
            .map_err(|e| format!("the queue stayed stuck after the timeout (was it reset?): {e}"))
            .and_then(|_| clean(&r)),
    }
}

/// 40 requests of 64 KiB fail on queue 0 (an injected error status), more bounce memory in all
/// than a queue has: a request after them must still succeed, or an error path kept what it
/// took.
fn error_paths_check(args: &Args, initramfs: &Path, name: &str) -> Result<(), String> {
    let r = boot(args, initramfs, name, "load,error_paths,unload", |o| {
        o.faults = Some(
            "[[rule]]\nname = \"fail\"\nkind = \"error_status\"\nqueue = 0\nsize = [65536, 65536]\n"
                .into(),
        );
    });
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
        None => all_verified_in(&r, "after_errors", 1)
            .map_err(|e| format!("after 40 failed requests: {e}"))
            .and_then(|_| clean(&r)),
    }
}

/// The ownership oracle on, and every completion 5 ms late: the device owns each request's
/// memory long enough that a driver touching it meanwhile is caught every time, not only when
/// it happens to be quicker than the device. (The boots using it run `concurrent` too: memory
/// handed on to the next request too early only shows when requests overlap.)
fn oracle_with_late_completions(o: &mut VmOptions) {
    o.oracle = true;
    o.faults = Some("[[rule]]\nname = \"late\"\nkind = \"delay_completion\"\nms = 5\n".into());
}

/// The ladder's checks (`--step N`): steps 1..=N, in one boot. A step's own mechanism (the
/// direct-transfer registers in step 2, rings in step 3) is checked only when it is the step
/// graded: later steps move on from it.
fn ladder_checks(args: &Args, initramfs: &Path, step: u32) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |level, name, see, result| {
        out.push(Check {
            level,
            name,
            see,
            result,
        })
    };
    let r = boot(
        args,
        initramfs,
        "step1",
        "kmemleak_clear,bind,kmemleak",
        |o| o.append = format!("kmemleak=on {}", o.append),
    );
    let bound = |when: &str| {
        r.all::<dmalab_report::Bound>()
            .into_iter()
            .find(|b| b.when == when)
            .cloned()
    };
    let loaded = bound("loaded");
    add(1, "the module loads", "docs/tutorial/01-bind.md", {
        ensure(
            r.all::<Insmod>().first().is_some_and(|i| i.ok),
            format!(
                "insmod failed: {:?}",
                r.all::<Insmod>().first().map(|i| &i.error)
            ),
        )
    });
    add(
        1,
        "it binds the dmalab device",
        "docs/tutorial/01-bind.md#binding",
        {
            match &loaded {
                Some(b) if b.driver.as_deref() == Some("dmalab") => Ok(()),
                Some(b) => Err(format!(
                    "the device is bound to {:?}, not to dmalab: probe() failed{}",
                    b.driver,
                    driver_complaints(&r)
                )),
                None => Err(format!(
                    "not looked at: the module did not load{}",
                    driver_complaints(&r)
                )),
            }
        },
    );
    add(
        1,
        "it enables memory decoding and bus mastering",
        "docs/tutorial/01-bind.md#enabling",
        match &loaded {
            Some(b) => ensure(
                b.enabled(),
                format!(
                    "PCI command register {:#06x}: bits 1 and 2 must be set",
                    b.command
                ),
            ),
            None => Err("the module did not load".into()),
        },
    );
    let version = format!("v{}.{}", abi::VERSION_MAJOR, abi::VERSION_MINOR);
    add(
        1,
        "it reads the VERSION register and logs the version",
        "docs/tutorial/01-bind.md#identity",
        ensure(
            r.console.lines().any(|l| {
                l.contains("dmalab") && l.contains(&version) && !l.contains(dmalab_report::PREFIX)
            }),
            format!("no kernel log line from the driver says {version}"),
        ),
    );
    add(
        1,
        "it unbinds cleanly",
        "docs/tutorial/01-bind.md#unbinding",
        {
            let rm = r.all::<Rmmod>();
            ensure(
                rm.first().is_some_and(|m| m.ok && !m.still_loaded),
                format!("rmmod failed: {:?}", rm.first().map(|m| &m.error)),
            )
            .and_then(|_| {
                ensure(
                    bound("unloaded").is_some_and(|b| b.driver.is_none()),
                    "the device is still bound after rmmod",
                )
            })
            .and_then(|_| clean(&r))
        },
    );
    add(
        1,
        "kmemleak finds nothing leaked after the unbind",
        "docs/tutorial/01-bind.md#unbinding",
        leaks(&r),
    );
    if step >= 2 {
        let r = boot(
            args,
            initramfs,
            &format!("step{step}"),
            if step >= 5 {
                "load,info,basic,queues,concurrent,interrupts,transfers,sg,unload"
            } else if step >= 4 {
                "load,info,basic,queues,concurrent,interrupts,unload"
            } else {
                "load,basic,unload"
            },
            |_| {},
        );
        add(
            2,
            "/dev/dmalab0 appears",
            "docs/tutorial/02-direct-dma.md#the-misc-device",
            {
                ensure(
                    !r.all::<ScenarioEnd>()
                        .iter()
                        .any(|e| e.scenario == "load" && !e.completed),
                    format!("/dev/dmalab0 never appeared{}", driver_complaints(&r)),
                )
            },
        );
        add(
            2,
            "every opcode at 1 B to 64 KiB, byte for byte",
            "docs/datasheet.md#opcodes",
            all_verified_in(&r, "basic", 20),
        );
        add(
            2,
            "100 transfers in a row",
            "docs/tutorial/02-direct-dma.md",
            all_verified_in(&r, "basic_wrap", 100),
        );
        let on = |q: u16| {
            r.events("fetch")
                .iter()
                .filter(|e| e.queue() == Some(q))
                .count()
        };
        if step == 2 {
            add(
                2,
                "the transfers used the direct-transfer registers",
                "docs/datasheet.md#direct-transfers",
                ensure(
                    on(abi::DIRECT_QUEUE) >= 120,
                    format!("the device ran {} direct transfers", on(abi::DIRECT_QUEUE)),
                ),
            );
        }
        if step == 3 {
            add(
                3,
                "the transfers went through queue 0's rings",
                "docs/tutorial/03-rings.md",
                ensure(
                    on(0) >= 120,
                    format!("the device fetched {} descriptors from queue 0", on(0)),
                ),
            );
        }
        if step >= 4 {
            let info = r.all::<Info>().first().map(|i| (*i).clone());
            let nq = info.as_ref().map_or(0, |i| i.queues);
            add(
                4,
                "IOC_INFO: MSI-X, a vector per queue and one for errors",
                "docs/tutorial/04-msix.md#vectors",
                match &info {
                    Some(i) => ensure(
                        i.irq_mode == "msix" && i.vectors > i.queues && i.queues >= 1,
                        format!(
                            "{} queues, {} vectors, mode {}",
                            i.queues, i.vectors, i.irq_mode
                        ),
                    ),
                    None => Err(format!("no IOC_INFO answer{}", driver_complaints(&r))),
                },
            );
            add(
                4,
                "every opcode on every queue",
                "docs/tutorial/04-msix.md",
                all_verified_in(&r, "queues", 5 * nq.max(1) as usize),
            );
            add(
                4,
                "threads on every queue at once",
                "docs/tutorial/04-msix.md#waiting",
                r.all::<Concurrent>()
                    .first()
                    .map_or(Err("not run".into()), |c| {
                        ensure(
                            c.failed == 0 && c.verified > 0,
                            format!("{} of {} failed", c.failed, c.verified + c.failed),
                        )
                    }),
            );
            add(
                4,
                "each queue's vector fires and its handler runs",
                "docs/datasheet.md#interrupts",
                {
                    let irq = |q: u32| {
                        r.events("irq").iter().any(|e| {
                            matches!(e, Event::Irq { vector, delivered: true }
                                if u32::from(*vector) == q)
                        })
                    };
                    let lines = r
                        .all::<dmalab_report::Interrupts>()
                        .first()
                        .map(|i| i.lines.clone())
                        .unwrap_or_default();
                    let firing = lines.iter().filter(|l| l.1 > 0).count();
                    match (0..nq).find(|&q| !irq(q)) {
                        Some(q) => Err(format!("the device raised no interrupt on vector {q}")),
                        None => ensure(
                            nq > 0 && firing >= nq as usize,
                            format!(
                                "{firing} of the driver's {} interrupt lines counted interrupts, expected {nq}",
                                lines.len()
                            ),
                        ),
                    }
                },
            );
        }
        if step >= 5 {
            add(
                5,
                "IOC_INFO: a 64-bit DMA mask",
                "docs/tutorial/05-sg.md#the-dma-mask",
                r.all::<Info>()
                    .first()
                    .map_or(Err("no IOC_INFO answer".into()), |i| {
                        ensure(
                            i.dma_mask_bits == 64,
                            format!("a {}-bit mask", i.dma_mask_bits),
                        )
                    }),
            );
            add(
                5,
                "1 MiB requests on every queue, byte for byte",
                "docs/tutorial/05-sg.md",
                all_verified_in(&r, "transfers", 25),
            );
            add(
                5,
                "scatter-gather lists of 16 to 256 segments",
                "docs/datasheet.md#scatter-gather-entry-16-bytes",
                all_verified_in(&r, "sg", 16).and_then(|_| {
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
                }),
            );
        }
        add(
            2,
            "the run is clean",
            "docs/contract.md#1--binds",
            clean(&r),
        );
    }
    if step >= 6 {
        let r = boot(
            args,
            initramfs,
            &format!("step{step}_iommu"),
            "load,transfers,sg,unload",
            |o| o.iommu = true,
        );
        add(
            6,
            "behind a vIOMMU: 1 MiB and scatter-gather transfers, byte for byte",
            "docs/tutorial/06-iommu.md",
            all_verified_in(&r, "transfers", 25).and_then(|_| all_verified_in(&r, "sg", 16)),
        );
        add(
            6,
            "unbind behind a vIOMMU: the device is stopped before its memory is unmapped",
            "docs/tutorial/06-iommu.md#teardown-as-a-guard",
            clean(&r),
        );
        add(
            6,
            "no DMA memory left allocated or mapped after unbind",
            "docs/tutorial/06-iommu.md#teardown-as-a-guard",
            {
                let after = r
                    .all::<dmalab_report::DmaApi>()
                    .into_iter()
                    .find(|d| d.when == "unloaded")
                    .and_then(|d| d.entries);
                match after {
                    Some(0) => Ok(()),
                    Some(n) => Err(format!("DMA-API debug lists {n} entries for the device")),
                    None => Err("DMA-API debug was not read after the unload".into()),
                }
            },
        );
    }
    if step >= 7 {
        let [range, invalid, reset] = refusal_checks(args, initramfs, "step7_refusals");
        add(
            7,
            "device error statuses become errnos (INTERNAL_RANGE: ERANGE)",
            "docs/tutorial/07-errors.md#statuses",
            range,
        );
        add(
            7,
            "bad requests are refused with EINVAL before the device sees them",
            "docs/contract.md#3--refusals",
            invalid,
        );
        add(
            7,
            "IOC_RESET resets the device and it works afterwards",
            "docs/tutorial/07-errors.md#device-reset",
            reset,
        );
        let (stall, handled, explained, clean_run) = fault_checks(args, initramfs, "step7_");
        add(
            7,
            "every injected fault handled as docs/faults.md says",
            "docs/faults.md",
            handled,
        );
        add(
            7,
            "no request fails without a fault, the run is clean",
            "docs/tutorial/07-errors.md",
            explained.and(clean_run),
        );
        add(
            7,
            "a fatal error: the request fails with EIO at once, the device is reset, all goes on",
            "docs/tutorial/07-errors.md#fatal-errors",
            fatal_check(args, initramfs, "step7_fatal"),
        );
        add(
            7,
            "a stalled request times out with ETIMEDOUT and its queue works again",
            "docs/tutorial/07-errors.md#timeouts",
            stall,
        );
        add(
            7,
            "error paths give back what they took (40 failed requests, then one more)",
            "docs/tutorial/07-errors.md#statuses",
            error_paths_check(args, initramfs, "step7_error_paths"),
        );
        let r = boot(
            args,
            initramfs,
            "step7_removal",
            "load,removal,unload",
            |o| {
                o.kill_device_on = Some("\"kind\":\"remove_me\"".into());
            },
        );
        add(
            7,
            "surprise removal: requests fail with ENODEV, rmmod works",
            "docs/tutorial/07-errors.md#surprise-removal",
            {
                let after = r.all::<dmalab_report::AfterRemoval>();
                ensure(
                    after.len() == 4 && [libc::ENODEV, libc::ETIMEDOUT].contains(&after[0].errno),
                    format!("after the removal: {after:?}"),
                )
                .and_then(|_| {
                    ensure(
                        after[1..].iter().all(|a| a.errno == libc::ENODEV),
                        format!("then fast ENODEV expected: {after:?}"),
                    )
                })
                .and_then(|_| {
                    ensure(
                        r.all::<Rmmod>().first().is_some_and(|m| m.ok),
                        "rmmod failed after the removal",
                    )
                })
                .and_then(|_| clean(&r))
            },
        );
    }
    if step >= 8 {
        add(
            8,
            "six unbinds with requests in flight: every waiter gets ENODEV, a rebind works",
            "docs/tutorial/08-teardown.md",
            teardown_check(args, initramfs, "step8_teardown"),
        );
        let r = boot(
            args,
            initramfs,
            "step8_stalled",
            "load,unbind_stalled,unload",
            |o| o.faults = Some("[[rule]]\nkind = \"stall\"\nnth = 1\n".into()),
        );
        add(
            8,
            "unbind releases a request stuck in the device at once, with ENODEV",
            "docs/tutorial/08-teardown.md#releasing-every-waiter",
            match r.all::<dmalab_report::UnbindStalled>().first() {
                None => Err(format!(
                    "the scenario did not finish{}",
                    driver_complaints(&r)
                )),
                // the request's own timeout is 30 s: half of it is "not at once" by any measure
                Some(s) if s.errno != libc::ENODEV || s.waited_ms > 15_000 => Err(format!(
                    "the waiter got errno {} after {} ms (its timeout is 30000 ms)",
                    s.errno, s.waited_ms
                )),
                Some(_) => all_verified_in(&r, "unbind_stalled", 1).and_then(|_| clean(&r)),
            },
        );
        let r = boot(
            args,
            initramfs,
            "step8_ownership",
            "load,transfers,sg,concurrent,unload",
            oracle_with_late_completions,
        );
        add(
            8,
            "never touches memory the device owns (the ownership oracle)",
            "docs/oracle.md",
            clean(&r),
        );
    }
    out
}

/// Six unbinds while two threads per queue keep requests in flight and every completion comes
/// 20 ms late: each waiter must get ENODEV, the device must see no register write after the
/// driver decided to halt it, and a rebind must give a working device.
fn teardown_check(args: &Args, initramfs: &Path, name: &str) -> Result<(), String> {
    let r = boot(args, initramfs, name, "load,unbind_repeat,unload", |o| {
        o.append = format!("dmalab.rounds=6 {}", o.append);
        o.faults = Some("[[rule]]\nname = \"slow\"\nkind = \"delay_completion\"\nms = 20\n".into());
    });
    let b = r.all::<dmalab_report::UnbindBusy>();
    ensure(
        b.len() == 6
            && b.iter()
                .all(|x| x.other_errors == 0 && x.enodev == x.threads),
        format!("{b:?}{}", driver_complaints(&r)),
    )
    .and_then(|_| clean(&r))
}

fn checks(args: &Args, initramfs: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    let mut add = |level, name, see, result| {
        out.push(Check {
            level,
            name,
            see,
            result,
        })
    };
    let run = |level: u32| (args.from..=args.level).contains(&level);
    // 1: binds, identifies the device, unbinds
    if run(1) {
        let r = boot(
            args,
            initramfs,
            "bind",
            "kmemleak_clear,load,info,transfers,unload,kmemleak",
            |o| o.append = format!("kmemleak=on {}", o.append),
        );
        add(
            1,
            "loads and creates /dev/dmalab0",
            "docs/contract.md#1--binds",
            {
                let ins = r.all::<Insmod>();
                ensure(
                    ins.first().is_some_and(|i| i.ok),
                    "insmod failed or /dev/dmalab0 never appeared",
                )
            },
        );
        add(
            1,
            "IOC_INFO reports the ID and version registers",
            "docs/datasheet.md#bar0-register-map",
            {
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
        );
        add(
            1,
            "unloads cleanly (kernel log, DMA-API debug, device account)",
            "docs/contract.md#1--binds",
            {
                ensure(
                    r.all::<Rmmod>()
                        .first()
                        .is_some_and(|m| m.ok && !m.still_loaded),
                    "rmmod failed",
                )
                .and_then(|_| clean(&r))
            },
        );
        add(
            1,
            "kmemleak finds nothing leaked after a load, transfers and an unload",
            "docs/contract.md#1--binds",
            leaks(&r),
        );
    }
    if run(2) {
        let r = boot(
            args,
            initramfs,
            "transfers",
            "load,transfers,sg,concurrent,stats,unload",
            |_| {},
        );
        add(
            2,
            "every opcode, size and queue, byte for byte",
            "docs/datasheet.md#opcodes",
            all_verified(&r, 25),
        );
        add(
            2,
            "concurrent requests on every queue",
            "docs/contract.md#2--transfers",
            {
                r.all::<Concurrent>()
                    .first()
                    .map_or(Err("not run".into()), |c| {
                        ensure(
                            c.failed == 0,
                            format!("{} of {} failed", c.failed, c.verified + c.failed),
                        )
                    })
            },
        );
        add(
            2,
            "interrupts on every queue",
            "docs/datasheet.md#interrupts",
            {
                r.all::<Stats>()
                    .first()
                    .map_or(Err("no IOC_STATS answer".into()), |s| {
                        ensure(
                            s.per_queue().iter().all(|q| q.completed > 0 && q.irqs > 0),
                            "a queue saw no completion or no interrupt",
                        )
                    })
            },
        );
        add(
            2,
            "the run is clean",
            "docs/contract.md#2--transfers",
            clean(&r),
        );
    }
    if run(3) {
        let [range, invalid, reset] = refusal_checks(args, initramfs, "refusals");
        add(
            3,
            "device refusals become errnos (INTERNAL_RANGE → ERANGE)",
            "docs/driver.md#request",
            range,
        );
        add(
            3,
            "bad requests are refused with EINVAL before the device sees them",
            "docs/contract.md#3--refusals",
            invalid,
        );
        add(
            3,
            "IOC_RESET resets the device, it works afterwards, the run is clean",
            "docs/contract.md#3--refusals",
            reset,
        );
    }
    if run(4) {
        let (stall, handled, explained, clean_run) = fault_checks(args, initramfs, "");
        add(
            4,
            "every injected fault handled as docs/faults.md says",
            "docs/faults.md",
            handled,
        );
        add(
            4,
            "no request fails without a fault",
            "docs/contract.md#4--faults",
            explained,
        );
        add(
            4,
            "the run is clean",
            "docs/contract.md#4--faults",
            clean_run,
        );
        add(
            4,
            "a fatal error: the request fails with EIO at once, the device is reset, all goes on",
            "docs/faults.md",
            fatal_check(args, initramfs, "fatal"),
        );
        add(
            4,
            "a stalled request times out with ETIMEDOUT and its queue works again",
            "docs/faults.md",
            stall,
        );
        add(
            4,
            "error paths give back what they took (40 failed requests, then one more)",
            "docs/contract.md#4--faults",
            error_paths_check(args, initramfs, "error_paths"),
        );
        let r = boot(args, initramfs, "reorder", "load,overlap,unload", |o| {
            // the first request's completion comes 3 s late, and twice, while the second waits
            // behind it: a driver that matches by position gives the second the first's
            o.faults = Some(
                "[[rule]]\nname = \"late\"\nkind = \"delay_completion\"\nms = 3000\nsize = [4000, 4000]\n\n\
                 [[rule]]\nname = \"twice\"\nkind = \"duplicate_completion\"\nsize = [4000, 4000]\n"
                    .into(),
            );
        });
        add(
            4,
            "completions are matched by tag, not by position",
            "docs/datasheet.md#completion-16-bytes",
            all_verified(&r, 2)
                .and_then(
                    |_| match r.all::<Xfer>().iter().find(|x| x.bytes != x.len) {
                        // the data may well be right (the device wrote it before the wrong
                        // completion was read), but the completion was another request's
                        Some(x) => Err(format!(
                            "a {}-byte request was completed with another's completion ({} bytes)",
                            x.len, x.bytes
                        )),
                        None => Ok(()),
                    },
                )
                .and_then(|_| clean(&r)),
        );
    }
    if run(5) {
        add(
            5,
            "unbind with requests in flight: every waiter gets ENODEV, nothing touches the reset device",
            "docs/driver.md#binding",
            teardown_check(args, initramfs, "teardown"),
        );
    }
    if run(6) {
        let r = boot(
            args,
            initramfs,
            "ownership",
            "load,transfers,sg,concurrent,unload",
            oracle_with_late_completions,
        );
        add(
            6,
            "never touches memory the device owns",
            "docs/oracle.md",
            clean(&r),
        );
    }
    out
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // A failed check is caught and reported on the card (see `clean`), not as a panic.
    std::panic::set_hook(Box::new(|_| {}));
    let need = |n: &str| dmalab_harness::artifacts::path(n).unwrap_or_else(|e| panic!("{e}"));
    let (kbuild, agent) = (need("kbuild"), need("agent"));
    if !args.driver.exists() {
        eprintln!(
            "dmalab check: {} does not exist. Build your module against the guest kernel: make -C {} M=<your module dir> LLVM=-19 ARCH=x86_64 modules",
            args.driver.display(),
            kbuild.display()
        );
        return ExitCode::FAILURE;
    }
    let root = dmalab_harness::artifacts::root();
    let dir = root.join("target").join(&args.run_name);
    let built = Command::new(root.join("scripts/build-initramfs.sh"))
        .arg(&kbuild)
        .arg(&agent)
        .arg(&args.driver)
        .arg(&dir)
        .output();
    let initramfs = match built {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => {
            eprintln!(
                "dmalab check: initramfs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("dmalab check: initramfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = match args.step {
        Some(step) => ladder_checks(&args, &initramfs, step),
        None => checks(&args, &initramfs),
    };
    let mark = if args.step.is_some() { "S" } else { "L" };
    println!("\n== dmalab check: {}", args.driver.display());
    let mut passed = 0;
    for c in &results {
        match &c.result {
            Ok(()) => {
                passed += 1;
                println!("  PASS  {mark}{} {}", c.level, c.name);
            }
            Err(why) => println!(
                "  FAIL  {mark}{} {}: {why}  (see {})",
                c.level, c.name, c.see
            ),
        }
    }
    let rows: Vec<_> = results
        .iter()
        .map(|c| (c.level, c.name, c.result.clone(), c.see))
        .collect();
    let notes = NOTES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (heading, text) in &notes {
        println!("  {heading}: {text}");
    }
    let page = dmalab_harness::html::report_card(&args.driver.display().to_string(), &rows, &notes);
    let html = dir.join("report.html");
    match std::fs::write(&html, page) {
        Ok(()) => println!("  report: {}", html.display()),
        Err(e) => eprintln!("dmalab check: cannot write {}: {e}", html.display()),
    }
    println!(
        "  {passed}/{} checks passed; logs in target/e2e/{}_*",
        results.len(),
        args.run_name
    );
    if passed == results.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
