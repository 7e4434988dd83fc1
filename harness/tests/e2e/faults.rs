//! End-to-end: faults injected by the device, the real driver's reaction, and the device usable
//! afterwards. Each test boots one VM whose device server starts with one rule; the guest runs
//! six COPYs on queue 0 (the second one is hit) and then one verified COPY per queue.

use dmalab_abi as abi;
use dmalab_harness::vm::{run, Run, VmOptions};
use dmalab_report::{AfterRemoval, Rmmod, Stats, UnbindStalled, Xfer};

/// Boots with `rule` (applied to the second COPY) and checks what all faults have in common.
fn probe(name: &str, rule: &str) -> Run {
    probe_with(name, rule, false)
}

fn probe_with(name: &str, rule: &str, iommu: bool) -> Run {
    let mut o = VmOptions::new(name, "load,probe,stats,unload");
    o.iommu = iommu;
    o.faults = Some(format!(
        "[[rule]]\nname = \"{name}\"\n{rule}\nopcode = \"copy\"\nqueue = 0\nnth = 2\n"
    ));
    let r = run(&o);
    r.assert_clean();
    let fired = r.faults();
    r.check(
        fired.len() == 1 && fired[0].rule == name,
        &format!("the rule fired once: {fired:?}"),
    );
    let probes = r
        .all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "probe")
        .collect::<Vec<_>>();
    r.check(probes.len() == 6, "six probes");
    for (i, x) in probes.iter().enumerate() {
        if i != 1 {
            r.check(
                x.verified,
                &format!("probe {i} (not hit) must succeed: {x:?}"),
            );
        }
    }
    for x in r
        .all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "probe_after")
    {
        r.check(
            x.verified,
            &format!("the device must be usable after the fault: {x:?}"),
        );
    }
    r
}

fn hit(r: &Run) -> Xfer {
    r.all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "probe")
        .nth(1)
        .unwrap()
        .clone()
}

#[test]
fn error_status_becomes_an_errno() {
    let r = probe("error_status", "kind = \"error_status\"");
    let x = hit(&r);
    r.check(
        x.errno == libc::EIO && x.status == u32::from(abi::CS_DEVICE_ERROR),
        &format!("{x:?}"),
    );
}

#[test]
fn dma_read_and_write_errors_become_an_errno() {
    for kind in ["dma_read_error", "dma_write_error"] {
        let r = probe(kind, &format!("kind = \"{kind}\""));
        let x = hit(&r);
        r.check(
            x.errno == libc::EIO && x.status == u32::from(abi::CS_DMA_FAULT),
            &format!("{kind}: {x:?}"),
        );
    }
}

#[test]
fn dropped_completion_times_out_and_the_queue_recovers() {
    let r = probe("drop_completion", "kind = \"drop_completion\"");
    let x = hit(&r);
    r.check(x.errno == libc::ETIMEDOUT, &format!("{x:?}"));
    let s = r.one::<Stats>();
    r.check(
        s.total().timeouts == 1 && s.total().resets >= 1,
        &format!("{s:?}"),
    );
}

#[test]
fn stalled_queue_times_out_and_recovers() {
    let r = probe("stall", "kind = \"stall\"");
    r.check(hit(&r).errno == libc::ETIMEDOUT, &format!("{:?}", hit(&r)));
}

#[test]
fn fatal_error_is_recovered_by_a_device_reset() {
    let r = probe("fatal", "kind = \"fatal\"");
    // the error vector tells the driver at once: EIO, not a timeout
    r.check(hit(&r).errno == libc::EIO, &format!("{:?}", hit(&r)));
    let s = r.one::<Stats>();
    r.check(
        s.ioctl.device_resets >= 1,
        &format!("the driver must reset the device: {s:?}"),
    );
    r.check(
        s.ioctl.error_bits & u64::from(abi::ERR_FATAL) != 0,
        &format!("{s:?}"),
    );
}

#[test]
fn duplicate_completion_is_counted_as_stray() {
    let r = probe("duplicate", "kind = \"duplicate_completion\"");
    r.check(hit(&r).verified, "the request itself succeeds");
    r.check(
        r.one::<Stats>().total().stray_completions >= 1,
        "the duplicate is noticed",
    );
}

#[test]
fn delayed_and_reordered_completions_are_harmless() {
    for (name, rule) in [
        ("delay", "kind = \"delay_completion\"\nms = 500"),
        ("out_of_order", "kind = \"out_of_order\""),
    ] {
        let r = probe(name, rule);
        r.check(hit(&r).verified, &format!("{name}: {:?}", hit(&r)));
    }
}

#[test]
fn interrupt_faults_are_survived() {
    for (name, rule) in [
        ("spurious", "kind = \"spurious_irq\""),
        ("storm", "kind = \"irq_storm\"\ncount = 200"),
    ] {
        let r = probe(name, rule);
        r.check(hit(&r).verified, &format!("{name}: {:?}", hit(&r)));
    }
    let r = probe("lost_irq", "kind = \"lost_irq\"");
    let x = hit(&r);
    r.check(
        x.verified || x.errno == libc::ETIMEDOUT,
        &format!("lost interrupt: {x:?}"),
    );
}

#[test]
fn corruption_is_caught_by_the_guest_check() {
    let r = probe("corrupt", "kind = \"corrupt\"\nbits = 4");
    let x = hit(&r);
    r.check(
        x.errno == 0 && x.status == u32::from(abi::Status::Ok.raw()) && !x.verified,
        &format!("silent corruption: {x:?}"),
    );
}

#[test]
fn short_transfer_is_reported() {
    let r = probe("short", "kind = \"short_transfer\"\nbytes = 100");
    let x = hit(&r);
    r.check(
        x.errno == 0 && x.bytes == 100 && !x.verified,
        &format!("{x:?}"),
    );
}

#[test]
fn silent_short_transfer_is_caught_by_the_guest_check() {
    let r = probe(
        "short_silent",
        "kind = \"short_transfer\"\nbytes = 100\nreported = false",
    );
    let x = hit(&r);
    r.check(
        x.errno == 0 && x.bytes == 4000 && !x.verified,
        &format!("{x:?}"),
    );
}

#[test]
fn dma_outside_under_an_iommu_hits_an_unmapped_iova() {
    // Far past the buffer: under a vIOMMU nothing is mapped there.
    let r = probe_with(
        "outside_iommu",
        "kind = \"dma_outside\"\noffset = 0x40000000",
        true,
    );
    r.check(hit(&r).verified, "the descriptor itself completes");
    let refused = r
        .device_errors()
        .iter()
        .any(|e| e.what.contains("unmapped IOVA"));
    r.check(
        refused,
        "the device reports the refused access as a DMA to an unmapped IOVA",
    );
}

#[test]
fn dma_outside_the_descriptor_is_refused_and_reported() {
    let r = probe("outside", "kind = \"dma_outside\"");
    r.check(hit(&r).verified, "the descriptor itself completes");
    let s = r.one::<Stats>();
    r.check(
        s.ioctl.error_bits & u64::from(abi::ERR_DMA_VIOLATION) != 0 && s.ioctl.error_irqs >= 1,
        &format!("the violation reaches the driver's error vector: {s:?}"),
    );
}

#[test]
fn surprise_removal_fails_fast_and_never_hangs() {
    let mut o = VmOptions::new("removal", "load,removal,unload");
    o.kill_device_on = Some("\"kind\":\"remove_me\"".into());
    let r = run(&o);
    r.assert_clean();
    r.check(r.device_killed, "the harness removed the device");
    let after = r.all::<AfterRemoval>();
    r.check(after.len() == 4, "four requests after the removal");
    r.check(
        after
            .iter()
            .all(|a| a.errno == libc::ENODEV || a.errno == libc::ETIMEDOUT),
        &format!("requests fail: {after:?}"),
    );
    r.check(
        after[1..].iter().all(|a| a.errno == libc::ENODEV),
        &format!("then fail fast with ENODEV: {after:?}"),
    );
    r.check(
        r.one::<Rmmod>().ok,
        "the driver unloads from a vanished device",
    );
}

#[test]
fn a_campaign_is_reproducible_from_its_seed() {
    use dmalab_harness::campaign::campaign;
    let rules =
        std::fs::read_to_string(dmalab_harness::artifacts::root().join("campaigns/mix.toml"))
            .unwrap();
    // the first run with the ownership oracle on: the reference driver must not touch memory
    // the device owns, whatever the faults do to it
    use dmalab_harness::campaign::{Echo, Plan};
    // concurrent (the default): the faults each request meets do not depend on how the
    // queues interleave (one random stream per queue, restarted per unit)
    // The same seed in both data paths: zero-copy under the oracle (the device's windows and
    // the CPU's accesses, user mode included), the bounce pool without it. The faults a request
    // meets do not depend on where its memory is.
    let zero_copy = Plan {
        dma_mode: Some(abi::DMA_MODE_ZERO_COPY),
        ..Plan::new(11, 120, &rules)
    };
    let bounce = Plan {
        dma_mode: Some(abi::DMA_MODE_BOUNCE),
        ..Plan::new(11, 120, &rules)
    };
    let a = campaign("campaign_a", &zero_copy, Echo::Off, true);
    let b = campaign("campaign_b", &bounce, Echo::Off, false);
    let c = campaign("campaign_c", &Plan::new(12, 120, &rules), Echo::Off, false);
    for x in [&a, &b, &c] {
        let failed: Vec<_> = x.verdicts.iter().filter(|v| !v.pass).collect();
        x.run.check(
            x.passed(),
            &format!(
                "campaign failed: {failed:?} unexplained: {:?} oracle: {:?}",
                x.unexplained,
                x.oracle_violations()
            ),
        );
    }
    a.run
        .check(!a.sequence.is_empty(), "the mix injected nothing");
    let (za, zb) = (
        a.run.one::<Stats>().ioctl.zero_copy,
        b.run.one::<Stats>().ioctl.zero_copy,
    );
    a.run.check(
        za > 0 && zb == 0,
        &format!("zero-copy requests: {za} in the zero-copy run, {zb} in the bounce run"),
    );
    let overlap = dmalab_harness::campaign::max_queues_in_flight(&a.run.events);
    a.run.check(
        overlap >= 2,
        &format!("requests overlapped on at most {overlap} queue(s) at once"),
    );
    a.run.check(
        a.sequence == b.sequence,
        &format!(
            "same seed, different faults:\n{:?}\n{:?}",
            a.sequence, b.sequence
        ),
    );
    a.run.check(
        a.sequence != c.sequence,
        "another seed should inject another sequence",
    );
}

#[test]
fn unbind_releases_a_stalled_waiter_at_once() {
    let mut o = VmOptions::new("unbind_stalled", "load,unbind_stalled,unload");
    o.faults = Some("[[rule]]\nkind = \"stall\"\nnth = 1\n".into());
    let r = run(&o);
    r.assert_clean();
    let s = r.one::<UnbindStalled>();
    r.check(
        s.errno == libc::ENODEV,
        &format!("the waiter gets ENODEV: {s:?}"),
    );
    // (ENODEV, not ETIMEDOUT, is what shows the unbind released it: no timing assertion needed)
    let x = r.all::<Xfer>();
    r.check(x.len() == 1 && x[0].verified, "the rebound device works");
}

/// Shards and resumption change nothing: a serial campaign run whole, run as two shards and
/// merged, and run in two halves into one store (an interrupted run resumed) all give the same
/// report, byte for byte.
#[test]
fn a_sharded_or_resumed_campaign_merges_into_the_unsharded_report() {
    use dmalab_harness::campaign::{merge, run_units, Echo, Plan, Store};
    let rules =
        std::fs::read_to_string(dmalab_harness::artifacts::root().join("campaigns/mix.toml"))
            .unwrap();
    let plan = Plan {
        unit: 10,
        serial: true,
        ..Plan::new(5, 60, &rules)
    };
    let base = dmalab_harness::artifacts::root().join("target/e2e/campaign_merge");
    let store = |name: &str| Store::open(&base.join(name), &plan, false).unwrap();
    let into = |s: &Store, name: &str, units: std::ops::Range<u64>| {
        let r = run_units(&plan, name, &[units], Echo::Off, false, |_| {});
        r.assert_ran_cleanly();
        s.record(name, &r).unwrap()
    };
    let whole = store("whole");
    into(&whole, "campaign_merge_whole", 0..plan.units());
    let shards: Vec<_> = (0..2)
        .map(|i| {
            let s = store(&format!("shard{i}"));
            into(&s, &format!("campaign_merge_shard{i}"), plan.shard(i, 2));
            s.dir
        })
        .collect();
    let resumed = store("resumed");
    into(&resumed, "campaign_merge_first", 0..2);
    into(&resumed, "campaign_merge_rest", 2..plan.units());

    let whole = merge(&[whole.dir]).unwrap();
    assert!(whole.passed(), "the campaign itself failed: {whole:#?}");
    assert!(whole.verdicts().count() > 5, "the mix injected too little");
    assert!(
        whole.requests().any(|r| r.opcode == "write") && whole.requests().any(|r| r.half == 1),
        "WRITE + READ pairs ran"
    );
    let sharded = merge(&shards).unwrap();
    let resumed = merge(&[resumed.dir]).unwrap();
    for (what, m) in [("sharded", &sharded), ("resumed", &resumed)] {
        assert!(
            m.json() == whole.json(),
            "{what} and whole campaigns differ: see {}",
            base.display()
        );
        assert_eq!(m.html("t", &[]), whole.html("t", &[]));
    }
    // a store missing a shard is refused, not merged into a smaller report
    assert!(merge(&shards[..1]).is_err());
}
