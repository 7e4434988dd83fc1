//! A hostile guest: with the driver unbound, program the device through its BAR (sysfs
//! `resource0`) with rings and descriptors no correct driver would write, and check that the
//! device wrote nothing outside what the descriptors and rings name (canary pages), then hand
//! the device back to the driver.

use std::time::{Duration, Instant};

use dmalab_abi as abi;

use crate::pci_user::{enable_bus_master, MappedBar, Pages};
use crate::report::report;
use dmalab_report::{Hostile, Report};

const PAGE: usize = 4096;
const CANARY: u8 = 0xa5;
const PAGES: usize = 64;

/// BAR0 mapped from sysfs, with the queue helpers the attack needs.
struct Bar(MappedBar);

impl Bar {
    fn map(bdf: &str) -> Result<Self, String> {
        MappedBar::open(&format!("/sys/bus/pci/devices/{bdf}"), 0).map(Self)
    }

    fn read(&self, off: usize) -> u32 {
        self.0.read(off)
    }

    fn write(&self, off: usize, v: u32) {
        self.0.write(off, v)
    }

    fn qwrite(&self, q: usize, reg: usize, v: u32) {
        self.write(abi::queue_reg(q, reg), v);
    }

    fn ring(&self, q: usize, sq: u64, cq: u64, size: u32) {
        self.qwrite(q, abi::Q_SQ_BASE_LO, sq as u32);
        self.qwrite(q, abi::Q_SQ_BASE_HI, (sq >> 32) as u32);
        self.qwrite(q, abi::Q_CQ_BASE_LO, cq as u32);
        self.qwrite(q, abi::Q_CQ_BASE_HI, (cq >> 32) as u32);
        self.qwrite(q, abi::Q_SIZE, size);
    }

    /// Waits (bounded) until queue `q` has fetched up to `tail` or halted.
    fn settle(&self, q: usize, tail: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let st = self.read(abi::queue_reg(q, abi::Q_STATUS));
            if self.read(abi::queue_reg(q, abi::Q_SQ_HEAD)) == tail
                || st & abi::QSTATUS_ENABLED == 0
                || st & abi::QSTATUS_ERROR != 0
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // let the completion land
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn descriptor(
    opcode: u8,
    flags: u8,
    dst_nseg: u16,
    len: u32,
    src: u64,
    dst: u64,
    pattern: u32,
) -> [u8; 64] {
    let mut d = [0u8; 64];
    d[0] = opcode;
    d[1] = flags;
    d[4..6].copy_from_slice(&dst_nseg.to_le_bytes());
    d[8..12].copy_from_slice(&0x4057_1e00u32.to_le_bytes());
    d[12..16].copy_from_slice(&len.to_le_bytes());
    d[16..24].copy_from_slice(&src.to_le_bytes());
    d[24..32].copy_from_slice(&dst.to_le_bytes());
    d[32..36].copy_from_slice(&pattern.to_le_bytes());
    d
}

fn sysfs(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))
}

/// The scenario: unbind, attack, check, rebind (the caller then checks the driver works).
pub fn hostile(bdf: &str) -> Result<(), String> {
    sysfs("/sys/bus/pci/drivers/dmalab/unbind", bdf)?;
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    // the device may DMA at all
    enable_bus_master(&dev)?;

    let pages = Pages::new(PAGES)?;
    // The ring page R must have a physically adjacent page of ours after it: that one is a
    // canary a completion written past a shrunken ring would hit.
    let r = (0..PAGES)
        .find(|&i| pages.phys.contains(&(pages.phys[i] + PAGE as u64)))
        .ok_or("no two physically adjacent pages among 64")?;
    let after_r = pages
        .phys
        .iter()
        .position(|&p| p == pages.phys[r] + PAGE as u64)
        .unwrap();
    let mut others = (0..PAGES).filter(|&i| i != r && i != after_r);
    let (d, g) = (others.next().unwrap(), others.next().unwrap());
    let canaries: Vec<usize> = (0..PAGES).filter(|&i| i != r && i != d && i != g).collect();
    for &c in &canaries {
        pages.fill(c, CANARY);
    }
    pages.fill(r, 0);
    pages.fill(d, 0);
    pages.fill(g, 0);
    let (rp, dp, gp) = (pages.phys[r], pages.phys[d], pages.phys[g]);

    let bar = Bar::map(bdf)?;
    bar.write(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    // 1. A legitimate ring of 16 at the end of page R, ten FILLs into page D.
    let cq16 = rp + 0x1000 - 16 * 16;
    bar.ring(0, rp, cq16, 16);
    bar.qwrite(0, abi::Q_CTRL, abi::QCTRL_ENABLE);
    for k in 0..10 {
        pages.write(
            r,
            k * 64,
            &descriptor(abi::OP_FILL, 0, 0, 64, 0, dp + 64 * k as u64, 0x5a5a_5a5a),
        );
    }
    bar.qwrite(0, abi::Q_SQ_TAIL, 10);
    bar.settle(0, 10);
    let legit_done = bar.read(abi::queue_reg(0, abi::Q_DONE));
    // 2. Shrink to 4 with the completion ring at the very end of R: completions at the old
    // indices (10..) would land in the canary page after R.
    bar.qwrite(0, abi::Q_CTRL, 0);
    bar.ring(0, rp, rp + 0x1000 - 4 * 16, 4);
    bar.qwrite(0, abi::Q_CTRL, abi::QCTRL_ENABLE);
    // Hostile descriptors: an address that wraps, one far outside RAM, an SG list whose
    // lengths do not add up, a zero and an oversized length, an unknown opcode.
    let hostile = [
        descriptor(abi::OP_COPY, 0, 0, 4096, dp, u64::MAX - 100, 0),
        descriptor(abi::OP_FILL, 0, 0, 4096, 0, 0xffff_f000_0000, 1),
        descriptor(abi::OP_FILL, abi::DESC_DST_SG, 2, 4096, 0, gp, 2),
    ];
    let mut sg = [0u8; 32];
    sg[0..8].copy_from_slice(&dp.to_le_bytes());
    sg[8..12].copy_from_slice(&100u32.to_le_bytes());
    sg[16..24].copy_from_slice(&dp.to_le_bytes());
    sg[24..28].copy_from_slice(&100u32.to_le_bytes());
    pages.write(g, 0, &sg);
    for (k, h) in hostile.iter().enumerate() {
        pages.write(r, k * 64, h);
    }
    bar.qwrite(0, abi::Q_SQ_TAIL, 3);
    bar.settle(0, 3);
    bar.qwrite(0, abi::Q_SQ_TAIL, 9); // beyond the ring: refused
    bar.qwrite(0, abi::Q_CQ_HEAD, 3);
    for (k, h) in [
        descriptor(abi::OP_FILL, 0, 0, 0, 0, dp, 3),
        descriptor(abi::OP_FILL, 0, 0, u32::MAX, 0, dp, 4),
        descriptor(77, 0xf0, 0, 64, dp, dp, 5),
    ]
    .iter()
    .enumerate()
    {
        pages.write(r, ((3 + k) % 4) * 64, h);
    }
    bar.qwrite(0, abi::Q_SQ_TAIL, 2);
    bar.settle(0, 2);
    // 3. Rings that wrap the address space or lie outside guest memory; absurd sizes.
    if bar.read(abi::REG_CAP_QUEUES) > 1 {
        for (sq, cq, size) in [
            (u64::MAX - 63, cq16, 4),
            (rp, 0x40_0000_0000, 4),
            (rp, cq16, 0x8000_0000),
            (rp + 8, cq16, 4),
        ] {
            bar.ring(1, sq, cq, size);
            bar.qwrite(1, abi::Q_CTRL, abi::QCTRL_ENABLE);
            bar.qwrite(1, abi::Q_SQ_TAIL, 1);
            bar.qwrite(1, abi::Q_CTRL, 0);
        }
    }
    let error_bits = bar.read(abi::REG_ERROR);
    let status = bar.read(abi::REG_DEV_STATUS);
    bar.write(abi::REG_DEV_CTRL, abi::CTRL_RESET);
    drop(bar);

    let mut stray = 0u64;
    let mut first = String::new();
    for &c in &canaries {
        for off in 0..PAGE {
            if pages.byte(c, off) != CANARY {
                if stray == 0 {
                    first = format!("{:#x}", pages.phys[c] + off as u64);
                }
                stray += 1;
            }
        }
    }
    let filled = (0..640).all(|o| pages.byte(d, o) == 0x5a);
    report(Report::Hostile(Hostile {
        legit_done,
        legit_data: filled,
        canary_pages: canaries.len() as u64,
        stray_bytes: stray,
        first_stray: first,
        error_bits,
        status,
    }));
    // Hand the device back.
    sysfs("/sys/bus/pci/drivers/dmalab/bind", bdf)
}
