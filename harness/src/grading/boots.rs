//! The VMs the checks look at: what each runs and under which conditions. Several checks judge
//! one boot; a [`super::Grader`] boots each at most once.

use super::{Boot, Graded, Mode};
use crate::conditions::Conditions;
use crate::vm::{Run, VmOptions};

/// Two vCPUs: the submitter and the interrupt handler on different CPUs.
const SMP2: Conditions = Conditions {
    smp: 2,
    ..Conditions::GENTLE
};

/// The vIOMMU unmapping at once: a device access after an unmap is refused and reported.
const STRICT: Conditions = Conditions {
    strict: true,
    ..Conditions::GENTLE
};

/// Both: teardown races with interrupts on the other CPU, behind a strict vIOMMU.
const SMP2_STRICT: Conditions = Conditions {
    smp: 2,
    strict: true,
    ..Conditions::GENTLE
};

/// How the stall check says that the driver never gave up on a request.
pub const NEVER_RETURNED: &str = "a stalled request never returned";

fn nothing(_: &mut VmOptions) {}

fn kmemleak_on(o: &mut VmOptions) {
    o.append = format!("kmemleak=on {}", o.append);
}

/// The ownership oracle on, and every completion 5 ms late: the device owns each request's
/// memory long enough that a driver touching it meanwhile is caught every time, not only when
/// it happens to be quicker than the device. (The boot runs `concurrent` too: memory handed on
/// to the next request too early only shows when requests overlap.)
fn oracle_with_late_completions(o: &mut VmOptions) {
    o.oracle = true;
    o.faults = Some("[[rule]]\nname = \"late\"\nkind = \"delay_completion\"\nms = 5\n".into());
}

/// Every direct-block transfer (step 2's) takes 20 ms in the device: a driver that takes the
/// result without waiting for DONE reads it while the transfer still runs, every time, however
/// quickly the device would otherwise have been done. (Queue 8 is the direct block,
/// `abi::DIRECT_QUEUE`; the later steps' ring transfers are not slowed.)
fn slow_direct_transfers(o: &mut VmOptions) {
    o.faults = Some(
        "[[rule]]\nname = \"slow_direct\"\nkind = \"delay_completion\"\nqueue = 8\nms = 20\n"
            .into(),
    );
}

/// The campaign's boot runs only when the stall check's driver gave up on its request at all
/// (a driver that never times out would hang the campaign until the harness gave up).
fn stall_returned(r: &Run) -> Graded {
    match r.all::<dmalab_report::Stalled>().first() {
        Some(s) if !s.returned => Err(NEVER_RETURNED.into()),
        _ => Ok(()),
    }
}

/// The log directory's suffix: the ladder's transfer boots are per step (what they run
/// depends on it).
pub fn dir_name(boot: &Boot, mode: Mode) -> String {
    match (boot.name, mode) {
        ("ladder", Mode::Step(n)) => format!("step{n}"),
        ("ladder_iommu", Mode::Step(n)) => format!("step{n}_iommu"),
        ("ownership", Mode::Step(n)) if n >= 9 => format!("step{n}_ownership"),
        (name, _) => name.to_string(),
    }
}

/// Every boot, by name.
pub fn by_name(name: &str) -> &'static Boot {
    BOOTS
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no boot named {name} (grading/boots.rs)"))
}

pub static BOOTS: &[Boot] = &[
    Boot {
        name: "bind",
        conditions: "kmemleak on",
        platform: Conditions::GENTLE,
        scenarios: |_| "kmemleak_clear,load,info,transfers,unload,kmemleak".into(),
        tune: kmemleak_on,
        requires: None,
    },
    Boot {
        name: "transfers",
        conditions: "4 queues, MSI-X",
        platform: SMP2,
        scenarios: |_| "load,transfers,sg,concurrent,stats,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "refusals",
        conditions: "bad requests, IOC_RESET",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,errors,reset,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "stall",
        conditions: "queue 1's first request stalled",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,stall_recovery,unload".into(),
        tune: |o| {
            o.faults =
                Some("[[rule]]\nname = \"stall\"\nkind = \"stall\"\nqueue = 1\ntimes = 1\n".into());
        },
        requires: None,
    },
    Boot {
        name: "faults",
        conditions: "a seeded campaign: 120 requests, every fault kind of campaigns/mix.toml",
        platform: SMP2,
        scenarios: |_| "load,campaign,unload".into(),
        tune: |o| {
            let rules =
                std::fs::read_to_string(crate::artifacts::root().join("campaigns/mix.toml"))
                    .unwrap_or_default();
            o.faults = Some(crate::campaign::with_seed(&rules, 1));
            o.append = format!("dmalab.seed=1 dmalab.ops=120 {}", o.append);
        },
        requires: Some(("stall", stall_returned)),
    },
    Boot {
        name: "fatal",
        conditions: "a fatal device error on queue 1's first request, 12 requests one at a time",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,campaign,unload".into(),
        tune: |o| {
            o.faults =
                Some("[[rule]]\nname = \"fatal\"\nkind = \"fatal\"\nqueue = 1\ntimes = 1\n".into());
            // one request at a time: "every other request succeeds" is exact only then (a
            // fatal error fails every request in flight)
            o.append = format!(
                "dmalab.seed=3 dmalab.ops=12 dmalab.mode=serial {}",
                o.append
            );
        },
        requires: None,
    },
    Boot {
        name: "error_paths",
        conditions: "every 64 KiB request on queue 0 fails",
        platform: STRICT,
        scenarios: |_| "load,error_paths,unload".into(),
        tune: |o| {
            o.faults = Some(
                "[[rule]]\nname = \"fail\"\nkind = \"error_status\"\nqueue = 0\nsize = [65536, 65536]\n"
                    .into(),
            );
        },
        requires: None,
    },
    Boot {
        name: "reorder",
        conditions: "a completion 3 s late and written twice",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,overlap,unload".into(),
        tune: |o| {
            // the first request's completion comes 3 s late, and twice, while the second waits
            // behind it: a driver that matches by position gives the second the first's
            o.faults = Some(
                "[[rule]]\nname = \"late\"\nkind = \"delay_completion\"\nms = 3000\nsize = [4000, 4000]\n\n\
                 [[rule]]\nname = \"twice\"\nkind = \"duplicate_completion\"\nsize = [4000, 4000]\n"
                    .into(),
            );
        },
        requires: None,
    },
    Boot {
        name: "teardown",
        conditions: "6 unbinds, 2 threads per queue, completions 20 ms late",
        platform: SMP2_STRICT,
        scenarios: |_| "load,unbind_repeat,unload".into(),
        tune: |o| {
            o.append = format!("dmalab.rounds=6 {}", o.append);
            o.faults =
                Some("[[rule]]\nname = \"slow\"\nkind = \"delay_completion\"\nms = 20\n".into());
        },
        requires: None,
    },
    Boot {
        name: "ownership",
        conditions: "the ownership oracle, completions 5 ms late",
        platform: Conditions::GENTLE,
        // from step 9 on, the ladder's driver streams too: the oracle watches its hand-overs
        scenarios: |mode| match mode {
            Mode::Step(n) if n >= 9 => "load,transfers,sg,concurrent,selftest,unload".into(),
            _ => "load,transfers,sg,concurrent,unload".into(),
        },
        tune: oracle_with_late_completions,
        requires: None,
    },
    Boot {
        name: "step1",
        conditions: "kmemleak on",
        platform: Conditions::GENTLE,
        scenarios: |_| "kmemleak_clear,bind,kmemleak".into(),
        tune: kmemleak_on,
        requires: None,
    },
    Boot {
        name: "ladder",
        conditions: "4 queues",
        platform: Conditions::GENTLE,
        scenarios: |mode| {
            let step = match mode {
                Mode::Step(n) => n,
                Mode::Levels { .. } => 8,
            };
            if step >= 5 {
                "load,info,basic,queues,concurrent,interrupts,transfers,sg,unload"
            } else if step >= 4 {
                "load,info,basic,queues,concurrent,interrupts,unload"
            } else {
                "load,basic,unload"
            }
            .into()
        },
        tune: slow_direct_transfers,
        requires: None,
    },
    Boot {
        name: "ladder_iommu",
        conditions: "behind a vIOMMU",
        platform: STRICT,
        scenarios: |_| "load,transfers,sg,unload".into(),
        tune: |o| o.iommu = true,
        requires: None,
    },
    Boot {
        name: "ladder_timeout",
        conditions: "the first direct transfer stalled",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,stall_recovery,unload".into(),
        tune: |o| {
            // queue 8 is the direct block (abi::DIRECT_QUEUE): the rule stalls its first
            // transfer, which the agent submits on queue 0 with a 2 s timeout
            o.faults =
                Some("[[rule]]\nname = \"stall\"\nkind = \"stall\"\nqueue = 8\ntimes = 1\n".into());
            o.append = format!("dmalab.stall_queue=0 {}", o.append);
        },
        requires: None,
    },
    Boot {
        name: "ladder_bounce",
        conditions: "every streaming mapping bounced (swiotlb=force)",
        platform: Conditions {
            swiotlb: true,
            ..Conditions::GENTLE
        },
        scenarios: |_| "load,selftest,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "removal",
        conditions: "the device removed under the running driver",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,removal,unload".into(),
        tune: |o| o.kill_device_on = Some("\"kind\":\"remove_me\"".into()),
        requires: None,
    },
    Boot {
        name: "unbind_stalled",
        conditions: "a request stalled in the device",
        platform: STRICT,
        scenarios: |_| "load,unbind_stalled,unload".into(),
        tune: |o| o.faults = Some("[[rule]]\nkind = \"stall\"\nnth = 1\n".into()),
        requires: None,
    },
    Boot {
        name: "high_iova",
        conditions: "transfers and scatter-gather",
        platform: Conditions {
            iova_high: true,
            strict: true,
            ..Conditions::GENTLE
        },
        scenarios: |_| "load,transfers,sg,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "narrow_device",
        conditions: "transfers and scatter-gather",
        platform: Conditions {
            ram_high: true,
            dma_bits: 32,
            ..Conditions::GENTLE
        },
        scenarios: |_| "load,info,transfers,sg,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "bounce",
        conditions: "transfers, scatter-gather and the streaming self-test",
        platform: Conditions {
            swiotlb: true,
            ..Conditions::GENTLE
        },
        scenarios: |_| "load,transfers,sg,selftest,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "stale",
        conditions:
            "another process's secret in the driver's buffers, READs the device silently shortens",
        platform: Conditions::GENTLE,
        scenarios: |_| "load,stale_bytes,unload".into(),
        tune: |o| {
            o.faults = Some(
                "[[rule]]\nname = \"short\"\nkind = \"short_transfer\"\nopcode = \"read\"\nqueue = 0\nbytes = 16\nreported = false\n"
                    .into(),
            );
        },
        requires: None,
    },
    Boot {
        name: "unbind_held",
        conditions: "another process holds /dev/dmalab0 open and keeps calling it",
        platform: STRICT,
        scenarios: |_| "load,unbind_held,unload".into(),
        tune: nothing,
        requires: None,
    },
    Boot {
        name: "wrap",
        conditions:
            "4 threads a queue, 240 SG requests a queue, a fifth of the completions out of order",
        platform: SMP2,
        scenarios: |_| "load,info,wrap,unload".into(),
        tune: |o| {
            o.faults = Some(
                "[[rule]]\nname = \"swap\"\nkind = \"out_of_order\"\nprobability = 0.2\n".into(),
            );
        },
        requires: None,
    },
];
