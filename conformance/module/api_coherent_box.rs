// SPDX-License-Identifier: GPL-2.0

//! `dma::CoherentBox`: memory the CPU fills through `Deref`/`DerefMut` and `init_at` while the
//! device does not know it yet, then hands over by converting into a `Coherent`: the device
//! must see exactly what the CPU wrote.

use kernel::{
    dma::{Coherent, CoherentBox},
    prelude::*,
};

use crate::device::{errname, expect, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "coherent_box";

pub(crate) fn run(dma: &Dma<'_>) {
    result(
        API,
        format_args!(
            "zeroed_slice, fill, init_at, into Coherent: the device copies what the CPU wrote"
        ),
        filled_then_copied(dma, 8192),
    );
    result(
        API,
        format_args!("from_slice 3000 B: the device copies it"),
        from_slice(dma, 3000),
    );
    result(
        API,
        format_args!("init_at out of bounds is EINVAL"),
        init_at_bounds(dma),
    );
}

fn filled_then_copied(dma: &Dma<'_>, n: usize) -> Result<(), Failed> {
    let mut b = CoherentBox::<[u32]>::zeroed_slice(dma.dev(), n, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    b.fill(0x0bad_f00d);
    for i in (0..n).step_by(3) {
        b.init_at(i, i as u32)
            .map_err(|e| text(format_args!("init_at({i}): {}", errname(e))))?;
    }
    let want = |i: usize| if i % 3 == 0 { i as u32 } else { 0x0bad_f00d };
    let src: Coherent<[u32]> = b.into();
    let dst = Coherent::<u8>::zeroed_slice(dma.dev(), n * 4, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    dma.copy(src.bus(), dst.bus(), n * 4)?;
    // SAFETY: the device's transfer is done.
    let got = unsafe { dst.as_ref() };
    expect(
        "the device's copy",
        n * 4,
        |i| got[i],
        |i| want(i / 4).to_le_bytes()[i % 4],
    )
}

fn from_slice(dma: &Dma<'_>, n: usize) -> Result<(), Failed> {
    let mut data =
        KVec::with_capacity(n, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for i in 0..n {
        data.push((i ^ 0x5a) as u8, GFP_KERNEL)
            .map_err(|_| text(format_args!("no memory")))?;
    }
    let b = CoherentBox::<[u8]>::from_slice(dma.dev(), &data, GFP_KERNEL)
        .map_err(|e| text(format_args!("from_slice: {}", errname(e))))?;
    if *b != data[..] {
        return Err(text(format_args!(
            "Deref does not show the slice it was made from"
        )));
    }
    let src: Coherent<[u8]> = b.into();
    let dst = Coherent::<u8>::zeroed_slice(dma.dev(), n, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    dma.copy(src.bus(), dst.bus(), n)?;
    // SAFETY: the device's transfer is done.
    let got = unsafe { dst.as_ref() };
    expect("the device's copy", n, |i| got[i], |i| data[i])
}

fn init_at_bounds(dma: &Dma<'_>) -> Result<(), Failed> {
    let mut b = CoherentBox::<[u64]>::zeroed_slice(dma.dev(), 4, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    match b.init_at(4, 7u64) {
        Err(e) if e == EINVAL => Ok(()),
        Err(e) => Err(text(format_args!(
            "init_at(4) of 4 elements: {}, expected EINVAL",
            errname(e)
        ))),
        Ok(()) => Err(text(format_args!("init_at(4) of 4 elements succeeded"))),
    }
}
