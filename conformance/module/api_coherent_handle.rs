// SPDX-License-Identifier: GPL-2.0

//! `dma::CoherentHandle`: coherent memory with no kernel mapping (`DMA_ATTR_NO_KERNEL_MAPPING`),
//! only ever touched by the device. The device fills it and copies it into ordinary coherent
//! memory, where the CPU checks it: the handle's address and size must be what the device can
//! use.

use kernel::{
    dma::{Coherent, CoherentHandle},
    prelude::*,
};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "coherent_handle";

pub(crate) fn run(dma: &Dma<'_>) {
    for len in [4096, 100_000, 1 << 20] {
        result(
            API,
            format_args!("alloc {len} B: the device fills it and copies it out"),
            filled_and_copied(dma, len),
        );
    }
    result(API, format_args!("alloc of 0 bytes is EINVAL"), zero(dma));
}

fn filled_and_copied(dma: &Dma<'_>, len: usize) -> Result<(), Failed> {
    let h = CoherentHandle::alloc(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("alloc: {}", errname(e))))?;
    if h.size() != len {
        return Err(text(format_args!("size {} for {len} bytes", h.size())));
    }
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    let pattern = 0x7e57_c0de;
    dma.fill(h.bus(), len, pattern)?;
    dma.copy(h.bus(), out.bus(), len)?;
    // SAFETY: the device's transfers are done.
    let got = unsafe { out.as_ref() };
    expect(
        "the handle's bytes, copied out by the device",
        len,
        |i| got[i],
        |i| fill_byte(pattern, i),
    )
}

fn zero(dma: &Dma<'_>) -> Result<(), Failed> {
    match CoherentHandle::alloc(dma.dev(), 0, GFP_KERNEL) {
        Err(e) if e == EINVAL => Ok(()),
        Err(e) => Err(text(format_args!("{}, expected EINVAL", errname(e)))),
        Ok(_) => Err(text(format_args!("a 0-byte allocation succeeded"))),
    }
}
