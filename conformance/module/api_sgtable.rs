// SPDX-License-Identifier: GPL-2.0

//! `scatterlist::SGTable<Owned<VVec<u8>>>`: pages the table owns, mapped for the device. The CPU
//! writes a pattern into a `VVec` of several pages (not physically contiguous), the table maps
//! it `ToDevice`, and the device copies each entry (`dma_address`, `dma_len`) into coherent
//! memory at the entry's offset: the entries must cover the buffer exactly, in order.
//!
//! What the suite found: an owned table gives no access to its pages once mapped, so a
//! `FromDevice` mapping's data cannot be read back through the abstraction at all.

use kernel::{
    dma::{Coherent, DataDirection},
    prelude::*,
    scatterlist::SGTable,
};

use crate::device::{errname, expect, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "sgtable";

pub(crate) fn run(dma: &Dma<'_>) {
    for pages in [1usize, 3, 64, 300] {
        result(
            API,
            format_args!("Owned<VVec> of {pages} pages, ToDevice: the device copies every entry"),
            to_device(dma, pages),
        );
    }
}

fn to_device(dma: &Dma<'_>, pages: usize) -> Result<(), Failed> {
    let size = pages * kernel::page::PAGE_SIZE;
    let mut v =
        VVec::<u8>::with_capacity(size, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for i in 0..size {
        v.push((i / 7 + pages) as u8, GFP_KERNEL)
            .map_err(|_| text(format_args!("no memory")))?;
    }
    let want = |i: usize| (i / 7 + pages) as u8;
    let sgt = KBox::pin_init(
        SGTable::new(dma.dev(), v, DataDirection::ToDevice, GFP_KERNEL),
        GFP_KERNEL,
    )
    .map_err(|e| text(format_args!("SGTable::new: {}", errname(e))))?;
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), size, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    let mut at = 0usize;
    let mut entries = 0;
    for e in sgt.iter() {
        let len = e.dma_len() as usize;
        if at + len > size {
            return Err(text(format_args!(
                "entry {entries} ends at {} of a {size}-byte buffer",
                at + len
            )));
        }
        dma.copy(e.dma_address(), out.bus() + at as u64, len)?;
        at += len;
        entries += 1;
    }
    if at != size {
        return Err(text(format_args!(
            "{entries} entries cover {at} of {size} bytes"
        )));
    }
    // SAFETY: the device's transfers are done.
    let got = unsafe { out.as_ref() };
    expect(
        "the buffer as the device read it through the table",
        size,
        |i| got[i],
        want,
    )
}
