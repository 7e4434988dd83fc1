// SPDX-License-Identifier: GPL-2.0

//! The device doing DMA for the tests: the direct-transfer registers (docs/datasheet.md,
//! "Direct transfers"), one transfer at a time, polled. Every transfer says what the device
//! reported when it fails, so a failing test names the device's account, not just "EIO".

use kernel::{
    device::{Bound, Device},
    io::{poll::read_poll_timeout, Io},
    prelude::*,
    time::Delta,
};

use crate::abi::{self, Opcode, Status};
use crate::Bar0;

/// A transfer that failed, in the datasheet's words.
pub(crate) type Failed = KVec<u8>;

/// The dmalab device, for the tests: its BAR and the `struct device` the DMA API maps for.
pub(crate) struct Dma<'a> {
    bar: &'a Bar0<'a>,
    dev: &'a Device<Bound>,
    /// The address bits the device drives (CAP_DMA_BITS).
    pub(crate) bits: u32,
}

impl<'a> Dma<'a> {
    pub(crate) fn new(bar: &'a Bar0<'a>, dev: &'a Device<Bound>, bits: u32) -> Self {
        Self { bar, dev, bits }
    }

    /// The device, for allocations and mappings.
    pub(crate) fn dev(&self) -> &'a Device<Bound> {
        self.dev
    }

    /// The device writes `len` bytes of `pattern` (little-endian, repeated) at bus address
    /// `dst`.
    pub(crate) fn fill(&self, dst: u64, len: usize, pattern: u32) -> Result<(), Failed> {
        self.run(Opcode::Fill, 0, dst, len, pattern)
    }

    /// The device copies `len` bytes from bus address `src` to bus address `dst`.
    pub(crate) fn copy(&self, src: u64, dst: u64, len: usize) -> Result<(), Failed> {
        self.run(Opcode::Copy, src, dst, len, 0)
    }

    fn run(&self, op: Opcode, src: u64, dst: u64, len: usize, pattern: u32) -> Result<(), Failed> {
        let bar = self.bar;
        let len32 = u32::try_from(len).map_err(|_| text(format_args!("{len} bytes: too long")))?;
        // Raw offsets (abi/regs.rs) rather than the typed registers: the `register!` macro
        // moves between kernel series, and this file is the suite's base on every tree.
        bar.write32(src as u32, abi::REG_DMA_SRC_LO);
        bar.write32((src >> 32) as u32, abi::REG_DMA_SRC_HI);
        bar.write32(dst as u32, abi::REG_DMA_DST_LO);
        bar.write32((dst >> 32) as u32, abi::REG_DMA_DST_HI);
        bar.write32(len32, abi::REG_DMA_LEN);
        bar.write32(pattern, abi::REG_DMA_PATTERN);
        bar.write32(u32::from(op.raw()), abi::REG_DMA_CMD);
        let status = read_poll_timeout(
            || Ok(bar.read32(abi::REG_DMA_STATUS)),
            |s| s & abi::DMA_STATUS_DONE != 0,
            Delta::from_micros(20),
            Delta::from_millis(10_000),
        )
        .map_err(|_| {
            // a transfer that never ends still owns its memory: stop the device
            bar.write32(abi::CTRL_RESET, abi::REG_DEV_CTRL);
            let _ = bar.read32(abi::REG_DEV_STATUS);
            text(format_args!(
                "{} of {len} bytes {src:#x} -> {dst:#x}: no DONE within 10 s (device reset)",
                op.name()
            ))
        })?;
        let code = status >> abi::DMA_STATUS_CODE_SHIFT;
        if code != u32::from(Status::Ok.raw()) {
            let name = u16::try_from(code)
                .ok()
                .and_then(Status::from_raw)
                .map_or("an unknown status", |s| s.name());
            return Err(text(format_args!(
                "{} of {len} bytes {src:#x} -> {dst:#x}: the device says {name}",
                op.name()
            )));
        }
        Ok(())
    }
}

/// A message as bytes (the kernel's `fmt!` into a vector).
pub(crate) fn text(args: core::fmt::Arguments<'_>) -> Failed {
    let mut v = KVec::new();
    let _ = core::fmt::Write::write_fmt(&mut Writer(&mut v), args);
    v
}

struct Writer<'a>(&'a mut KVec<u8>);

impl core::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0
            .extend_from_slice(s.as_bytes(), GFP_KERNEL)
            .map_err(|_| core::fmt::Error)
    }
}

/// Compares `len` bytes the CPU reads (`got`, one byte at a time) with `want(i)`; the first
/// difference, in words.
pub(crate) fn expect(
    what: &str,
    len: usize,
    got: impl Fn(usize) -> u8,
    want: impl Fn(usize) -> u8,
) -> Result<(), Failed> {
    match (0..len).find(|&i| got(i) != want(i)) {
        None => Ok(()),
        Some(i) => Err(text(format_args!(
            "{what}: byte {i} of {len} reads {:#04x}, the device wrote {:#04x}",
            got(i),
            want(i)
        ))),
    }
}

/// The bus address of a DMA allocation: `dma_address()` in 7.3, `dma_handle()` in 7.2 (the
/// one spelling difference the tests step over so that they run on both; docs/conformance.md
/// lists the differences).
pub(crate) trait BusAddress {
    fn bus(&self) -> u64;
}

impl<T: kernel::ptr::KnownSize + ?Sized> BusAddress for kernel::dma::Coherent<T> {
    #[cfg(not(series_7_2))]
    fn bus(&self) -> u64 {
        self.dma_address()
    }
    #[cfg(series_7_2)]
    fn bus(&self) -> u64 {
        self.dma_handle()
    }
}

impl BusAddress for kernel::dma::CoherentHandle {
    #[cfg(not(series_7_2))]
    fn bus(&self) -> u64 {
        self.dma_address()
    }
    #[cfg(series_7_2)]
    fn bus(&self) -> u64 {
        self.dma_handle()
    }
}

/// A kernel error by its errno name (`ENOMEM`), for messages.
pub(crate) fn errname(e: Error) -> &'static str {
    match e.to_errno() {
        -1 => "EPERM",
        -5 => "EIO",
        -12 => "ENOMEM",
        -14 => "EFAULT",
        -16 => "EBUSY",
        -19 => "ENODEV",
        -22 => "EINVAL",
        -34 => "ERANGE",
        -95 => "EOPNOTSUPP",
        -110 => "ETIMEDOUT",
        _ => "an errno",
    }
}

/// Byte `i` of `pattern` repeated (little-endian), as FILL writes it.
pub(crate) fn fill_byte(pattern: u32, i: usize) -> u8 {
    pattern.to_le_bytes()[i % 4]
}
