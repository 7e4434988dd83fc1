//! The device model driven through its registers and rings, as a driver would, without QEMU.

use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Descriptor, SgEntry};
use dmalab_device::testing::{desc, Rig, DATA_BASE, RAM_BASE};
use dmalab_device::wire;

const A: u64 = DATA_BASE;
const B: u64 = DATA_BASE + 0x40_0000;
const C: u64 = DATA_BASE + 0x80_0000;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn rig() -> Rig {
    Rig::new(2, 16 << 20)
}

#[test]
fn identification_and_capabilities() {
    let r = rig();
    assert_eq!(r.read32(abi::REG_ID), abi::DEVICE_MAGIC);
    assert_eq!(r.read32(abi::REG_VERSION), abi::VERSION);
    assert_eq!(r.read32(abi::REG_CAP_QUEUES), 2);
    assert_eq!(r.read32(abi::REG_CAP_RING), abi::MAX_RING_ENTRIES);
    assert_eq!(r.read32(abi::REG_CAP_SG), abi::MAX_SG_SEGMENTS);
    assert_eq!(r.read32(abi::REG_CAP_OPCODES), abi::SUPPORTED_OPCODES);
    assert_eq!(r.read32(abi::REG_MEM_SIZE_LO), 16 << 20);
    assert_eq!(r.read32(abi::REG_DEV_STATUS), abi::STATUS_READY);
    assert_eq!(r.read32(abi::REG_CAP_MAX_XFER), abi::MAX_TRANSFER);
}

#[test]
fn copy_moves_every_byte_and_nothing_else() {
    let r = rig();
    let mut q = r.setup_queue(0, 16);
    for len in [1usize, 7, 4096, 65536, 1 << 20, 12345] {
        let src = pattern(len, len as u8);
        r.poke(A, &src);
        r.poke(B, &vec![0xee; len + 2]);
        let c = r.run_one(&mut q, desc(abi::OP_COPY, 7, len as u32, A, B + 1));
        assert_eq!((c.status, c.bytes, c.tag), (abi::CS_OK, len as u32, 7));
        let out = r.peek(B, len + 2);
        assert_eq!(out[0], 0xee, "byte before the destination untouched");
        assert_eq!(&out[1..=len], &src[..]);
        assert_eq!(out[len + 1], 0xee, "byte after the destination untouched");
    }
}

#[test]
fn write_then_read_round_trips_through_internal_memory() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    let data = pattern(100_000, 3);
    r.poke(A, &data);
    assert_eq!(
        r.run_one(&mut q, desc(abi::OP_WRITE, 1, 100_000, A, 4096))
            .status,
        abi::CS_OK
    );
    let mut internal = vec![0; 100_000];
    r.dev.shared().internal.read(4096, &mut internal).unwrap();
    assert_eq!(internal, data);
    assert_eq!(
        r.run_one(&mut q, desc(abi::OP_READ, 2, 100_000, 4096, B))
            .status,
        abi::CS_OK
    );
    assert_eq!(r.peek(B, 100_000), data);
}

#[test]
fn fill_repeats_the_pattern_from_the_first_byte() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    let mut d = desc(abi::OP_FILL, 9, 70_001, 0, B + 3);
    d.pattern = 0x4433_2211;
    assert_eq!(r.run_one(&mut q, d).status, abi::CS_OK);
    let out = r.peek(B + 3, 70_001);
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, &b)| b == [0x11, 0x22, 0x33, 0x44][i % 4]));
}

#[test]
fn checksum_is_crc32c() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    r.poke(A, b"123456789");
    let c = r.run_one(&mut q, desc(abi::OP_CHECKSUM, 5, 9, A, 0));
    assert_eq!(
        (c.status, c.result),
        (abi::CS_OK, 0xe306_9283),
        "CRC32C check value"
    );
    let big = pattern(300_000, 9);
    r.poke(A, &big);
    let c = r.run_one(&mut q, desc(abi::OP_CHECKSUM, 6, big.len() as u32, A, 0));
    assert_eq!(c.result, crc32c::crc32c(&big));
}

fn write_sg(r: &Rig, at: u64, segs: &[(u64, u32)]) {
    let mut table = Vec::new();
    for &(addr, len) in segs {
        table.extend_from_slice(&wire::encode_sg(&SgEntry { addr, len, rsvd: 0 }));
    }
    r.poke(at, &table);
}

#[test]
fn scatter_gather_on_both_sides() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    // 256 source segments of varying size, gathered into 3 destination segments
    let segs: Vec<(u64, u32)> = (0..256u64)
        .map(|i| (A + i * 1024, 1 + (i as u32 * 7) % 1000))
        .collect();
    let total: u32 = segs.iter().map(|s| s.1).sum();
    let mut expect = Vec::new();
    for (i, &(a, l)) in segs.iter().enumerate() {
        let p = pattern(l as usize, i as u8);
        r.poke(a, &p);
        expect.extend_from_slice(&p);
    }
    let d1 = total / 3;
    let dsegs = [(B, d1), (B + 0x10000, d1), (B + 0x20000, total - 2 * d1)];
    write_sg(&r, C, &segs);
    write_sg(&r, C + 0x10000, &dsegs);
    let mut d = desc(abi::OP_COPY, 1, total, C, C + 0x10000);
    d.flags = abi::DESC_SRC_SG | abi::DESC_DST_SG;
    d.src_nseg = 256;
    d.dst_nseg = 3;
    assert_eq!(r.run_one(&mut q, d).status, abi::CS_OK);
    let mut got = Vec::new();
    for (a, l) in dsegs {
        got.extend(r.peek(a, l as usize));
    }
    assert_eq!(got, expect);

    // checksum over the same SG list
    let mut d = desc(abi::OP_CHECKSUM, 2, total, C, 0);
    d.flags = abi::DESC_SRC_SG;
    d.src_nseg = 256;
    assert_eq!(r.run_one(&mut q, d).result, crc32c::crc32c(&expect));
}

#[test]
fn ring_wraps_and_phase_flips() {
    let r = rig();
    let mut q = r.setup_queue(1, 4);
    let mut tag = 0;
    for round in 0..10 {
        let n = 1 + round % 3; // at most size-1 outstanding
        let descs: Vec<Descriptor> = (0..n)
            .map(|_| {
                tag += 1;
                let mut d = desc(abi::OP_FILL, tag, 64, 0, B + 64 * u64::from(tag));
                d.pattern = tag;
                d
            })
            .collect();
        r.submit(&mut q, &descs);
        let cs = r.wait(&mut q, n as usize);
        let tags: Vec<u32> = cs.iter().map(|c| c.tag).collect();
        assert_eq!(
            tags,
            descs.iter().map(|d| d.tag).collect::<Vec<_>>(),
            "completions in order"
        );
    }
    assert_eq!(r.read32(abi::queue_reg(1, abi::Q_DONE)), tag);
    assert_eq!(r.read32(abi::queue_reg(1, abi::Q_SQ_HEAD)), q.tail);
}

#[test]
fn full_completion_ring_stalls_until_the_driver_frees_a_slot() {
    let r = rig();
    let mut q = r.setup_queue(0, 4);
    let fill = |tag| {
        let mut d = desc(abi::OP_FILL, tag, 16, 0, B + 16 * u64::from(tag));
        d.pattern = 1;
        d
    };
    r.submit(&mut q, &[fill(1), fill(2), fill(3)]);
    let done = abi::queue_reg(0, abi::Q_DONE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.read32(done) < 3 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    // The completion ring holds 3 unread entries: it is full. One more descriptor must wait.
    r.submit(&mut q, &[fill(4)]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        r.read32(done),
        3,
        "no completion may overwrite an unread one"
    );
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_SQ_HEAD)), 3);
    let cs = r.wait(&mut q, 4); // reading frees slots (CQ_HEAD doorbell) and the 4th runs
    assert_eq!(cs.iter().map(|c| c.tag).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

#[test]
fn empty_doorbell_does_nothing() {
    let r = rig();
    let q = r.setup_queue(0, 8);
    r.write32(abi::queue_reg(0, abi::Q_SQ_TAIL), q.tail);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.irq.total(), 0);
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_DONE)), 0);
}

#[test]
fn one_interrupt_per_completion_on_the_queue_vector() {
    let r = rig();
    let mut q = r.setup_queue(1, 16);
    for i in 0..5 {
        r.run_one(&mut q, desc(abi::OP_CHECKSUM, i, 8, A, 0));
    }
    wait_for(|| r.irq.count(1) == 5);
    assert_eq!(r.irq.count(0), 0);
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "condition not reached in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn coalescing_by_count_then_on_drain() {
    let r = rig();
    r.write32(abi::REG_IRQ_COALESCE, 3); // 3 completions, time 0 = when the ring drains
    let mut q = r.setup_queue(0, 16);
    let descs: Vec<_> = (0..8).map(|i| desc(abi::OP_CHECKSUM, i, 8, A, 0)).collect();
    r.submit(&mut q, &descs);
    r.wait(&mut q, 8);
    wait_for(|| r.irq.count(0) == 3); // after 3, after 6, and the last 2 at drain
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.irq.count(0), 3);
}

#[test]
fn coalescing_by_time() {
    let r = rig();
    r.write32(abi::REG_IRQ_COALESCE, 1000 | (200 << 16)); // count 1000, 200 us
    let mut q = r.setup_queue(0, 16);
    r.submit(
        &mut q,
        &[
            desc(abi::OP_CHECKSUM, 1, 8, A, 0),
            desc(abi::OP_CHECKSUM, 2, 8, A, 0),
        ],
    );
    r.wait(&mut q, 2);
    wait_for(|| r.irq.count(0) >= 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.irq.count(0), 1, "one timer-driven interrupt for both");
}

#[test]
fn no_irq_flag_suppresses_the_interrupt() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    let mut d = desc(abi::OP_CHECKSUM, 1, 8, A, 0);
    d.flags = abi::DESC_NO_IRQ;
    r.run_one(&mut q, d);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(r.irq.total(), 0);
}

#[test]
fn queue_reset_with_work_in_flight_stops_all_dma() {
    let r = rig();
    let mut q = r.setup_queue(0, 64);
    let descs: Vec<_> = (0..40)
        .map(|i| desc(abi::OP_COPY, i, 1 << 20, A, B + (i as u64 % 8) * (1 << 20)))
        .collect();
    r.submit(&mut q, &descs);
    r.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    // Reset is done when the write returns: registers at reset values, no DMA any more.
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_STATUS)), 0);
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_SQ_HEAD)), 0);
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_SIZE)), 0);
    r.poke(B, &vec![0x5a; 8 << 20]);
    let cq = r.peek(q.cq_base, 64 * 16);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        r.peek(B, 8 << 20).iter().all(|&b| b == 0x5a),
        "DMA after reset"
    );
    assert_eq!(
        r.peek(q.cq_base, 64 * 16),
        cq,
        "completion written after reset"
    );
    // The queue works again once reprogrammed.
    let mut q = r.setup_queue(0, 8);
    r.poke(A, b"abc");
    assert_eq!(
        r.run_one(&mut q, desc(abi::OP_COPY, 99, 3, A, C)).status,
        abi::CS_OK
    );
    assert_eq!(r.peek(C, 3), b"abc");
}

#[test]
fn device_reset_clears_everything() {
    let r = rig();
    let mut q = r.setup_queue(0, 8);
    r.poke(A, b"xyz");
    r.run_one(&mut q, desc(abi::OP_WRITE, 1, 3, A, 0));
    r.write32(abi::queue_reg(0, abi::Q_SQ_TAIL), 99); // bad doorbell: sets an error bit
    assert_ne!(r.read32(abi::REG_ERROR), 0);
    r.write32(abi::REG_IRQ_COALESCE, 5);
    r.write32(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    assert_eq!(r.read32(abi::REG_ERROR), 0);
    assert_eq!(r.read32(abi::REG_IRQ_COALESCE), 0);
    assert_eq!(r.read32(abi::REG_DEV_STATUS), abi::STATUS_READY);
    assert_eq!(r.read32(abi::queue_reg(0, abi::Q_STATUS)), 0);
    let mut b = [1u8; 3];
    r.dev.shared().internal.read(0, &mut b).unwrap();
    assert_eq!(b, [0, 0, 0], "internal memory cleared");
}

/// Each malformed descriptor completes with its status, writes nothing, and the queue goes on.
#[test]
fn malformed_descriptors_are_refused_without_side_effects() {
    let r = rig();
    let mut q = r.setup_queue(0, 64);
    let ram_end = RAM_BASE + r.ram_size;
    let with = |f: &dyn Fn(&mut Descriptor), mut d: Descriptor| {
        f(&mut d);
        d
    };
    write_sg(&r, C, &[(A, 100), (A + 200, 100)]);
    write_sg(&r, C + 0x100, &[(A, 100), (ram_end - 50, 100)]);
    write_sg(&r, C + 0x200, &[(A, 0)]);
    let copy = desc(abi::OP_COPY, 0, 200, A, B);
    let cases: Vec<(&str, Descriptor, u16)> = vec![
        ("opcode 0", desc(0, 0, 16, A, B), abi::CS_BAD_OPCODE),
        ("opcode 99", desc(99, 0, 16, A, B), abi::CS_BAD_OPCODE),
        (
            "zero length",
            desc(abi::OP_COPY, 0, 0, A, B),
            abi::CS_BAD_LENGTH,
        ),
        (
            "huge length",
            desc(abi::OP_COPY, 0, abi::MAX_TRANSFER + 1, A, B),
            abi::CS_BAD_LENGTH,
        ),
        (
            "unknown flag",
            with(&|d| d.flags = 0x80, copy),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "reserved field",
            with(&|d| d.rsvd2[1] = 1, copy),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "pattern on COPY",
            with(&|d| d.pattern = 1, copy),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "nseg without SG",
            with(&|d| d.src_nseg = 2, copy),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "SG flag on FILL source",
            with(
                &|d| d.flags = abi::DESC_SRC_SG,
                desc(abi::OP_FILL, 0, 16, 0, B),
            ),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "source on FILL",
            desc(abi::OP_FILL, 0, 16, A, B),
            abi::CS_BAD_DESCRIPTOR,
        ),
        (
            "SG with 0 segments",
            with(&|d| d.flags = abi::DESC_SRC_SG, copy),
            abi::CS_TOO_MANY_SEGMENTS,
        ),
        (
            "SG with 257 segments",
            with(
                &|d| {
                    d.flags = abi::DESC_SRC_SG;
                    d.src_nseg = 257
                },
                copy,
            ),
            abi::CS_TOO_MANY_SEGMENTS,
        ),
        (
            "unmapped source",
            desc(abi::OP_COPY, 0, 16, 0x1000, B),
            abi::CS_DMA_FAULT,
        ),
        (
            "partially mapped destination",
            desc(abi::OP_COPY, 0, 100, A, ram_end - 50),
            abi::CS_DMA_FAULT,
        ),
        (
            "address overflow",
            desc(abi::OP_COPY, 0, 100, A, u64::MAX - 10),
            abi::CS_ADDR_OVERFLOW,
        ),
        (
            "overlapping copy",
            desc(abi::OP_COPY, 0, 100, B, B + 50),
            abi::CS_OVERLAP,
        ),
        (
            "internal range",
            desc(abi::OP_WRITE, 0, 100, A, (16 << 20) - 50),
            abi::CS_INTERNAL_RANGE,
        ),
        (
            "internal overflow",
            desc(abi::OP_READ, 0, 100, u64::MAX - 10, B),
            abi::CS_ADDR_OVERFLOW,
        ),
        (
            "SG lengths do not sum",
            with(
                &|d| {
                    d.flags = abi::DESC_SRC_SG;
                    d.src = C;
                    d.src_nseg = 2;
                    d.len = 300
                },
                copy,
            ),
            abi::CS_BAD_LENGTH,
        ),
        (
            "SG segment partially mapped",
            with(
                &|d| {
                    d.flags = abi::DESC_SRC_SG;
                    d.src = C + 0x100;
                    d.src_nseg = 2
                },
                copy,
            ),
            abi::CS_DMA_FAULT,
        ),
        (
            "SG zero-length segment",
            with(
                &|d| {
                    d.flags = abi::DESC_SRC_SG;
                    d.src = C + 0x200;
                    d.src_nseg = 1
                },
                copy,
            ),
            abi::CS_BAD_LENGTH,
        ),
        (
            "SG table unmapped",
            with(
                &|d| {
                    d.flags = abi::DESC_DST_SG;
                    d.dst = 0x2000;
                    d.dst_nseg = 4
                },
                copy,
            ),
            abi::CS_DMA_FAULT,
        ),
        (
            "SG destination overlaps source",
            with(
                &|d| {
                    d.flags = abi::DESC_DST_SG;
                    d.dst = C;
                    d.dst_nseg = 2
                },
                desc(abi::OP_COPY, 0, 200, A + 150, 0),
            ),
            abi::CS_OVERLAP,
        ),
    ];
    let sentinel = vec![0xc3; 4096];
    for (i, (name, mut d, status)) in cases.into_iter().enumerate() {
        r.poke(B, &sentinel);
        r.poke(ram_end - 4096, &sentinel);
        d.tag = 1000 + i as u32;
        let c = r.run_one(&mut q, d);
        assert_eq!((c.status, c.tag, c.bytes), (status, d.tag, 0), "{name}");
        assert_eq!(r.peek(B, 4096), sentinel, "{name}: wrote memory");
        assert_eq!(
            r.peek(ram_end - 4096, 4096),
            sentinel,
            "{name}: wrote memory"
        );
    }
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_DMA_VIOLATION, 0);
    assert_eq!(
        r.read32(abi::REG_DEV_STATUS),
        abi::STATUS_READY,
        "malformed descriptors are not fatal"
    );
    // and the queue still works
    r.poke(A, b"ok");
    assert_eq!(
        r.run_one(&mut q, desc(abi::OP_COPY, 1, 2, A, B)).status,
        abi::CS_OK
    );
    assert_eq!(r.peek(B, 2), b"ok");
}

#[test]
fn unmapped_rings_are_refused_at_enable() {
    let r = rig();
    let sq = |reg| abi::queue_reg(0, reg);
    r.write32(sq(abi::Q_SQ_BASE_LO), 0x10_0000); // below RAM: unmapped
    r.write32(sq(abi::Q_CQ_BASE_LO), 0x20_0000);
    r.write32(sq(abi::Q_SIZE), 8);
    r.write32(sq(abi::Q_CTRL), abi::QCTRL_ENABLE);
    assert_eq!(r.read32(sq(abi::Q_STATUS)) & abi::QSTATUS_ENABLED, 0);
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    wait_for(|| r.irq.count(2) == 1); // 2 queues: the error vector is 2
}

#[test]
fn ring_unmapped_under_a_running_queue_halts_it_and_raises_the_error_vector() {
    let r = rig();
    let sq = |reg| abi::queue_reg(0, reg);
    let q = r.setup_queue(0, 8);
    r.maps.unmap(RAM_BASE, r.ram_size).unwrap();
    r.write32(sq(abi::Q_SQ_TAIL), q.tail + 1);
    wait_for(|| r.read32(sq(abi::Q_STATUS)) & abi::QSTATUS_ERROR != 0);
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_RING_FETCH, 0);
    wait_for(|| r.irq.count(2) == 1); // 2 queues: the error vector is 2
    assert_ne!(r.read32(abi::REG_IRQ_CAUSE) & (1 << 31), 0);
    r.write32(abi::REG_ERROR, abi::ERR_RING_FETCH);
    assert_eq!(r.read32(abi::REG_ERROR) & abi::ERR_RING_FETCH, 0, "RW1C");
}

#[test]
fn invalid_ring_programming_is_refused() {
    let r = rig();
    let sq = |reg| abi::queue_reg(0, reg);
    r.write32(sq(abi::Q_SIZE), 6); // not a power of two
    r.write32(sq(abi::Q_CTRL), abi::QCTRL_ENABLE);
    assert_eq!(r.read32(sq(abi::Q_STATUS)) & abi::QSTATUS_ENABLED, 0);
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    let q = r.setup_queue(0, 8);
    r.write32(sq(abi::Q_SIZE), 16); // while enabled
    assert_eq!(r.read32(sq(abi::Q_SIZE)), 8);
    r.write32(sq(abi::Q_SQ_TAIL), 8); // out of range
    assert_eq!(r.read32(sq(abi::Q_SQ_HEAD)), q.tail);
    // unaligned and odd-sized accesses are ignored, not fatal
    r.dev.mmio_write(abi::REG_IRQ_COALESCE as u64 + 1, &[1]);
    let mut b = [0u8; 2];
    r.dev.mmio_read(abi::REG_ID as u64, &mut b);
    assert_eq!(b, [0xff, 0xff]);
    // unassigned offsets read as 0
    assert_eq!(r.read32(0xffc), 0);
}

#[test]
fn several_queues_run_at_once() {
    let r = Rig::new(4, 16 << 20);
    let mut rings: Vec<_> = (0..4).map(|q| r.setup_queue(q, 32)).collect();
    for (q, ring) in rings.iter_mut().enumerate() {
        let src = A + q as u64 * 0x10_0000;
        r.poke(src, &pattern(0x8000, q as u8));
        let descs: Vec<_> = (0..16u64)
            .map(|i| {
                desc(
                    abi::OP_COPY,
                    i as u32,
                    0x800,
                    src + i * 0x800,
                    B + q as u64 * 0x10_0000 + i * 0x800,
                )
            })
            .collect();
        r.submit(ring, &descs);
    }
    for (q, ring) in rings.iter_mut().enumerate() {
        assert!(r.wait(ring, 16).iter().all(|c| c.status == abi::CS_OK));
        assert_eq!(
            r.peek(B + q as u64 * 0x10_0000, 0x8000),
            pattern(0x8000, q as u8)
        );
    }
    let c = r.log.counters.snapshot();
    assert_eq!((c.descriptors, c.completions_ok), (64, 64));
    assert_eq!(c.bytes_to_guest, 64 * 0x800);
}

mod reference_model {
    //! Random valid descriptor streams against a reference model of guest and internal memory.
    use super::*;
    use proptest::prelude::*;

    const WIN: u64 = 1 << 16; // the window of guest RAM the stream works in
    const IMEM: u64 = 1 << 16; // the part of internal memory it uses

    #[derive(Debug, Clone)]
    enum Op {
        Copy { src: u64, dst: u64, len: u32 },
        Write { src: u64, off: u64, len: u32 },
        Read { off: u64, dst: u64, len: u32 },
        Fill { dst: u64, len: u32, pattern: u32 },
        Checksum { src: u64, len: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        let len = 1u32..4096;
        prop_oneof![
            (0..WIN, 0..WIN, len.clone()).prop_map(|(s, d, l)| Op::Copy {
                src: s,
                dst: d,
                len: l
            }),
            (0..WIN, 0..IMEM, len.clone()).prop_map(|(s, o, l)| Op::Write {
                src: s,
                off: o,
                len: l
            }),
            (0..IMEM, 0..WIN, len.clone()).prop_map(|(o, d, l)| Op::Read {
                off: o,
                dst: d,
                len: l
            }),
            (0..WIN, len.clone(), any::<u32>()).prop_map(|(d, l, p)| Op::Fill {
                dst: d,
                len: l,
                pattern: p
            }),
            (0..WIN, len).prop_map(|(s, l)| Op::Checksum { src: s, len: l }),
        ]
    }

    fn clamp(a: u64, len: u32, limit: u64) -> (u64, usize) {
        let len = u64::from(len).min(limit);
        (a.min(limit - len), len as usize)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn memory_matches_the_model(ops in proptest::collection::vec(op(), 1..40), seed in any::<u8>()) {
            let r = Rig::new(1, 1 << 20);
            let mut q = r.setup_queue(0, 64);
            let mut guest = pattern(WIN as usize, seed);
            let mut internal = vec![0u8; IMEM as usize];
            r.poke(A, &guest);
            for (i, o) in ops.iter().enumerate() {
                let tag = i as u32;
                let (d, expect_status, expect_result) = match *o {
                    Op::Copy { src, dst, len } => {
                        let (s, n) = clamp(src, len, WIN);
                        let (t, _) = clamp(dst, n as u32, WIN);
                        let overlap = s < t + n as u64 && t < s + n as u64;
                        if !overlap {
                            let tmp = guest[s as usize..s as usize + n].to_vec();
                            guest[t as usize..t as usize + n].copy_from_slice(&tmp);
                        }
                        (desc(abi::OP_COPY, tag, n as u32, A + s, A + t), if overlap { abi::CS_OVERLAP } else { abi::CS_OK }, 0)
                    }
                    Op::Write { src, off, len } => {
                        let (s, n) = clamp(src, len, WIN);
                        let (o, _) = clamp(off, n as u32, IMEM);
                        internal[o as usize..o as usize + n].copy_from_slice(&guest[s as usize..s as usize + n]);
                        (desc(abi::OP_WRITE, tag, n as u32, A + s, o), abi::CS_OK, 0)
                    }
                    Op::Read { off, dst, len } => {
                        let (o, n) = clamp(off, len, IMEM);
                        let (t, _) = clamp(dst, n as u32, WIN);
                        guest[t as usize..t as usize + n].copy_from_slice(&internal[o as usize..o as usize + n]);
                        (desc(abi::OP_READ, tag, n as u32, o, A + t), abi::CS_OK, 0)
                    }
                    Op::Fill { dst, len, pattern: p } => {
                        let (t, n) = clamp(dst, len, WIN);
                        for k in 0..n {
                            guest[t as usize + k] = p.to_le_bytes()[k % 4];
                        }
                        let mut d = desc(abi::OP_FILL, tag, n as u32, 0, A + t);
                        d.pattern = p;
                        (d, abi::CS_OK, 0)
                    }
                    Op::Checksum { src, len } => {
                        let (s, n) = clamp(src, len, WIN);
                        let crc = crc32c::crc32c(&guest[s as usize..s as usize + n]);
                        (desc(abi::OP_CHECKSUM, tag, n as u32, A + s, 0), abi::CS_OK, crc)
                    }
                };
                let c = r.run_one(&mut q, d);
                prop_assert_eq!((c.status, c.tag), (expect_status, tag), "{:?}", o);
                prop_assert_eq!(c.result, expect_result, "{:?}", o);
            }
            prop_assert!(r.peek(A, WIN as usize) == guest, "guest memory differs from the model");
            let mut got = vec![0u8; IMEM as usize];
            r.dev.shared().internal.read(0, &mut got).unwrap();
            prop_assert!(got == internal, "internal memory differs from the model");
        }
    }
}

/// The driver disables the queue and zeroes SIZE while a descriptor is in the device: the
/// device must not divide by it (a guest-triggered panic would take the whole device down).
#[test]
fn ring_size_rewritten_under_running_work_is_survived() {
    // the delay holds the first descriptor inside the device while the registers change
    let r = Rig::with_faults(
        2,
        16 << 20,
        "[[rule]]\nkind = \"delay_completion\"\nms = 300\nnth = 1",
    );
    let mut q = r.setup_queue(0, 64);
    r.submit(&mut q, &[desc(abi::OP_COPY, 1, 4096, A, B)]);
    std::thread::sleep(Duration::from_millis(50));
    r.write32(abi::queue_reg(0, abi::Q_CTRL), 0);
    r.write32(abi::queue_reg(0, abi::Q_SIZE), 0);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        r.peek(q.cq_base, 16),
        [0; 16],
        "no completion into a ring that was reprogrammed"
    );
    r.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    let mut q = r.setup_queue(0, 8);
    r.poke(A, b"alive");
    assert_eq!(
        r.run_one(&mut q, desc(abi::OP_COPY, 2, 5, A, C)).status,
        abi::CS_OK
    );
}

#[test]
fn a_smaller_ring_after_reenable_keeps_every_write_inside_it() {
    // Indices from the old geometry must not survive into the new one: a completion at the
    // old CQ tail would land past the end of the smaller ring.
    let r = rig();
    let mut q = r.setup_queue(0, 64);
    for i in 0..40 {
        r.run_one(&mut q, desc(abi::OP_CHECKSUM, i, 8, A, 0));
    }
    let reg = |x| abi::queue_reg(0, x);
    r.write32(reg(abi::Q_CTRL), 0);
    r.write32(reg(abi::Q_SIZE), 4);
    // Canaries everywhere the new rings do not name.
    let canary = vec![0xa5u8; 60 * 64];
    r.poke(q.sq_base + 4 * 64, &canary);
    r.poke(q.cq_base + 4 * 16, &canary[..60 * 16]);
    r.poke(q.cq_base, &[0; 64]);
    r.write32(reg(abi::Q_CTRL), abi::QCTRL_ENABLE);
    assert_eq!(r.read32(reg(abi::Q_SQ_HEAD)), 0, "indices start over");
    q.size = 4;
    q.tail = 0;
    q.cq_head = 0;
    q.phase = true;
    let c = r.run_one(&mut q, desc(abi::OP_CHECKSUM, 99, 8, A, 0));
    assert_eq!((c.tag, c.status), (99, abi::CS_OK));
    assert_eq!(r.peek(q.sq_base + 4 * 64, canary.len()), canary);
    assert_eq!(r.peek(q.cq_base + 4 * 16, 60 * 16), canary[..60 * 16]);
}

#[test]
fn rings_that_wrap_or_lie_outside_memory_are_refused() {
    let r = rig();
    let reg = |x| abi::queue_reg(0, x);
    for (sq, cq) in [
        (u64::MAX - 0x3f, RAM_BASE),
        (RAM_BASE, u64::MAX - 0xf),
        (RAM_BASE, 0x1000),
    ] {
        r.write32(abi::REG_ERROR, u32::MAX);
        r.write32(reg(abi::Q_SQ_BASE_LO), sq as u32);
        r.write32(reg(abi::Q_SQ_BASE_HI), (sq >> 32) as u32);
        r.write32(reg(abi::Q_CQ_BASE_LO), cq as u32);
        r.write32(reg(abi::Q_CQ_BASE_HI), (cq >> 32) as u32);
        r.write32(reg(abi::Q_SIZE), 4);
        r.write32(reg(abi::Q_CTRL), abi::QCTRL_ENABLE);
        assert_eq!(
            r.read32(reg(abi::Q_STATUS)) & abi::QSTATUS_ENABLED,
            0,
            "{sq:#x} {cq:#x}"
        );
        assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    }
}

#[test]
fn register_and_config_accesses_at_any_offset_never_overflow() {
    // Debug builds check arithmetic: these offsets used to overflow `offset + i`.
    let r = rig();
    let mut b = [0u8; 8];
    for off in [
        u64::MAX - 3,
        u64::MAX - 7,
        u64::MAX,
        1 << 63,
        abi::BAR0_SIZE as u64,
    ] {
        r.dev.mmio_read(off, &mut b);
        r.dev.mmio_write(off, &b);
        r.dev.mmio_read(off, &mut b[..4]);
    }
    let mut cfg = dmalab_device::pci_config::ConfigSpace::new(3);
    for off in [u64::MAX - 3, u64::MAX, usize::MAX as u64 - 1] {
        cfg.read(off, &mut b);
        cfg.write(off, &b);
    }
    assert_eq!(r.read32(abi::REG_ID), abi::DEVICE_MAGIC);
}

#[test]
fn enabled_rings_are_found_by_the_ranges_that_cover_them() {
    let rig = Rig::new(2, 1 << 20);
    let r0 = rig.setup_queue(0, 8);
    let sq_len = 8 * abi::DESC_SIZE as u64;
    let cq_len = 8 * abi::COMPLETION_SIZE as u64;
    assert_eq!(rig.dev.enabled_rings_in(r0.sq_base, sq_len), vec![0]);
    assert_eq!(
        rig.dev.enabled_rings_in(r0.cq_base + cq_len - 1, 1),
        vec![0]
    );
    // just before and just after both rings, and an empty range: nothing
    assert!(rig.dev.enabled_rings_in(r0.sq_base - 4096, 4096).is_empty());
    assert!(rig
        .dev
        .enabled_rings_in(r0.cq_base + cq_len, 4096)
        .is_empty());
    assert!(rig.dev.enabled_rings_in(r0.sq_base, 0).is_empty());
    // a range running off the end of the address space is clipped, not wrapped
    assert_eq!(rig.dev.enabled_rings_in(r0.sq_base, u64::MAX), vec![0]);
    // a reset queue no longer counts
    rig.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    assert!(rig.dev.enabled_rings_in(r0.sq_base, sq_len).is_empty());
}

/// The oracle's table: a posted request owns its descriptor, its source (read) and its
/// destination (write) from the doorbell until its completion, and not a moment longer.
#[test]
fn a_posted_request_owns_its_memory_until_its_completion() {
    use dmalab_ownership::{Kind, Publisher, Reader};
    let dir = std::env::temp_dir().join(format!("dmalab-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("table");
    // the COPY's completion comes 300 ms late: long enough to look at the table meanwhile
    let rig = Rig::with_faults(
        1,
        16 << 20,
        "[[rule]]\nkind = \"delay_completion\"\nms = 300\nopcode = \"copy\"\n",
    );
    assert!(rig
        .dev
        .attach_oracle(std::sync::Arc::new(Publisher::create(&path).unwrap())));
    let table = Reader::open(&path).unwrap();
    let mut ring = rig.setup_queue(0, 8);
    let writes_before = table.mmio_writes();
    rig.submit(&mut ring, &[desc(abi::OP_COPY, 0x77, 8192, A, B)]);
    // the doorbell is counted only once its windows are in the table
    assert_eq!(table.mmio_writes(), writes_before + 1);
    let mut w = Vec::new();
    table.snapshot(&mut w);
    let find = |kind| w.iter().find(|x| x.kind == kind).copied();
    let d = find(Kind::Descriptor).expect("the descriptor's slot");
    assert_eq!((d.start, d.len, d.tag, d.slot), (ring.sq_base, 64, 0x77, 0));
    let src = find(Kind::ReadOwned).expect("the source");
    assert_eq!((src.start, src.len), (A, 8192));
    let dst = find(Kind::WriteOwned).expect("the destination");
    assert_eq!((dst.start, dst.len), (B, 8192));
    let c = rig.wait(&mut ring, 1);
    assert_eq!(c[0].status, abi::CS_OK);
    assert_eq!(table.count(), 0, "the completion closes every window");
    // a request the device never completes keeps its windows until a queue reset
    let rig2 = Rig::with_faults(1, 4 << 20, "[[rule]]\nkind = \"stall\"\n");
    let path2 = dir.join("table2");
    rig2.dev
        .attach_oracle(std::sync::Arc::new(Publisher::create(&path2).unwrap()));
    let table2 = Reader::open(&path2).unwrap();
    let mut ring2 = rig2.setup_queue(0, 8);
    rig2.submit(&mut ring2, &[desc(abi::OP_FILL, 5, 4096, 0, A)]);
    std::thread::sleep(Duration::from_millis(50));
    table2.snapshot(&mut w);
    assert_eq!(w.len(), 2, "FILL owns its slot and its destination: {w:?}");
    rig2.write32(abi::queue_reg(0, abi::Q_CTRL), abi::QCTRL_RESET);
    assert_eq!(table2.count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A driver that takes an old completion for a new one (its phase never flipped at the wrap)
/// returns a slot the device never wrote: the CQ_HEAD doorbell is refused, the device says so,
/// and the completions it did write stay where they are.
#[test]
fn a_cq_head_past_the_written_completions_is_refused() {
    let r = rig();
    let mut q = r.setup_queue(0, 4);
    let fill = |tag| {
        let mut d = desc(abi::OP_FILL, tag, 16, 0, B + 16 * u64::from(tag));
        d.pattern = 1;
        d
    };
    r.submit(&mut q, &[fill(1)]);
    assert_eq!(r.wait(&mut q, 1)[0].tag, 1);
    // one written, one returned: returning a second is taking a slot the device never wrote
    r.write32(abi::queue_reg(0, abi::Q_CQ_HEAD), 2);
    assert_ne!(
        r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL,
        0,
        "the device did not flag the doorbell"
    );
    // the device still counts from its own head: the next completion lands in slot 1
    r.submit(&mut q, &[fill(2)]);
    assert_eq!(r.wait(&mut q, 1)[0].tag, 2);
}
