//! The driver and the device together: transfers on both data paths, teardown, the ownership
//! oracle, the grader and the tutorial ladder. Each test boots its VMs; logs in target/e2e/<run>/.

use dmalab_abi::{self as abi, Status};
use dmalab_harness::vm::{run, Run, VmOptions};
use dmalab_harness::Conditions;
use dmalab_report::{
    Bench, Concurrent, CrcCheck, DmaApi, DmaSelfTest, Hostile, Info, Insmod, ProbeStep,
    ProbeUnwind, Refused, ResetOutcome, Rmmod, Stats, UnbindBusy, Xfer,
};

/// Every transfer the agent reported was verified byte for byte and completed with CS_OK.
fn assert_transfers_verified(r: &Run, min: usize) {
    let xfers = r.all::<Xfer>();
    r.check(
        xfers.len() >= min,
        &format!(
            "expected at least {min} transfers, the agent reported {}",
            xfers.len()
        ),
    );
    for x in &xfers {
        r.check(x.ok(), &format!("transfer failed: {x:?}"));
    }
}

/// The device's own counters equal what the driver says it submitted.
fn assert_counters_agree(r: &Run) {
    let stats = r.one::<Stats>().total();
    let dev = r.device_counters();
    r.check(
        dev.descriptors == stats.submitted && dev.completions == stats.completed,
        &format!("device counters {dev:?} disagree with the driver's {stats:?}"),
    );
    r.check(
        dev.completions_err == stats.errors,
        "error completions disagree",
    );
}

#[test]
fn first_light() {
    let r = run(&VmOptions::new("first_light", "firstlight"));
    r.assert_clean();
    let ins = r.one::<Insmod>();
    r.check(ins.ok, &format!("insmod failed: {ins:?}"));
    let info = r.one::<Info>();
    r.check(
        info.magic == abi::DEVICE_MAGIC,
        &format!("ID register: {info:?}"),
    );
    r.check(info.version == abi::VERSION, "version register");
    r.check(
        info.queues == 4,
        "the driver must see the 4 queues the server was started with",
    );
    r.check(
        info.irq_mode == "msix" && info.vectors == 5,
        &format!("MSI-X with 5 vectors expected: {info:?}"),
    );
    let rm = r.one::<Rmmod>();
    r.check(rm.ok && !rm.still_loaded, &format!("rmmod: {rm:?}"));
    r.check(
        r.console.contains("dmalab unbound"),
        "the driver's unbind message is missing",
    );
    r.check(
        r.all::<DmaApi>().len() == 2,
        "DMA-API debug was read before and after rmmod",
    );
}

/// The machine a test runs on (docs/contract.md#platform-conditions).
fn on(conditions: &str) -> Conditions {
    Conditions::parse(conditions).unwrap_or_else(|e| panic!("{e}"))
}

fn transfer_suite(name: &str, conditions: &str, mode: u32) -> Run {
    let mut o = VmOptions::new(
        name,
        "load,info,transfers,sg,concurrent,batch,selftest,errors,reset,stats,unload",
    );
    o.conditions = on(conditions);
    o.dma_mode = Some(mode);
    let r = run(&o);
    assert_paths(&r, mode);
    r.assert_clean();
    // transfers, SG lists, and the 40 requests of the two checked batches
    assert_transfers_verified(&r, 25 + 16 + 40);
    // Under TCG a register read costs the guest ~80 us: the data path uses rings and doorbells
    // (posted writes) only.
    let reads = dmalab_harness::bench::data_path_bar_reads(&r.events);
    r.check(
        reads.is_empty() && !r.events("bar_read").is_empty(),
        &format!(
            "{} BAR0 reads on the data path (offsets {:x?})",
            reads.len(),
            &reads[..reads.len().min(10)]
        ),
    );
    r.check(
        r.one::<CrcCheck>().matches,
        "device CRC of the copied data differs from the guest's",
    );
    let c = r.one::<Concurrent>();
    r.check(
        c.failed == 0 && c.verified == 12 * c.threads,
        &format!("concurrent: {c:?}"),
    );
    let refused = r.all::<Refused>();
    r.check(refused.len() == 3, "three refusals reported");
    r.check(
        refused[0].status == u32::from(Status::InternalRange.raw())
            && refused[0].errno == libc::ERANGE,
        &format!(
            "a device refusal is its status plus an errno: {:?}",
            refused[0]
        ),
    );
    r.check(
        refused[1].errno == libc::EINVAL && refused[2].errno == libc::EINVAL,
        "driver refusals are EINVAL",
    );
    r.check(r.one::<ResetOutcome>().ok, "device reset ioctl");
    assert_counters_agree(&r);
    // all queues were used and interrupts arrived on them
    let stats = r.one::<Stats>();
    for (i, q) in stats.per_queue().iter().enumerate() {
        r.check(
            q.completed > 0 && q.irqs > 0,
            &format!("queue {i} saw no work or no interrupt: {q:?}"),
        );
    }
    r
}

/// The requests took the path `mode` asks for: in bounce mode none zero-copy; in zero-copy
/// mode every opcode that names guest memory ran (and verified) zero-copy at least once.
fn assert_paths(r: &Run, mode: u32) {
    // whatever the mode: the streaming mapping's whole cycle (map, device, sync for the CPU,
    // CPU, sync for the device, ..., unmap) works on every queue
    let tests = r.all::<DmaSelfTest>();
    r.check(
        tests.len() >= 2 && tests.iter().all(|t| t.errno == 0 && t.verified == t.rounds),
        &format!("DMA self-test: {tests:?}"),
    );
    let xs = r.all::<Xfer>();
    let stats = r.one::<Stats>().ioctl.clone();
    let zero_copy = xs.iter().filter(|x| x.path == abi::PATH_ZERO_COPY).count();
    match mode {
        abi::DMA_MODE_BOUNCE => r.check(
            zero_copy == 0 && stats.zero_copy == 0 && stats.bounced > 0,
            &format!("bounce mode: {zero_copy} requests went zero-copy ({stats:?})"),
        ),
        abi::DMA_MODE_AUTO => {
            let threshold = r.one::<Info>().zero_copy_min;
            let small_zero_copy: Vec<_> = xs
                .iter()
                .filter(|x| x.len < threshold && x.path == abi::PATH_ZERO_COPY)
                .collect();
            r.check(
                small_zero_copy.is_empty()
                    && xs
                        .iter()
                        .any(|x| x.len >= threshold && x.path == abi::PATH_ZERO_COPY && x.ok())
                    && xs.iter().any(|x| x.path == abi::PATH_BOUNCE && x.ok()),
                &format!(
                    "auto mode: below {threshold} bytes the bounce pool, from there zero-copy; went zero-copy below it: {small_zero_copy:?}"
                ),
            );
        }
        abi::DMA_MODE_ZERO_COPY => {
            for op in ["copy", "write", "read", "fill", "checksum"] {
                r.check(
                    xs.iter()
                        .any(|x| x.op == op && x.path == abi::PATH_ZERO_COPY && x.ok()),
                    &format!("zero-copy mode: no verified zero-copy {op}"),
                );
            }
            r.check(
                stats.zero_copy as usize >= zero_copy && zero_copy > 0,
                &format!("zero-copy mode: {zero_copy} reported, driver counted {stats:?}"),
            );
            // the request path allocates nothing: storage is made for the most requests mapped
            // at once (the suite's concurrency), then reused
            r.check(
                stats.zero_copy_storage > 0 && stats.zero_copy_storage * 2 <= stats.zero_copy,
                &format!(
                    "zero-copy mode: {} pieces of request storage made for {} zero-copy requests: not reused",
                    stats.zero_copy_storage, stats.zero_copy
                ),
            );
        }
        _ => {}
    }
}

#[test]
fn transfers_every_opcode_size_and_queue() {
    // two vCPUs: the interrupt handler runs on another CPU than the submitter
    let r = transfer_suite("transfers", "smp2", abi::DMA_MODE_BOUNCE);
    // scatter-gather really happened with many segments
    let max_seg = r
        .all::<Xfer>()
        .iter()
        .map(|x| x.segments)
        .max()
        .unwrap_or(0);
    r.check(
        max_seg >= 256,
        &format!("largest SG list had {max_seg} segments"),
    );
}

/// The same suite with every request's memory mapped where it is (the streaming DMA
/// abstraction, docs/streaming-dma.md).
#[test]
fn transfers_zero_copy_every_opcode_size_and_queue() {
    let r = transfer_suite("transfers_zero_copy", "smp2", abi::DMA_MODE_ZERO_COPY);
    let max_seg = r
        .all::<Xfer>()
        .iter()
        .filter(|x| x.path == abi::PATH_ZERO_COPY)
        .map(|x| x.segments)
        .max()
        .unwrap_or(0);
    r.check(
        max_seg >= 256,
        &format!("largest zero-copy SG list had {max_seg} segments"),
    );
}

/// Behind the vIOMMU with every IOVA above 4 GiB and unmaps effective at once.
#[test]
fn transfers_behind_an_iommu_above_4g() {
    // the default mode: small requests through the bounce pool, large ones zero-copy
    let r = transfer_suite("transfers_iommu", "iova>4G,strict", abi::DMA_MODE_AUTO);
    assert_iommu_up(&r);
    assert_dma_above_4g(&r);
}

/// The device saw only addresses above 4 GiB (rings, descriptors' data and SG lists).
fn assert_dma_above_4g(r: &Run) {
    let low: Vec<u64> = r
        .events
        .iter()
        .filter_map(|e| match e.event {
            dmalab_device::eventlog::Event::Dma { addr, .. } if addr < 1 << 32 => Some(addr),
            _ => None,
        })
        .take(5)
        .collect();
    let any = r.events("dma").len();
    r.check(
        any > 0 && low.is_empty(),
        &format!("{any} DMAs; some below 4 GiB: {low:#x?}"),
    );
}

/// No IOMMU, RAM above 4 GiB: the driver's buffers are physical addresses above it.
#[test]
fn transfers_with_ram_above_4g() {
    let r = transfer_suite("transfers_high_ram", "ram>4G", abi::DMA_MODE_AUTO);
    let high = r.events.iter().any(
        |e| matches!(e.event, dmalab_device::eventlog::Event::Dma { addr, .. } if addr >= 1 << 32),
    );
    r.check(high, "no DMA above 4 GiB: the condition did not take");
}

/// Every streaming mapping bounced (swiotlb=force): the zero-copy path and the self-test's
/// hand-overs give the right bytes only if every sync is where it belongs.
#[test]
fn transfers_with_every_mapping_bounced() {
    let r = transfer_suite("transfers_swiotlb", "swiotlb", abi::DMA_MODE_ZERO_COPY);
    r.check(
        !r.console.contains("swiotlb buffer is full"),
        "a mapping was longer than swiotlb can bounce",
    );
}

fn assert_iommu_up(r: &Run) {
    r.check(
        r.console.contains("DMAR") || r.console.contains("IOMMU"),
        "the guest did not bring up the IOMMU",
    );
}

/// Zero-copy behind the vIOMMU: every request's user pages get IOVAs for the request's life.
#[test]
fn transfers_zero_copy_behind_an_iommu() {
    let r = transfer_suite(
        "transfers_zero_copy_iommu",
        "smp2,strict",
        abi::DMA_MODE_ZERO_COPY,
    );
    assert_iommu_up(&r);
}

#[test]
fn repeated_unload_and_reload() {
    let r = run(&VmOptions::new("reload", "load,reload,unload"));
    r.assert_clean();
    assert_transfers_verified(&r, 3);
    let rm = r.all::<Rmmod>();
    r.check(
        rm.len() == 4 && rm.iter().all(|x| x.ok),
        "every rmmod succeeds",
    );
}

#[test]
fn unbind_with_requests_in_flight() {
    let mut o = VmOptions::new("unbind_busy", "load,unbind_busy,unload");
    o.conditions = on("smp2,strict");
    let r = run(&o);
    r.assert_clean();
    let b = r.one::<UnbindBusy>();
    r.check(
        b.other_errors == 0 && b.enodev == b.threads,
        &format!("every waiter must get ENODEV: {b:?}"),
    );
    r.check(
        b.completed_before > 0,
        "requests were flowing before the unbind",
    );
    assert_transfers_verified(&r, 1);
}

/// Unbinds, `rounds` times, while every queue has requests in flight whose completions the
/// device delays: interrupts are being handled while the unbind resets the device. The driver
/// must not touch the device after it decided to halt it; the device's account (no refused
/// doorbell) is the judge, with every waiter released with ENODEV.
fn unbind_under_delayed_completions(name: &str, conditions: &str) {
    let rounds = 12;
    let mut o = VmOptions::new(name, "load,unbind_repeat,unload");
    o.conditions = on(conditions);
    o.append = format!("dmalab.rounds={rounds}");
    o.faults = Some("[[rule]]\nname = \"slow\"\nkind = \"delay_completion\"\nms = 20\n".into());
    let r = run(&o);
    r.assert_clean();
    let busy = r.all::<UnbindBusy>();
    r.check(
        busy.len() == rounds,
        &format!("{rounds} rounds ran: {}", busy.len()),
    );
    for b in &busy {
        r.check(
            b.other_errors == 0 && b.enodev == b.threads,
            &format!("every waiter must get ENODEV: {b:?}"),
        );
    }
    assert_transfers_verified(&r, rounds);
}

#[test]
fn repeated_unbind_under_delayed_completions_never_touches_a_reset_device() {
    unbind_under_delayed_completions("unbind_delayed", "smp2");
}

#[test]
fn repeated_unbind_under_delayed_completions_behind_a_strict_iommu() {
    unbind_under_delayed_completions("unbind_delayed_iommu", "smp2,strict");
}

#[test]
fn queue_reset_after_a_timeout_with_the_late_completion_still_coming() {
    // Every 4000-byte COPY completes 600 ms late; the agent gives those 200 ms, on all four
    // queues at once, five times: each must time out and reset its queue while the device
    // still holds the completion, and the queue must work at once afterwards.
    let mut o = VmOptions::new("timeout_late", "load,timeout_late,stats,unload");
    o.faults = Some(
        "[[rule]]\nname = \"late\"\nkind = \"delay_completion\"\nms = 600\nsize = [4000, 4000]\n"
            .into(),
    );
    o.append = "dmalab.rounds=5".into();
    let r = run(&o);
    r.assert_clean();
    let xfers = r.all::<Xfer>();
    let late: Vec<&&Xfer> = xfers.iter().filter(|x| x.scenario == "late").collect();
    let after: Vec<&&Xfer> = xfers
        .iter()
        .filter(|x| x.scenario == "after_late")
        .collect();
    r.check(
        late.len() == 20 && after.len() == 20,
        "5 rounds on 4 queues",
    );
    for x in &late {
        r.check(
            x.errno == libc::ETIMEDOUT,
            &format!("the late request must time out: {x:?}"),
        );
    }
    for x in &after {
        r.check(
            x.ok(),
            &format!("the queue must work after its reset: {x:?}"),
        );
    }
    let s = r.one::<Stats>().total();
    r.check(
        s.timeouts == 20 && s.resets >= 20,
        &format!("every timeout resets its queue: {s:?}"),
    );
}

#[test]
fn transfers_with_legacy_interrupts() {
    // pci=nomsi: no MSI or MSI-X, so the driver falls back to INTx and reads IRQ_CAUSE.
    let mut o = VmOptions::new("intx", "load,info,transfers,concurrent,stats,unload");
    o.append = "pci=nomsi".into();
    let r = run(&o);
    r.assert_clean();
    let info = r.one::<Info>();
    r.check(
        info.irq_mode == "intx" && info.vectors == 1,
        &format!("expected one INTx vector: {info:?}"),
    );
    assert_transfers_verified(&r, 25);
    assert_counters_agree(&r);
}

#[test]
fn a_hostile_guest_cannot_make_the_device_write_outside_what_it_names() {
    // The agent unbinds the driver, programs the BAR itself with shrunken rings, rings that
    // wrap or lie outside RAM, and descriptors that wrap, miss RAM, or lie about their SG
    // lists; 60-odd canary pages must stay untouched, and the driver must work after a rebind.
    let mut o = VmOptions::new("hostile_guest", "load,hostile,unload");
    let why = "the agent, not the driver, programs BAR0 with these on purpose";
    o.expected_device_errors = vec![
        ("enable refused", why),
        ("doorbell 0x1c", why),
        ("descriptor", why),
    ];
    let r = run(&o);
    r.assert_clean();
    let h = r.one::<Hostile>();
    r.check(
        h.legit_done == 10 && h.legit_data,
        &format!("the legitimate FILLs must run (else the test proves nothing): {h:?}"),
    );
    r.check(
        h.stray_bytes == 0,
        &format!("the device wrote into canary pages: {h:?}"),
    );
    r.check(
        h.error_bits & abi::ERR_BAD_DOORBELL != 0,
        &format!("the hostile programming must be reported: {h:?}"),
    );
    assert_transfers_verified(&r, 1);
}

#[test]
fn every_probe_step_that_fails_undoes_what_came_before() {
    // The module is loaded with probe_fail_step=1, 2, ... until a probe succeeds. Behind a
    // vIOMMU every free of DMA memory reaches the device as an unmap, so the device sees a ring
    // freed while its queue is still enabled; kmemleak and DMA-API debug see the rest.
    let mut o = VmOptions::new("probe_unwind", "probe_unwind");
    o.iommu = true;
    o.append = "kmemleak=on".into();
    let r = run(&o);
    r.assert_clean();
    let steps = r.all::<ProbeStep>();
    let failed: Vec<&&ProbeStep> = steps.iter().filter(|s| !s.bound).collect();
    r.check(
        failed.len() >= 9,
        &format!(
            "expected every probe step to be made to fail, got {}",
            failed.len()
        ),
    );
    for s in &failed {
        r.check(
            !s.node,
            &format!("a failed probe left /dev/dmalab0 behind: {s:?}"),
        );
        r.check(
            s.dma_entries == Some(0),
            &format!("a failed probe left DMA memory allocated: {s:?}"),
        );
        r.check(
            s.dma_errors == Some(0),
            &format!("DMA-API debug found an error: {s:?}"),
        );
    }
    let last = steps.last().unwrap_or_else(|| r.fail("no probe steps"));
    r.check(
        last.bound && last.node,
        &format!("the probe after the failing ones must succeed: {last:?}"),
    );
    r.check(
        last.dma_entries.is_some_and(|n| n > 0),
        &format!("a bound driver has DMA memory: the DMA-API dump was not read: {last:?}"),
    );
    assert_transfers_verified(&r, 4);
    let totals = r.one::<ProbeUnwind>();
    r.check(
        totals.dma_errors == Some(0),
        &format!("DMA-API debug errors: {totals:?}"),
    );
    r.check(
        totals.kmemleak == Some(0),
        &format!("kmemleak found leaks, or is off (see the console): {totals:?}"),
    );
    let freed_live: Vec<_> = r
        .device_errors()
        .into_iter()
        .filter(|e| {
            e.what
                .starts_with(dmalab_device::eventlog::RING_UNMAPPED_WHILE_ENABLED)
        })
        .collect();
    r.check(
        freed_live.is_empty(),
        &format!(
            "the driver freed rings the device could still use: {:?}",
            freed_live
        ),
    );
}

/// The transfer suite under the oracle, on two vCPUs: its per-vCPU windows and the doorbell
/// synchronization are proven where submitter and interrupt handler run on different CPUs.
fn oracle_transfer_suite(name: &str, iommu: bool, mode: u32) {
    let mut o = VmOptions::new(
        name,
        "load,info,transfers,sg,concurrent,batch,selftest,errors,reset,stats,unload",
    );
    o.oracle = true;
    o.iommu = iommu;
    o.conditions = on("smp2");
    o.dma_mode = Some(mode);
    // zero-copy: the memory the device owns is the application's, so its accesses count too
    o.oracle_user = mode == abi::DMA_MODE_ZERO_COPY;
    let r = run(&o);
    assert_paths(&r, mode);
    r.assert_clean();
    // transfers, SG lists, and the 40 requests of the two checked batches
    assert_transfers_verified(&r, 25 + 16 + 40);
    let o = r
        .oracle
        .as_ref()
        .unwrap_or_else(|| r.fail("no oracle results"));
    let s = o
        .summary
        .as_ref()
        .unwrap_or_else(|| r.fail("no oracle summary"));
    // it really watched: register stores synchronized, accesses checked against live windows
    r.check(
        s["bar_stores"].as_u64().unwrap_or(0) > 100 && s["checked"].as_u64().unwrap_or(0) > 0,
        &format!("the oracle saw nothing: {s}"),
    );
    // and it followed the driver's streaming mappings (map, sync, unmap calls)
    r.check(
        s["dma_api_calls"].as_u64().unwrap_or(0) > 0,
        &format!("the oracle saw no DMA API call: {s}"),
    );
}

#[test]
fn the_oracle_finds_no_ownership_violation_in_the_reference_driver() {
    oracle_transfer_suite("oracle_transfers", false, abi::DMA_MODE_BOUNCE);
}

#[test]
fn the_oracle_finds_no_ownership_violation_on_the_zero_copy_path() {
    oracle_transfer_suite("oracle_transfers_zero_copy", false, abi::DMA_MODE_ZERO_COPY);
}

#[test]
fn the_oracle_finds_no_ownership_violation_behind_an_iommu() {
    oracle_transfer_suite("oracle_transfers_iommu", true, abi::DMA_MODE_ZERO_COPY);
}

/// Runs the driver with DMA bug `bug` (module parameter `dma_bug`) under the oracle and checks
/// that the oracle names the bug: its kind, the request that owned the memory, and (when given)
/// the function that made the access.
fn oracle_catches(bug: u32, delay_ms: u32, kinds: &[&str], function: Option<&str>) {
    let mut o = bug_options(&format!("oracle_bug_{bug}"), bug, delay_ms, 4000);
    o.oracle = true;
    // two vCPUs: the misuse is caught whichever CPU makes it
    o.conditions = on("smp2");
    o.dma_mode = Some(abi::DMA_MODE_BOUNCE);
    oracle_names(&run(&o), bug, kinds, function);
}

/// A VM that loads the driver with DMA bug `bug` while the host delays the completions of
/// `size`-byte requests by `delay_ms`.
fn bug_options(name: &str, bug: u32, delay_ms: u32, size: u32) -> VmOptions {
    let mut o = VmOptions::new(name, "dma_bug");
    o.append = format!("dmalab.bug={bug}");
    o.faults = Some(format!(
        "[[rule]]\nname = \"slow\"\nkind = \"delay_completion\"\nms = {delay_ms}\nsize = [{size}, {size}]\n"
    ));
    o
}

/// The oracle found a violation of one of `kinds` on the request the agent reported as
/// `owner`, made by `function` when given.
fn oracle_names(r: &Run, bug: u32, kinds: &[&str], function: Option<&str>) {
    r.assert_ran_cleanly();
    let owner = r
        .all::<Xfer>()
        .into_iter()
        .find(|x| x.scenario == "owner")
        .unwrap_or_else(|| r.fail("the agent reported no owner request"));
    let found = r
        .oracle
        .as_ref()
        .map(|o| o.violations.clone())
        .unwrap_or_default();
    let named = found.iter().find(|v| {
        kinds.contains(&v.kind.as_str())
            && v.queue == u16::from(owner.queue)
            && v.tag == owner.tag
            && function.is_none_or(|f| v.site().contains(f))
    });
    r.check(
        named.is_some(),
        &format!(
            "bug {bug}: expected a {kinds:?} violation of request {:#x} on queue {} by {function:?}; the oracle found: {found:#?}",
            owner.tag, owner.queue
        ),
    );
}

#[test]
fn the_oracle_catches_a_write_to_a_buffer_after_it_was_posted() {
    oracle_catches(
        1,
        1000,
        &["cpu_write_to_read_owned"],
        Some("write_after_post"),
    );
}

#[test]
fn the_oracle_catches_a_read_of_the_result_before_the_completion() {
    oracle_catches(
        2,
        1000,
        &["cpu_read_of_write_owned"],
        Some("read_before_completion"),
    );
}

#[test]
fn the_oracle_catches_buffers_freed_on_a_timeout_while_the_device_owns_them() {
    oracle_catches(
        3,
        3000,
        &["cpu_write_to_read_owned", "cpu_write_to_write_owned"],
        // the next request's copy-in (copy_from_user, straight into the pool) lands on them
        Some("_copy_from_user"),
    );
}

/// Zero-copy: on a timeout the driver unmaps and unpins the application's pages without
/// stopping the device (an unmap before the completion, which no type can rule out: the timeout
/// path needs `DeviceDone` and the bug makes one it has no right to). The application, told the
/// request is over, writes its buffer: the oracle, watching user mode too, sees it write memory
/// the device still owns.
#[test]
fn the_oracle_catches_an_unmap_before_the_completion_on_the_zero_copy_path() {
    let mut o = bug_options("oracle_bug_3_zero_copy", 3, 1000, 4096);
    o.oracle = true;
    o.oracle_user = true;
    o.dma_mode = Some(abi::DMA_MODE_ZERO_COPY);
    let r = run(&o);
    zero_copy_owner_timed_out(&r);
    oracle_names(&r, 3, &["cpu_write_to_write_owned"], None);
}

/// The request the agent reported as `owner`, required to have timed out on the zero-copy path.
fn zero_copy_owner_timed_out(r: &Run) -> Xfer {
    let owner = r
        .all::<Xfer>()
        .into_iter()
        .find(|x| x.scenario == "owner")
        .unwrap_or_else(|| r.fail("the agent reported no owner request"));
    r.check(
        owner.path == abi::PATH_ZERO_COPY && owner.errno == libc::ETIMEDOUT,
        &format!("the owner must time out on the zero-copy path: {owner:?}"),
    );
    owner.clone()
}

/// The same bug behind a vIOMMU: the unmap took the IOVAs away, so the device's late write is
/// refused (not a write into pages the application got back) and reported with its request.
#[test]
fn under_an_iommu_a_device_access_after_the_unmap_is_refused_and_reported() {
    // the device starts late: its DMA comes after the driver's premature unmap
    let mut o = bug_options("iommu_bug_3_zero_copy", 3, 1000, 4096);
    o.faults = Some(
        "[[rule]]\nname = \"slow\"\nkind = \"delay_start\"\nms = 1000\nsize = [4096, 4096]\n"
            .into(),
    );
    o.iommu = true;
    o.dma_mode = Some(abi::DMA_MODE_ZERO_COPY);
    // the refusal this test provokes (a late start explains no device error by itself)
    o.expected_device_errors.push((
        "is not mapped for the device",
        "the deliberate bug: the DMA comes after the driver's premature unmap",
    ));
    let r = run(&o);
    r.assert_ran_cleanly();
    let owner = zero_copy_owner_timed_out(&r);
    let refused: Vec<_> = r
        .device_errors()
        .into_iter()
        .filter(|e| {
            e.tag == Some(owner.tag)
                && e.status == Some(abi::CS_DMA_FAULT)
                && e.what.contains("not mapped")
        })
        .collect();
    r.check(
        !refused.is_empty(),
        &format!(
            "the device must refuse the owner's late DMA to the unmapped IOVAs and report it: {:?}",
            r.device_errors()
        ),
    );
}

/// The streaming mapping of `IOC_DMA_SELFTEST`, with the driver reading the device's result
/// before syncing it for the CPU (debug-only `dma_bug=11`: the types demand the sync, the bug
/// reaches the page around them). No descriptor owns the memory any more, the DMA API still
/// gives it to the device: the oracle, which follows the driver's map, sync and unmap calls,
/// names the read and the function that made it.
#[test]
fn the_oracle_catches_a_result_read_without_a_sync_for_the_cpu() {
    let mut o = bug_options("oracle_bug_11", 11, 0, 1);
    o.oracle = true;
    let r = run(&o);
    r.assert_ran_cleanly();
    let tests = r.all::<DmaSelfTest>();
    r.check(
        !tests.is_empty() && tests.iter().all(|t| t.errno == 0 && t.verified == t.rounds),
        &format!("the self-test itself must pass: {tests:?}"),
    );
    let found = r
        .oracle
        .as_ref()
        .map(|o| o.violations.clone())
        .unwrap_or_default();
    r.check(
        found.iter().any(|v| {
            v.kind == "cpu_read_of_device_owned_mapping" && v.site().contains("read_without_sync")
        }),
        &format!("expected a read of a device-owned mapping by read_without_sync; the oracle found: {found:#?}"),
    );
}

#[test]
fn the_oracle_catches_a_rewritten_posted_descriptor() {
    oracle_catches(
        4,
        1000,
        &["cpu_write_to_posted_descriptor"],
        Some("rewrite_descriptor"),
    );
}

#[test]
fn the_oracle_catches_a_buffer_reused_before_its_request_completed() {
    oracle_catches(
        5,
        4000,
        &["cpu_write_to_read_owned", "cpu_write_to_write_owned"],
        // the next request's copy-in (copy_from_user, straight into the pool) lands on them
        Some("_copy_from_user"),
    );
}

#[test]
fn dmalab_check_grades_the_reference_driver_as_passing() {
    // the checker boots its own VMs with the module it is given: ours must pass levels 1-3
    let module = dmalab_harness::artifacts::path("module").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
        .args(["--level", "3", "--run-name", "check_reference", "--driver"])
        .arg(&module)
        .output()
        .expect("run dmalab-check");
    let card = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && card.contains("PASS") && !card.contains("FAIL"),
        "dmalab check failed the reference driver:\n{card}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        card.lines().filter(|l| l.contains("PASS")).count() >= 9,
        "{card}"
    );
}

#[test]
fn dmalab_check_names_what_each_broken_driver_gets_wrong() {
    // our module with one deliberate bug each (module parameter dma_bug, guest-driver/module/
    // bugs.rs): the checker must fail exactly the check that is about that bug, graded alone
    // (`--check`: the other checks of its level are the reference driver's test's business)
    let module = dmalab_harness::artifacts::path("module").unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (8, "unloads", "unloads cleanly"),
        (6, "status_errno", "device error statuses become errnos"),
        (7, "by_tag", "completions are matched by tag"),
        (3, "stall", "a stalled request times out"),
        (9, "stall", "a stalled request times out"),
        (10, "error_paths", "error paths give back what they took"),
        (1, "ownership", "never touches memory the device owns"),
        (2, "ownership", "never touches memory the device owns"),
        (4, "ownership", "never touches memory the device owns"),
        (5, "ownership", "never touches memory the device owns"),
        // the device obeys the PCI command register: no DMA without bus mastering, and the
        // card says so in the device's words
        (12, "every_opcode", "bus mastering is off"),
        // another process's bytes handed back after a silently short READ
        (15, "stale_bytes", "returned another process's data"),
        // the three below pass on the gentle machine: each_condition_... shows it
        (13, "device_reach", "the driver set a 64-bit DMA mask"),
        (14, "high_addresses", "is not mapped for the device"),
        (
            11,
            "bounce_buffers",
            "rounds gave the CPU the device's bytes",
        ),
        (16, "high_addresses", "is not mapped for the device"),
        // interrupts off as a lock: the completion handler runs on the other vCPU
        (17, "ring_wrap", "rings wrap several times"),
    ];
    // each grading is its own process with its own VMs: side by side, as many VMs at once as
    // the machine runs
    let cards = side_by_side(&cases, |&(bug, id, _)| {
        grade_broken(&module, bug, &["--check", id], &format!("check_bug{bug}"))
    });
    for ((bug, _, check), (passed, card)) in cases.iter().zip(cards) {
        assert!(
            !passed
                && card
                    .lines()
                    .any(|l| l.contains("FAIL") && l.contains(check)),
            "dma_bug={bug}: expected the check '{check}' to fail:\n{card}"
        );
    }
}

/// Each platform condition has a broken driver that only it catches: graded on the gentle
/// machine (one vCPU, memory below 4 GiB, nothing bounced, a device that drives 64 address
/// bits) the same driver passes the same check (`dmalab_check_names_what_each_broken_driver_
/// gets_wrong` shows it failing under the condition).
#[test]
fn each_condition_catches_the_bug_only_it_can_show() {
    let module = dmalab_harness::artifacts::path("module").unwrap_or_else(|e| panic!("{e}"));
    let cases = [
        (13, "device_reach", "ram>4G, dma32"),
        (14, "high_addresses", "iova>4G"),
        (11, "bounce_buffers", "swiotlb"),
        // the vIOMMU, strict as every vIOMMU with device assignment is: the unmap has taken
        // effect before the device is given the address
        (16, "high_addresses", "strict"),
        // one vCPU: the completion interrupt waits until the submitter enables interrupts
        (17, "ring_wrap", "smp2"),
    ];
    let cards = side_by_side(&cases, |&(bug, id, _)| {
        let args = ["--check", id, "--conditions", "gentle"];
        grade_broken(&module, bug, &args, &format!("gentle_bug{bug}"))
    });
    for ((bug, id, condition), (passed, card)) in cases.iter().zip(cards) {
        assert!(
            passed && card.contains("PASS") && card.contains("[smp1, preempt]"),
            "dma_bug={bug}: {id} must pass on the gentle machine (only {condition} shows the bug):\n{card}"
        );
    }
    // `dma40` has no machine of its own (RAM above 1 TiB): the vIOMMU's IOVAs, allocated from
    // the top of the mask, go beyond 40 bits for a driver with a 64-bit mask
    let (passed, card) = grade_broken(
        &module,
        13,
        &["--check", "device_reach", "--conditions", "iova>4G,dma40"],
        "dma40_bug13",
    );
    assert!(
        !passed && card.contains("FAIL") && card.contains("40-bit DMA reach"),
        "dma_bug=13 must fail device_reach under iova>4G, dma40:\n{card}"
    );
    // and --list says which condition each of them needs
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
        .arg("--list")
        .output()
        .expect("run dmalab-check --list");
    let list = String::from_utf8_lossy(&out.stdout);
    for (_, id, condition) in cases {
        assert!(
            list.lines()
                .any(|l| l.starts_with(id) && l.contains(condition)),
            "--list does not give {id} its condition {condition}:\n{list}"
        );
    }
}

/// `dmalab check` of our module loaded with `dma_bug=bug`, with `args`, as grading `run_name`:
/// whether it passed, and its card.
fn grade_broken(
    module: &std::path::Path,
    bug: u32,
    args: &[&str],
    run_name: &str,
) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
        .args(args)
        .args(["--append", &format!("dmalab_module.dma_bug={bug}")])
        .args(["--run-name", run_name])
        .arg("--driver")
        .arg(module)
        .output()
        .expect("run dmalab-check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `f` on every item, each in its own thread (their VMs wait for slots), results in order.
fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items.iter().map(|i| s.spawn(move || f(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Builds a tutorial module directory against the guest kernel; the path of its .ko.
fn build_exercise(dir: &std::path::Path) -> std::path::PathBuf {
    let kbuild = dmalab_harness::artifacts::path("kbuild").unwrap_or_else(|e| panic!("{e}"));
    let root = dmalab_harness::artifacts::root();
    let out = std::process::Command::new(root.join("scripts/build-exercise.sh"))
        .arg(&kbuild)
        .arg(dir)
        .output()
        .expect("run build-exercise.sh");
    assert!(
        out.status.success(),
        "{} does not build:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `dmalab check --step N` on a module, as grading `run_name` (`new_only`: only the checks
/// step N adds): (passed, report card).
fn check_step(
    step: u32,
    module: &std::path::Path,
    run_name: &str,
    new_only: bool,
) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
        .args(["--step", &step.to_string(), "--run-name", run_name])
        .args(new_only.then_some("--new-only"))
        .arg("--driver")
        .arg(module)
        .output()
        .expect("run dmalab-check");
    let card = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| l.starts_with("dmalab check"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    (out.status.success(), card)
}

#[test]
fn every_tutorial_solution_passes_its_step_and_every_skeleton_fails_it_helpfully() {
    let root = dmalab_harness::artifacts::root();
    let steps: Vec<u32> = (1..=dmalab_harness::tutorial::STEPS)
        .filter(|&step| dmalab_harness::tutorial::solution_dir(&root, step).exists())
        .collect();
    assert!(steps.len() >= 2, "no tutorial solutions found");
    // every step's solution and skeleton, graded side by side
    let gradings: Vec<(u32, bool)> = steps
        .iter()
        .flat_map(|&step| [(step, true), (step, false)])
        .collect();
    let cards = side_by_side(&gradings, |&(step, solution)| {
        let (dir, name) = if solution {
            (
                dmalab_harness::tutorial::solution_dir(&root, step),
                "solution",
            )
        } else {
            (
                dmalab_harness::tutorial::skeleton_dir(&root, step),
                "skeleton",
            )
        };
        // a skeleton is the step before's solution with this step's part left to do: graded
        // on what this step adds (the solution is graded on every step up to it)
        let run_name = format!("check_step{step}_{name}");
        check_step(step, &build_exercise(&dir), &run_name, !solution)
    });
    for (&(step, solution), (passed, card)) in gradings.iter().zip(cards) {
        if solution {
            // the solution passes every check of steps 1..=N
            assert!(
                passed && !card.contains("FAIL"),
                "the step {step} solution fails its step:\n{card}"
            );
            continue;
        }
        // the skeleton as given fails, and every failure says why and where to read up
        let fails: Vec<&str> = card.lines().filter(|l| l.contains("FAIL")).collect();
        assert!(
            !passed && !fails.is_empty(),
            "the step {step} skeleton passes its step:\n{card}"
        );
        for l in fails {
            assert!(
                l.contains(": ") && l.contains("(see docs/"),
                "step {step} skeleton: a failure without a reason or a pointer: {l}"
            );
        }
    }
}

/// The mistake catalogue (exercises/mistakes.toml): each typical student mistake, built as a
/// variant of its step's solution and graded by the check that should catch it, fails that
/// check with a message naming its cause and pointing at its step's chapter.
#[test]
fn every_catalogued_mistake_fails_its_step_naming_its_cause() {
    use dmalab_harness::tutorial;
    let root = dmalab_harness::artifacts::root();
    let all = tutorial::mistakes(&root).unwrap_or_else(|e| panic!("{e}"));
    let results = side_by_side(&all, |m| {
        let dir = root.join("target/mistakes").join(&m.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mistake dir");
        for (name, text) in tutorial::mistake_files(&root, m).unwrap_or_else(|e| panic!("{e}")) {
            std::fs::write(dir.join(name), text).expect("write variant");
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
            .args(["--step", &m.step.to_string(), "--check", &m.check])
            .args(["--run-name", &format!("mistake_{}", m.id)])
            .arg("--driver")
            .arg(build_exercise(&dir))
            .output()
            .expect("run dmalab-check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    });
    let mut wrong = Vec::new();
    for (m, (passed, card)) in all.iter().zip(results) {
        let chapter = tutorial::chapter_path(&root, m.step).expect("chapter");
        let chapter = format!(
            "docs/tutorial/{}",
            chapter.file_name().unwrap().to_string_lossy()
        );
        let fail = card.lines().find(|l| l.contains("FAIL"));
        let problem = match fail {
            _ if passed => Some("the step passes".to_string()),
            None => Some("no check failed".to_string()),
            Some(l) => {
                let missing: Vec<&String> =
                    m.says.iter().filter(|w| !l.contains(w.as_str())).collect();
                if !missing.is_empty() {
                    Some(format!("its failure does not say {missing:?}: {l}"))
                } else if !l.contains(&chapter) {
                    Some(format!("its failure does not point at {chapter}: {l}"))
                } else {
                    None
                }
            }
        };
        if let Some(p) = problem {
            wrong.push(format!("{} (step {}, {}): {p}", m.id, m.step, m.what));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} mistakes are not caught as they should be:\n{}",
        wrong.len(),
        all.len(),
        wrong.join("\n")
    );
}

/// `make conformance` in short: the suite of the kernel's Rust DMA abstraction builds every
/// API's tests on the build's tree and passes them with the real device, with one vCPU and with
/// every streaming mapping bounced (the full run covers five sets of conditions).
#[test]
fn the_conformance_suite_passes_on_the_build_tree() {
    let kbuild = dmalab_harness::artifacts::path("kbuild").unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-conformance"))
        .arg("--kbuild")
        .arg(&kbuild)
        .args([
            "--conditions",
            "gentle;swiotlb",
            "--run-name",
            "conformance_smoke",
        ])
        .output()
        .expect("run dmalab-conformance");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the conformance suite fails on the build's tree:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // every API built, and the table has its rows under both conditions
    assert!(!report.contains("NOT BUILT"), "{report}");
    for api in [
        "coherent",
        "coherent_box",
        "coherent_handle",
        "attrs",
        "dma_mask",
        "sgtable",
    ] {
        assert!(
            report.lines().any(|l| l.starts_with(api)),
            "no {api} row:\n{report}"
        );
    }
}

/// `make conformance-selftest` in short: two patches that each break one rule of the kernel's
/// Rust DMA abstraction (an SG entry's length, a refused DMA mask reported as accepted), each
/// applied to a copy of the tree whose kernel is rebuilt: the suite fails exactly the tests of
/// the API each breaks, and no other.
#[test]
fn the_conformance_suite_catches_an_abstraction_broken_on_purpose() {
    let root = dmalab_harness::artifacts::root();
    let need = |n: &str| dmalab_harness::artifacts::path(n).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(root.join("scripts/conformance-selftest.sh"))
        .arg(need("kbuild"))
        .arg(need("agent"))
        .arg(root.join("conformance/selftest/sg-entry-length-short.patch"))
        .arg(root.join("conformance/selftest/mask-error-ignored.patch"))
        .env(
            "DMALAB_CONFORMANCE_BIN",
            env!("CARGO_BIN_EXE_dmalab-conformance"),
        )
        .output()
        .expect("run conformance-selftest.sh");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "a broken abstraction was not caught as it should be:\n{log}"
    );
    assert_eq!(log.matches("caught: the tests of").count(), 2, "{log}");
}

/// Every kernel API signature a tutorial chapter quotes is declared, as quoted, by the guest
/// kernel's tree the build unpacked (no VM: the tree is an artifact like the kernel).
#[test]
fn the_tutorial_quotes_the_kernel_api_as_the_tree_declares_it() {
    let kbuild = dmalab_harness::artifacts::path("kbuild").unwrap_or_else(|e| panic!("{e}"));
    let tree = kbuild.join("source");
    assert!(
        tree.join("rust/kernel/dma.rs").exists(),
        "no kernel tree at {}",
        tree.display()
    );
    let wrong = dmalab_harness::tutorial::api_mismatches(&dmalab_harness::artifacts::root(), &tree);
    assert!(
        wrong.is_empty(),
        "the tutorial misquotes the kernel:\n{}",
        wrong.join("\n")
    );
}

/// `make bench`'s boot in miniature: every cell of its table runs (dmalab on one queue and on
/// all, QEMU's NVMe on both namespaces through the kernel's driver, edu from user space, the
/// guest's memcpy), moves the right bytes and fails no request, and dmalab's data path reads no
/// register. (Speed is `make bench`'s business, never a test's.)
#[test]
fn bench_matrix_runs_every_peer_in_one_boot() {
    let mut o = VmOptions::new("bench_smoke", "load,bench_matrix,unload");
    o.peers = true;
    o.append = "dmalab.bench_secs=0.1".into();
    let r = run(&o);
    r.assert_clean();
    let cells = r.all::<Bench>();
    let count = |d: &str| cells.iter().filter(|b| b.device == d).count();
    // 3 sizes x depths 1, 8, 32; dmalab's all-queue cells at depths 8 and 32 only; then 4
    // more sizes at depth 1 (the bounce / zero-copy crossover); each in both data paths
    for (device, n) in [
        ("dmalab", 15 + 4),
        ("dmalab-zero-copy", 15 + 4),
        // one thread's IOC_SUBMIT_BATCH at depths 8 and 32, on one queue and on all
        ("dmalab-batch", 12),
        ("dmalab-zero-copy-batch", 12),
        ("nvme", 9),
        ("nvme-nodata", 9),
        ("guest-memcpy", 3),
        ("edu", 1),
    ] {
        r.check(
            count(device) == n,
            &format!("{n} {device} cells, got {}", count(device)),
        );
    }
    let bad: Vec<_> = cells
        .iter()
        .filter(|b| b.ops == 0 || b.failed > 0)
        .collect();
    r.check(bad.is_empty(), &format!("cells that failed: {bad:?}"));
    let reads = dmalab_harness::bench::data_path_bar_reads(&r.events);
    r.check(
        reads.is_empty(),
        &format!("{} BAR0 reads on the data path: {reads:x?}", reads.len()),
    );
}

/// Guest RAM on files the client could shrink: QEMU's `memory-backend-file` on tmpfs and on
/// huge pages (hugetlbfs) hands the device server files without `F_SEAL_SHRINK`, and hugetlbfs
/// maps only whole 2 MiB pages while QEMU maps RAM in pieces that are not. Transfers, SG lists
/// and concurrent requests must work on both (docs/reliability.md: unsealed backing files).
#[test]
fn transfers_with_guest_ram_on_tmpfs_and_on_huge_pages() {
    use dmalab_harness::vm::RamBackend;
    let scenarios = "load,info,transfers,sg,concurrent,unload";
    let root = dmalab_harness::artifacts::root().join("target/e2e-ram");
    let shm = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        root.join("files")
    };
    std::fs::create_dir_all(&shm).unwrap();
    let mut o = VmOptions::new("ram_tmpfs", scenarios);
    o.ram = RamBackend::File(shm);
    let r = run(&o);
    r.assert_clean();
    assert_transfers_verified(&r, 25 + 16);
    let c = r.one::<Concurrent>();
    r.check(c.failed == 0, &format!("concurrent: {c:?}"));

    let huge = match dmalab_harness::hugepages::reserve(o.memory_mb, &root.join("huge")) {
        Ok(h) => h,
        Err(why) => {
            // the tmpfs half stands; say loudly what was not shown
            eprintln!("NOTE: guest RAM on huge pages not tested here: {why}");
            return;
        }
    };
    let mut o = VmOptions::new("ram_hugetlbfs", scenarios);
    o.ram = RamBackend::File(huge.dir().to_path_buf());
    let r = run(&o);
    r.assert_clean();
    assert_transfers_verified(&r, 25 + 16);
    let c = r.one::<Concurrent>();
    r.check(c.failed == 0, &format!("concurrent: {c:?}"));
    drop(huge);
}

/// The DMA mask check looks at what the driver did, not at what it says: the step 4 solution
/// never sets a mask (step 5 adds it), so the kernel keeps the PCI default of 32 bits, and
/// step 5's check says so and how to fix it.
#[test]
fn the_dma_mask_check_reads_the_kernel_s_mask() {
    let root = dmalab_harness::artifacts::root();
    let ko = build_exercise(&root.join("exercises/solutions/step4"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmalab-check"))
        .args([
            "--step",
            "5",
            "--check",
            "dma_mask",
            "--run-name",
            "mask_step4",
        ])
        .arg("--driver")
        .arg(&ko)
        .output()
        .expect("run dmalab-check");
    let card = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && card.contains("FAIL")
            && card.contains("32-bit DMA mask")
            && card.contains("never set it")
            && card.contains("05-sg.md#the-dma-mask"),
        "{card}"
    );
}
