//! A device that drives fewer than 64 address lines (`CAP_DMA_BITS`, `--dma-bits`): it never
//! touches memory at or beyond 2^bits, even where it is mapped, and says which field named it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use dmalab_abi::{self as abi, SgEntry};
use dmalab_device::testing::{desc, Rig, DATA_BASE, RAM_BASE};
use dmalab_device::wire;

/// 33 bits: the rig's RAM (at 4 GiB) is reachable, [`HIGH`] is not.
const BITS: u32 = 33;
/// Mapped memory just beyond the device's reach.
const HIGH: u64 = 1 << BITS;
const A: u64 = DATA_BASE;
const B: u64 = DATA_BASE + 0x1_0000;
const LIST: u64 = DATA_BASE + 0x2_0000;

/// The rig, and the sealed memfd behind [`HIGH`]: the test reads it directly, as the device
/// may not.
fn rig() -> (Rig, File) {
    let r = Rig::with_dma_bits(1, 1 << 20, BITS);
    // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned by the File.
    let high = unsafe {
        let fd = libc::memfd_create(c"high".as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0, "memfd_create");
        File::from_raw_fd(fd)
    };
    high.set_len(0x10_000).unwrap();
    high.write_all_at(&[0xee; 0x1000], 0).unwrap();
    // SAFETY: F_ADD_SEALS on our own descriptor.
    assert_eq!(
        unsafe { libc::fcntl(high.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) },
        0
    );
    let backing = high.try_clone().unwrap();
    r.maps
        .map_file(HIGH, 0x10_000, backing, 0, true)
        .expect("map high RAM");
    r.poke(A, &[0x5a; 0x1000]);
    (r, high)
}

fn log(r: &Rig) -> String {
    r.log.since(0).into_iter().map(|(_, l)| l + "\n").collect()
}

fn high_bytes(high: &File) -> Vec<u8> {
    let mut b = vec![0; 0x1000];
    high.read_exact_at(&mut b, 0).unwrap();
    b
}

#[test]
fn the_device_reports_its_width() {
    assert_eq!(rig().0.read32(abi::REG_CAP_DMA_BITS), BITS);
    assert_eq!(Rig::new(1, 4096).read32(abi::REG_CAP_DMA_BITS), 64);
}

#[test]
fn a_descriptor_beyond_the_reach_is_refused_by_field_and_address() {
    let (r, high) = rig();
    let mut q = r.setup_queue(0, 8);
    // below the limit: served
    let c = r.run_one(&mut q, desc(abi::OP_COPY, 1, 0x1000, A, B));
    assert_eq!(c.status, abi::CS_OK);
    // dst beyond it: refused, nothing written there
    let c = r.run_one(&mut q, desc(abi::OP_COPY, 2, 0x1000, A, HIGH));
    assert_eq!(
        abi::Status::from_raw(c.status),
        Some(abi::Status::AddrWidth)
    );
    assert_eq!(c.bytes, 0);
    assert_eq!(high_bytes(&high), vec![0xee; 0x1000], "nothing moved");
    // a range that straddles the limit is refused too
    let c = r.run_one(&mut q, desc(abi::OP_FILL, 3, 0x20, 0, HIGH - 0x10));
    assert_eq!(c.status, abi::CS_ADDR_WIDTH);
    // an SG list whose second entry is beyond it
    let mut table = Vec::new();
    for (addr, len) in [(B, 0x800u32), (HIGH + 0x800, 0x800)] {
        table.extend_from_slice(&wire::encode_sg(&SgEntry { addr, len, rsvd: 0 }));
    }
    r.poke(LIST, &table);
    let mut d = desc(abi::OP_COPY, 4, 0x1000, A, LIST);
    d.flags = abi::DESC_DST_SG;
    d.dst_nseg = 2;
    assert_eq!(r.run_one(&mut q, d).status, abi::CS_ADDR_WIDTH);
    assert_eq!(high_bytes(&high), vec![0xee; 0x1000], "nothing moved");
    let log = log(&r);
    assert!(
        log.contains(
            "descriptor 1 refused: dst 0x200000000+0x1000 is beyond the device's 33-bit DMA reach"
        ),
        "{log}"
    );
    assert!(
        log.contains("refused: dst SG list entry 1 0x200000800+0x800 is beyond"),
        "{log}"
    );
}

#[test]
fn a_ring_beyond_the_reach_is_not_enabled() {
    let (r, _high) = rig();
    let reg = |x| abi::queue_reg(0, x);
    r.write32(reg(abi::Q_SQ_BASE_LO), 0);
    r.write32(reg(abi::Q_SQ_BASE_HI), (HIGH >> 32) as u32);
    r.write32(reg(abi::Q_CQ_BASE_LO), RAM_BASE as u32);
    r.write32(reg(abi::Q_CQ_BASE_HI), (RAM_BASE >> 32) as u32);
    r.write32(reg(abi::Q_SIZE), 8);
    r.write32(reg(abi::Q_CTRL), abi::QCTRL_ENABLE);
    assert_eq!(r.read32(reg(abi::Q_STATUS)) & abi::QSTATUS_ENABLED, 0);
    assert_ne!(r.read32(abi::REG_ERROR) & abi::ERR_BAD_DOORBELL, 0);
    let log = log(&r);
    assert!(
        log.contains("the submission ring (SQ_BASE_LO/HI) 0x200000000+0x200 is beyond the device's 33-bit DMA reach"),
        "{log}"
    );
}

#[test]
fn a_direct_transfer_beyond_the_reach_names_the_register() {
    let (r, _high) = rig();
    let (status, bytes, _) = r.direct(&desc(abi::OP_COPY, 0, 0x100, HIGH, B));
    assert_eq!((status, bytes), (abi::CS_ADDR_WIDTH, 0));
    let log = log(&r);
    assert!(
        log.contains("direct transfer 0 refused: DMA_SRC_LO/HI 0x200000000+0x100 is beyond"),
        "{log}"
    );
}
