// SPDX-License-Identifier: GPL-2.0

//! `dma::DmaMask` and `dma::Device::dma_set_mask*`: `try_new` accepts 0..=64 bits and refuses
//! more; setting a mask the platform cannot honour is refused; with the device's own width set
//! again, allocations come back below it and work.

use kernel::{
    dma::{Coherent, Device as _, DmaMask},
    pci,
    prelude::*,
};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "dma_mask";

pub(crate) fn run(dma: &Dma<'_>, pdev: &pci::Device<kernel::device::Core<'_>>) {
    result(
        API,
        format_args!("try_new: 0..=64 bits are the C DMA_BIT_MASK, 65 is EINVAL"),
        try_new(),
    );
    result(
        API,
        format_args!("dma_set_mask_and_coherent(32): allocations below 4 GiB that work"),
        below(dma, pdev, 32),
    );
    let bits = dma.bits;
    result(
        API,
        format_args!("dma_set_mask_and_coherent({bits}): the device's own width again"),
        below(dma, pdev, bits),
    );
    // Last: behind an IOMMU a failed allocation under a tiny mask makes the IOVA allocator fail
    // every later allocation below 4 GiB of that size or more at once, until an IOVA is freed
    // (iova.c's max32_alloc_size; docs/conformance.md), so nothing that needs one may follow.
    result(
        API,
        format_args!(
            "dma_set_mask_and_coherent(12 bits): refused, or honoured by every allocation"
        ),
        too_small(dma, pdev),
    );
    // SAFETY: as in `too_small`; the suite allocates nothing after this.
    let _ = DmaMask::try_new(bits).map(|m| unsafe { pdev.dma_set_mask_and_coherent(m) });
}

fn try_new() -> Result<(), Failed> {
    for n in 0..=64u32 {
        let want = if n == 0 { 0 } else { u64::MAX >> (64 - n) };
        match DmaMask::try_new(n) {
            Ok(m) if m.value() == want => {}
            Ok(m) => {
                return Err(text(format_args!(
                    "try_new({n}) = {:#x}, want {want:#x}",
                    m.value()
                )))
            }
            Err(e) => return Err(text(format_args!("try_new({n}): {}", errname(e)))),
        }
    }
    match DmaMask::try_new(65) {
        Err(e) if e == EINVAL => Ok(()),
        Ok(m) => Err(text(format_args!(
            "try_new(65) = {:#x}, want EINVAL",
            m.value()
        ))),
        Err(e) => Err(text(format_args!(
            "try_new(65): {}, want EINVAL",
            errname(e)
        ))),
    }
}

fn too_small(dma: &Dma<'_>, pdev: &pci::Device<kernel::device::Core<'_>>) -> Result<(), Failed> {
    let mask = DmaMask::try_new(12).map_err(|e| text(format_args!("{}", errname(e))))?;
    // SAFETY: probe runs the tests one after the other: no allocation or mapping is made while
    // the mask changes, and each test frees what it allocated before it returns.
    if unsafe { pdev.dma_set_mask_and_coherent(mask) }.is_err() {
        // without an IOMMU no memory lies below 4 KiB: refused
        return Ok(());
    }
    // Accepted (an IOMMU can remap anything below a mask): then whatever is allocated must lie
    // below it, or the allocation must fail.
    match Coherent::<u8>::zeroed_slice(dma.dev(), 4096, GFP_KERNEL | __GFP_NOWARN) {
        Err(_) => Ok(()),
        Ok(buf) if buf.bus() + 4095 <= mask.value() => Ok(()),
        Ok(buf) => Err(text(format_args!(
            "a 12-bit mask was accepted, then an allocation got bus address {:#x}",
            buf.bus()
        ))),
    }
}

fn below(
    dma: &Dma<'_>,
    pdev: &pci::Device<kernel::device::Core<'_>>,
    bits: u32,
) -> Result<(), Failed> {
    let mask = DmaMask::try_new(bits).map_err(|e| text(format_args!("{}", errname(e))))?;
    // SAFETY: as in `too_small`.
    unsafe { pdev.dma_set_mask_and_coherent(mask) }.map_err(|e| {
        text(format_args!(
            "dma_set_mask_and_coherent({bits}): {}",
            errname(e)
        ))
    })?;
    let len = 1 << 20;
    let buf = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    let end = buf.bus() + len as u64 - 1;
    if end & !mask.value() != 0 {
        return Err(text(format_args!(
            "bus address {end:#x} is above the {bits}-bit mask"
        )));
    }
    let pattern = 0x3c3c_5a5a;
    dma.fill(buf.bus(), len, pattern)?;
    // SAFETY: the device's transfer is done.
    let got = unsafe { buf.as_ref() };
    expect(
        "after the device's FILL",
        len,
        |i| got[i],
        |i| fill_byte(pattern, i),
    )
}
