//! Every fault kind, injected through rules, seen from the driver's side of the rings; and the
//! device working normally again afterwards.

use std::time::Duration;

use dmalab_abi as abi;
use dmalab_device::testing::{desc, Rig, Ring, DATA_BASE};

const A: u64 = DATA_BASE;
const B: u64 = DATA_BASE + 0x10_0000;

fn rig(rules: &str) -> (Rig, Ring) {
    let r = Rig::with_faults(1, 4 << 20, rules);
    let q = r.setup_queue(0, 16);
    r.poke(A, &(0..8192u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    (r, q)
}

fn copy(tag: u32, len: u32) -> dmalab_abi::Descriptor {
    desc(abi::OP_COPY, tag, len, A, B)
}

/// A normal COPY after the fault: completes and moves every byte.
fn still_works(r: &Rig, q: &mut Ring) {
    r.poke(B, &[0; 4096]);
    let c = r.run_one(q, copy(99, 4096));
    assert_eq!((c.status, c.tag, c.bytes), (abi::CS_OK, 99, 4096));
    assert_eq!(r.peek(B, 4096), r.peek(A, 4096));
}

fn nothing_for(r: &Rig, q: &mut Ring) {
    std::thread::sleep(Duration::from_millis(50));
    assert!(r.poll(q).is_none(), "no completion expected");
}

#[test]
fn dma_errors_and_error_status() {
    for (kind, status) in [
        ("kind = \"dma_read_error\"", abi::CS_DMA_FAULT),
        ("kind = \"dma_write_error\"", abi::CS_DMA_FAULT),
        ("kind = \"error_status\"", abi::CS_DEVICE_ERROR),
        ("kind = \"error_status\"\nstatus = 5", abi::CS_OVERLAP),
    ] {
        let (r, mut q) = rig(&format!("[[rule]]\n{kind}\ntimes = 1"));
        r.poke(B, &[0xee; 64]);
        let c = r.run_one(&mut q, copy(1, 64));
        assert_eq!((c.status, c.bytes), (status, 0), "{kind}");
        assert_eq!(r.peek(B, 64), [0xee; 64], "{kind}: nothing written");
        assert_eq!(r.log.counters.snapshot().faults, 1);
        still_works(&r, &mut q);
    }
}

#[test]
fn corruption_flips_bits_and_checksums_catch_it() {
    let (r, mut q) = rig("[[rule]]\nkind = \"corrupt\"\nbits = 3\nopcode = \"copy\"\ntimes = 1");
    assert_eq!(r.run_one(&mut q, copy(1, 4096)).status, abi::CS_OK);
    let flipped: u32 = r
        .peek(A, 4096)
        .iter()
        .zip(r.peek(B, 4096))
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(flipped, 3);
    still_works(&r, &mut q);

    let (r, mut q) = rig("[[rule]]\nkind = \"corrupt\"\nopcode = \"checksum\"\nnth = 1");
    let bad = r.run_one(&mut q, desc(abi::OP_CHECKSUM, 1, 4096, A, 0));
    let good = r.run_one(&mut q, desc(abi::OP_CHECKSUM, 2, 4096, A, 0));
    assert_eq!(good.result, crc32c::crc32c(&r.peek(A, 4096)));
    assert_ne!(bad.result, good.result);
}

#[test]
fn short_transfers_reported_and_silent() {
    for reported in [true, false] {
        let (r, mut q) = rig(&format!(
            "[[rule]]\nkind = \"short_transfer\"\nbytes = 100\nreported = {reported}\ntimes = 1"
        ));
        r.poke(B, &[0; 4096]);
        let c = r.run_one(&mut q, copy(1, 4096));
        assert_eq!(
            (c.status, c.bytes),
            (abi::CS_OK, if reported { 100 } else { 4096 })
        );
        assert_eq!(r.peek(B, 100), r.peek(A, 100));
        assert_eq!(
            r.peek(B + 100, 10),
            [0; 10],
            "bytes past the short length are not moved"
        );
        still_works(&r, &mut q);
    }
}

#[test]
fn dropped_completion() {
    let (r, mut q) = rig("[[rule]]\nkind = \"drop_completion\"\ntimes = 1");
    r.submit(&mut q, &[copy(1, 64)]);
    nothing_for(&r, &mut q);
    assert_eq!(
        r.read32(abi::queue_reg(0, abi::Q_DONE)),
        1,
        "the work itself was done"
    );
    still_works(&r, &mut q);
}

#[test]
fn delayed_completion_arrives() {
    let (r, mut q) = rig("[[rule]]\nkind = \"delay_completion\"\nms = 100\ntimes = 1");
    assert_eq!(r.run_one(&mut q, copy(1, 64)).status, abi::CS_OK);
}

/// A late start moves nothing until its delay is over, and a queue reset drops the descriptor
/// without it ever touching memory (a driver that unmapped meanwhile is not written to).
#[test]
fn a_delayed_start_touches_memory_only_after_the_delay_and_never_after_a_reset() {
    let (r, mut q) = rig("[[rule]]\nkind = \"delay_start\"\nms = 60000\ntimes = 1");
    r.poke(B, &[0; 4096]);
    r.submit(&mut q, &[copy(1, 4096)]);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.peek(B, 4096), vec![0; 4096], "moved before its start");
    r.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.peek(B, 4096), vec![0; 4096], "moved after the reset");
    let mut q = r.setup_queue(0, 16);
    still_works(&r, &mut q);

    let (r, mut q) = rig("[[rule]]\nkind = \"delay_start\"\nms = 100\ntimes = 1");
    r.poke(B, &[0; 4096]);
    assert_eq!(r.run_one(&mut q, copy(2, 4096)).status, abi::CS_OK);
    assert_eq!(r.peek(B, 4096), r.peek(A, 4096));
}

#[test]
fn duplicate_and_out_of_order_completions() {
    let (r, mut q) = rig("[[rule]]\nkind = \"duplicate_completion\"\ntimes = 1");
    r.submit(&mut q, &[copy(1, 64)]);
    let cs = r.wait(&mut q, 2);
    assert_eq!((cs[0].tag, cs[1].tag), (1, 1));
    still_works(&r, &mut q);

    let (r, mut q) = rig("[[rule]]\nkind = \"out_of_order\"\ntimes = 1");
    r.submit(&mut q, &[copy(1, 64), copy(2, 64)]);
    let tags: Vec<u32> = r.wait(&mut q, 2).iter().map(|c| c.tag).collect();
    assert_eq!(tags, [2, 1]);
    still_works(&r, &mut q);
}

#[test]
fn interrupt_faults() {
    let (r, mut q) = rig("[[rule]]\nkind = \"spurious_irq\"\ntimes = 1");
    r.run_one(&mut q, copy(1, 64));
    assert!(
        r.irq.wait_for(0, 2, Duration::from_secs(30)),
        "spurious + completion"
    );

    let (r, mut q) = rig("[[rule]]\nkind = \"lost_irq\"\ntimes = 1");
    assert_eq!(r.run_one(&mut q, copy(1, 64)).status, abi::CS_OK);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        r.irq.count(0),
        0,
        "completion written without its interrupt"
    );
    still_works(&r, &mut q);
    assert!(r.irq.wait_for(0, 1, Duration::from_secs(30)));

    let (r, mut q) = rig("[[rule]]\nkind = \"irq_storm\"\ncount = 50\ntimes = 1");
    r.run_one(&mut q, copy(1, 64));
    assert!(r.irq.wait_for(0, 51, Duration::from_secs(30)));
}

#[test]
fn stall_until_queue_reset() {
    let (r, mut q) = rig("[[rule]]\nkind = \"stall\"\ntimes = 1");
    r.submit(&mut q, &[copy(1, 64), copy(2, 64)]);
    nothing_for(&r, &mut q);
    assert_eq!(
        r.read32(abi::queue_reg(0, abi::Q_STATUS)),
        abi::QSTATUS_ENABLED,
        "a stall looks healthy"
    );
    r.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    let mut q = r.setup_queue(0, 16);
    still_works(&r, &mut q);
}

#[test]
fn fatal_error_until_device_reset() {
    let (r, mut q) = rig("[[rule]]\nkind = \"fatal\"\ntimes = 1");
    r.submit(&mut q, &[copy(1, 64)]);
    nothing_for(&r, &mut q);
    assert_ne!(r.read32(abi::REG_DEV_STATUS) & abi::STATUS_FATAL, 0);
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_FATAL, 0);
    assert!(
        r.irq.wait_for(1, 1, Duration::from_secs(30)),
        "error vector"
    );
    r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    assert_eq!(r.read32(abi::REG_DEV_STATUS), abi::STATUS_READY);
    let mut q = r.setup_queue(0, 16);
    r.poke(A, &(0..8192u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
    still_works(&r, &mut q);
}

#[test]
fn dma_outside_the_descriptor_is_refused_and_reported() {
    let (r, mut q) = rig("[[rule]]\nkind = \"dma_outside\"\noffset = 0\nlen = 4096\ntimes = 1");
    r.poke(B + 64, &[0x77; 4096]);
    let c = r.run_one(&mut q, copy(1, 64));
    assert_eq!(c.status, abi::CS_OK);
    assert_eq!(
        r.peek(B + 64, 4096),
        [0x77; 4096],
        "nothing written outside the descriptor"
    );
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_DMA_VIOLATION, 0);
    assert!(
        r.irq.wait_for(1, 1, Duration::from_secs(30)),
        "error vector"
    );
    still_works(&r, &mut q);
}

#[test]
fn the_second_write_after_a_reset() {
    let (r, mut q) = rig(
        "[[rule]]\nname = \"reset\"\nkind = \"mark\"\non = \"reset\"\n\
         [[rule]]\nkind = \"error_status\"\nopcode = \"write\"\nnth = 2\nafter_rule = \"reset\"",
    );
    let w = |tag| desc(abi::OP_WRITE, tag, 64, A, 0);
    assert!(
        (1..=3).all(|t| r.run_one(&mut q, w(t)).status == abi::CS_OK),
        "not armed before a reset"
    );
    r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    let mut q = r.setup_queue(0, 16);
    let s: Vec<u16> = (1..=3).map(|t| r.run_one(&mut q, w(t)).status).collect();
    assert_eq!(s, [abi::CS_OK, abi::CS_DEVICE_ERROR, abi::CS_OK]);
}

#[test]
fn a_queue_reset_is_not_held_up_by_the_longest_delay_or_storm() {
    let (r, mut q) = rig("[[rule]]\nkind = \"delay_completion\"\nms = 60000\n\
         [[rule]]\nkind = \"irq_storm\"\ncount = 10000");
    r.submit(&mut q, &[copy(1, 64)]);
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::Instant::now();
    r.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    // The reset used to wait out the whole minute.
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let mut q = r.setup_queue(0, 16);
    r.submit(&mut q, &[]);
}

#[test]
fn rule_parameters_are_range_checked() {
    for (rule, field) in [
        ("kind = \"corrupt\"\nbits = 4294967295", "bits"),
        ("kind = \"irq_storm\"\ncount = 4294967295", "count"),
        ("kind = \"delay_completion\"\nms = 4294967295", "ms"),
        ("kind = \"dma_outside\"\nlen = 1099511627776", "len"),
        ("kind = \"short_transfer\"\nbytes = 4294967295", "bytes"),
        (
            "name = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\nkind = \"mark\"",
            "name",
        ),
    ] {
        let e = dmalab_device::faults::RuleSet::from_toml(&format!("[[rule]]\n{rule}"))
            .expect_err(rule)
            .to_string();
        assert!(e.contains(&format!("`{field}`")), "{rule}: {e}");
    }
    let many = "[[rule]]\nkind = \"mark\"\n".repeat(dmalab_device::faults::MAX_RULES + 1);
    let e = dmalab_device::faults::RuleSet::from_toml(&many).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

/// Issue 25, item 3: shutting the device down (the client disconnected, the server exits) cuts
/// a pending injected delay short, as a reset does, on the rings and on the direct block.
#[test]
fn shutdown_cuts_an_injected_delay_short() {
    for (kind, direct) in [
        ("delay_completion", false),
        ("delay_start", false),
        ("delay_completion", true),
    ] {
        let r = Rig::with_faults(
            1,
            1 << 20,
            &format!("[[rule]]\nkind = \"{kind}\"\nms = 60000\n"),
        );
        if direct {
            r.direct_start(
                &desc(abi::OP_FILL, 1, 64, 0, DATA_BASE),
                u32::from(abi::OP_FILL),
            );
        } else {
            let mut q = r.setup_queue(0, 8);
            r.submit(&mut q, &[desc(abi::OP_FILL, 1, 64, 0, DATA_BASE)]);
        }
        // the device has taken the descriptor (or command) and is waiting out the delay
        let t = std::time::Instant::now();
        while r.log.counters.snapshot().descriptors == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = std::time::Instant::now();
        drop(r);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{kind} (direct {direct}): shutdown waited {:?} for a 60 s delay",
            t.elapsed()
        );
    }
}
