// SPDX-License-Identifier: GPL-2.0

//! `dma::Attrs` (`DMA_ATTR_*`) on coherent allocations: attributes that change how memory is
//! allocated must still give memory the device reaches and the CPU sees, byte for byte.

use kernel::{
    dma::{attrs::*, Attrs, Coherent},
    prelude::*,
};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "attrs";

pub(crate) fn run(dma: &Dma<'_>) {
    let cases: [(&str, Attrs); 4] = [
        ("DMA_ATTR_NO_WARN", DMA_ATTR_NO_WARN),
        ("DMA_ATTR_FORCE_CONTIGUOUS", DMA_ATTR_FORCE_CONTIGUOUS),
        ("DMA_ATTR_ALLOC_SINGLE_PAGES", DMA_ATTR_ALLOC_SINGLE_PAGES),
        (
            "DMA_ATTR_WEAK_ORDERING | DMA_ATTR_NO_WARN",
            DMA_ATTR_WEAK_ORDERING | DMA_ATTR_NO_WARN,
        ),
    ];
    for (name, attrs) in cases {
        result(
            API,
            format_args!("zeroed_slice_with_attrs({name}) 256 KiB: the device fills it"),
            filled(dma, attrs),
        );
    }
}

fn filled(dma: &Dma<'_>, attrs: Attrs) -> Result<(), Failed> {
    let len = 256 << 10;
    let buf = Coherent::<u8>::zeroed_slice_with_attrs(dma.dev(), len, GFP_KERNEL, attrs)
        .map_err(|e| text(format_args!("zeroed_slice_with_attrs: {}", errname(e))))?;
    let pattern = 0x0f0f_a5a5;
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
