//! The direct-transfer block (DMA_* registers): edu-style DMA with the rings' validation,
//! event log and fault hooks, seen from the driver's side.

use std::time::Duration;

use dmalab_abi as abi;
use dmalab_device::eventlog::EventLog;
use dmalab_device::testing::{desc, Rig, DATA_BASE};

const A: u64 = DATA_BASE;
const B: u64 = DATA_BASE + 0x10_0000;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rig(rules: &str) -> Rig {
    let r = Rig::with_faults(1, 4 << 20, rules);
    r.poke(A, &pattern(65536, 1));
    r.poke(B, &[0xee; 65536]);
    r
}

#[test]
fn every_opcode_moves_exactly_its_bytes() {
    let r = rig("");
    assert_eq!(r.read32(abi::REG_DMA_STATUS), 0, "idle at reset");
    // COPY, with a guard byte either side of the destination untouched
    assert_eq!(
        r.direct(&desc(abi::OP_COPY, 0, 4096, A, B + 1)),
        (abi::CS_OK, 0, 4096)
    );
    assert_eq!(r.peek(B + 1, 4096), r.peek(A, 4096));
    assert_eq!(r.peek(B, 1), [0xee]);
    assert_eq!(r.peek(B + 4097, 1), [0xee]);
    // WRITE to internal memory, READ back elsewhere
    assert_eq!(
        r.direct(&desc(abi::OP_WRITE, 0, 1000, A, 512)).0,
        abi::CS_OK
    );
    r.poke(B, &[0; 1000]);
    assert_eq!(
        r.direct(&desc(abi::OP_READ, 0, 1000, 512, B)),
        (abi::CS_OK, 0, 1000)
    );
    assert_eq!(r.peek(B, 1000), r.peek(A, 1000));
    // FILL
    let mut fill = desc(abi::OP_FILL, 0, 7, 0, B);
    fill.pattern = 0x4433_2211;
    assert_eq!(r.direct(&fill).0, abi::CS_OK);
    assert_eq!(r.peek(B, 7), [0x11, 0x22, 0x33, 0x44, 0x11, 0x22, 0x33]);
    // CHECKSUM: the CRC32C comes back in DMA_RESULT
    r.poke(A, b"123456789");
    let (st, crc, _) = r.direct(&desc(abi::OP_CHECKSUM, 0, 9, A, 0));
    assert_eq!((st, crc), (abi::CS_OK, 0xe306_9283));
    // the operands read back as written
    assert_eq!(r.read32(abi::REG_DMA_SRC_LO), A as u32);
    assert_eq!(r.read32(abi::REG_DMA_SRC_HI), (A >> 32) as u32);
    assert_eq!(r.read32(abi::REG_DMA_LEN), 9);
}

#[test]
fn refusals_come_back_in_the_status_and_write_nothing() {
    let r = rig("");
    let unmapped = 0x10_0000_0000;
    for (d, cmd, want) in [
        (desc(9, 0, 64, A, B), 9, abi::CS_BAD_OPCODE),
        (
            desc(abi::OP_COPY, 0, 0, A, B),
            u32::from(abi::OP_COPY),
            abi::CS_BAD_LENGTH,
        ),
        (
            desc(abi::OP_COPY, 0, 64, A, unmapped),
            u32::from(abi::OP_COPY),
            abi::CS_DMA_FAULT,
        ),
        (
            desc(abi::OP_COPY, 0, 64, A, A + 32),
            u32::from(abi::OP_COPY),
            abi::CS_OVERLAP,
        ),
        (
            desc(abi::OP_READ, 0, 64, 16 << 20, B),
            u32::from(abi::OP_READ),
            abi::CS_INTERNAL_RANGE,
        ),
        // reserved command bits
        (
            desc(abi::OP_COPY, 0, 64, A, B),
            u32::from(abi::OP_COPY) | 0x100,
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            desc(abi::OP_COPY, 0, 64, u64::MAX - 8, B),
            u32::from(abi::OP_COPY),
            abi::CS_ADDR_OVERFLOW,
        ),
    ] {
        r.direct_start(&d, cmd);
        let (status, _, bytes) = r.direct_wait(Duration::from_secs(30)).expect("done");
        assert_eq!((status, bytes), (want, 0), "{d:?} cmd {cmd:#x}");
        assert_eq!(r.peek(B, 128), [0xee; 128], "{d:?}: nothing written");
    }
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_DMA_VIOLATION, 0);
    // still works
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0, abi::CS_OK);
}

#[test]
fn the_device_owns_the_registers_while_busy() {
    let r = rig("[[rule]]\nkind = \"delay_completion\"\nms = 300\nqueue = 8\ntimes = 1");
    r.direct_start(&desc(abi::OP_COPY, 0, 64, A, B), u32::from(abi::OP_COPY));
    assert_eq!(r.read32(abi::REG_DMA_STATUS), abi::DMA_STATUS_BUSY);
    r.write32(abi::REG_DMA_LEN, 9999);
    r.write32(abi::REG_DMA_CMD, u32::from(abi::OP_FILL));
    assert_eq!(
        r.read32(abi::REG_DMA_LEN),
        64,
        "operand write while busy refused"
    );
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    assert_eq!(
        r.direct_wait(Duration::from_secs(30)),
        Some((abi::CS_OK, 0, 64)),
        "the running transfer is not disturbed"
    );
    assert_eq!(r.peek(B, 64), r.peek(A, 64));
    assert_eq!(
        r.log.counters.snapshot().completions,
        1,
        "the refused command never ran"
    );
}

#[test]
fn fault_rules_reach_the_direct_block_as_queue_8() {
    let r = rig("[[rule]]\nkind = \"error_status\"\nqueue = 8\ntimes = 1");
    assert_eq!(
        r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0,
        abi::CS_DEVICE_ERROR
    );
    assert_eq!(r.peek(B, 64), [0xee; 64]);
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0, abi::CS_OK);
    // a rule for queue 0 leaves the block alone
    let r = rig("[[rule]]\nkind = \"error_status\"\nqueue = 0");
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0, abi::CS_OK);
    // queue 9 is nothing
    let e = dmalab_device::faults::RuleSet::from_toml("[[rule]]\nkind = \"stall\"\nqueue = 9")
        .unwrap_err()
        .to_string();
    assert!(e.contains("direct block (8)"), "{e}");
}

#[test]
fn stalled_and_dropped_transfers_stay_busy_until_a_device_reset() {
    for kind in ["stall", "drop_completion"] {
        let r = rig(&format!("[[rule]]\nkind = \"{kind}\"\ntimes = 1"));
        r.direct_start(&desc(abi::OP_COPY, 0, 64, A, B), u32::from(abi::OP_COPY));
        assert_eq!(r.direct_wait(Duration::from_millis(300)), None, "{kind}");
        r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
        assert_eq!(
            r.read32(abi::REG_DMA_STATUS),
            0,
            "{kind}: reset clears the block"
        );
        assert_eq!(r.read32(abi::REG_DMA_LEN), 0);
        assert_eq!(
            r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0,
            abi::CS_OK,
            "{kind}"
        );
    }
}

#[test]
fn a_device_reset_cuts_a_delayed_transfer_short() {
    let r = rig("[[rule]]\nkind = \"delay_completion\"\nms = 60000\ntimes = 1");
    r.direct_start(&desc(abi::OP_COPY, 0, 64, A, B), u32::from(abi::OP_COPY));
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::Instant::now();
    r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "reset waited out the delay"
    );
    assert_eq!(r.read32(abi::REG_DMA_STATUS), 0);
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0, abi::CS_OK);
}

#[test]
fn a_fatal_fault_halts_the_block_too() {
    let r = rig("[[rule]]\nkind = \"fatal\"\nqueue = 8\ntimes = 1");
    r.direct_start(&desc(abi::OP_COPY, 0, 64, A, B), u32::from(abi::OP_COPY));
    assert_eq!(r.direct_wait(Duration::from_millis(300)), None);
    assert_ne!(r.read32(abi::REG_DEV_STATUS) & abi::STATUS_FATAL, 0);
    assert_eq!(r.peek(B, 64), [0xee; 64]);
    r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 64, A, B)).0, abi::CS_OK);
}

#[test]
fn the_event_log_names_the_block_as_queue_8() {
    let r = Rig::with_log(1, 4 << 20, EventLog::to_writer(Box::new(std::io::sink())));
    r.poke(A, &pattern(256, 3));
    assert_eq!(r.direct(&desc(abi::OP_COPY, 0, 256, A, B)).0, abi::CS_OK);
    assert_eq!(
        r.direct(&desc(abi::OP_COPY, 0, 0, A, B)).0,
        abi::CS_BAD_LENGTH
    );
    let log: String = r.log.since(0).into_iter().map(|(_, l)| l + "\n").collect();
    let has = |needle: &str| {
        log.lines()
            .any(|l| l.contains(needle) && l.contains("\"queue\":8"))
    };
    assert!(has("\"event\":\"fetch\""), "{log}");
    assert!(has("\"event\":\"dma\""), "{log}");
    assert!(has("\"event\":\"complete\""), "{log}");
    assert!(has("direct transfer 1 refused"), "{log}");
}

#[test]
fn every_bar_read_is_counted_and_logged() {
    // (here because this file already builds a rig with a log; the count is what the e2e
    // data-path test relies on to say "zero")
    let r = Rig::with_log(1, 1 << 20, EventLog::to_writer(Box::new(std::io::sink())));
    let before = r.log.counters.snapshot().bar_reads;
    r.read32(abi::REG_ID);
    r.read32(abi::REG_DMA_STATUS);
    r.write32(abi::REG_DMA_LEN, 5);
    assert_eq!(r.log.counters.snapshot().bar_reads - before, 2);
    let reads: Vec<String> = r
        .log
        .since(0)
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains("\"event\":\"bar_read\""))
        .collect();
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(
        reads[1].contains(&format!("\"offset\":{}", abi::REG_DMA_STATUS)),
        "{reads:?}"
    );
}

/// PCI: without Bus Master Enable a direct transfer moves nothing and completes with
/// DMA_FAULT (its status register needs no DMA to say so); with it, the same transfer runs.
#[test]
fn without_bus_mastering_a_transfer_fails_and_moves_nothing() {
    let r = rig("");
    r.dev.set_bus_master(false);
    assert_eq!(
        r.direct(&desc(abi::OP_COPY, 0, 4096, A, B)),
        (abi::CS_DMA_FAULT, 0, 0)
    );
    assert_eq!(
        r.peek(B, 4096),
        vec![0xee; 4096],
        "the device wrote guest memory"
    );
    r.dev.set_bus_master(true);
    assert_eq!(
        r.direct(&desc(abi::OP_COPY, 0, 4096, A, B)),
        (abi::CS_OK, 0, 4096)
    );
    assert_eq!(r.peek(B, 4096), r.peek(A, 4096));
}
