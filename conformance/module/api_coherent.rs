// SPDX-License-Identifier: GPL-2.0

//! `dma::Coherent`: `zeroed_slice`, `from_slice`, `zeroed`/`init` of one value, `dma_address`,
//! `size`/`len`, and the CPU's view of what the device wrote (`as_ref` once the device is
//! done, volatile reads through `io_project!` (`dma_read!` on 7.2)), from 1 byte to 4 MiB and at
//! unaligned offsets.

#[cfg(not(series_7_2))]
use kernel::io::Io;
use kernel::{dma::Coherent, prelude::*};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "coherent";

/// Sizes from 1 byte to several MiB: one byte, odd, a page, a page and one, 64 KiB, 4 MiB.
const SIZES: [usize; 6] = [1, 333, 4096, 4097, 64 << 10, 4 << 20];

pub(crate) fn run(dma: &Dma<'_>) {
    for len in SIZES {
        result(
            API,
            format_args!("zeroed_slice {len} B: zeroed, then filled by the device"),
            zeroed_then_filled(dma, len),
        );
    }
    for (len, off) in [(4096, 1), (65536, 4093), (1 << 20, 12345)] {
        result(
            API,
            format_args!("from_slice {len} B: device copies from offset {off}"),
            from_slice_copied(dma, len, off),
        );
    }
    result(
        API,
        format_args!("zeroed and init of one value: device fills it"),
        one_value(dma),
    );
    result(
        API,
        format_args!("failure paths: 0 elements EINVAL, an overflowing length ENOMEM, quietly"),
        failures(dma),
    );
}

/// Allocations that cannot succeed fail with the right errno, without a warning (the caller's
/// `__GFP_NOWARN` reaches the allocator) and without leaking (DMA-API debug at unload).
fn failures(dma: &Dma<'_>) -> Result<(), Failed> {
    let quiet = GFP_KERNEL | __GFP_NOWARN;
    let want = |what: &str, got: Result<Coherent<[u64]>>, errno: Error| match got {
        Err(e) if e == errno => Ok(()),
        Err(e) => Err(text(format_args!(
            "{what}: {}, expected {}",
            errname(e),
            errname(errno)
        ))),
        Ok(_) => Err(text(format_args!("{what}: succeeded"))),
    };
    want(
        "0 elements",
        Coherent::<u64>::zeroed_slice(dma.dev(), 0, quiet),
        EINVAL,
    )?;
    want(
        "usize::MAX / 4 elements of 8 bytes",
        Coherent::<u64>::zeroed_slice(dma.dev(), usize::MAX / 4, quiet),
        ENOMEM,
    )
    // (No "more than the guest's RAM": behind an IOMMU the DMA layer allocates such a request
    // page by page and the OOM killer ends the test instead: docs/conformance.md.)
}

fn zeroed_then_filled(dma: &Dma<'_>, len: usize) -> Result<(), Failed> {
    let buf = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    if buf.len() != len || buf.size() != len {
        return Err(text(format_args!(
            "len {} size {}, asked {len}",
            buf.len(),
            buf.size()
        )));
    }
    // SAFETY: the device has not been given the address yet.
    let zero = unsafe { buf.as_ref() };
    expect("before the device ran", len, |i| zero[i], |_| 0)?;
    let pattern = 0xa5c3_0f1e ^ len as u32;
    dma.fill(buf.bus(), len, pattern)?;
    // SAFETY: the device's transfer is done (DONE read); nothing else writes the buffer.
    let got = unsafe { buf.as_ref() };
    expect(
        "after the device's FILL",
        len,
        |i| got[i],
        |i| fill_byte(pattern, i),
    )
}

fn from_slice_copied(dma: &Dma<'_>, len: usize, off: usize) -> Result<(), Failed> {
    let mut data =
        KVVec::from_elem(0u8, len, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 + len) as u8;
    }
    let src = Coherent::<u8>::from_slice(dma.dev(), &data, GFP_KERNEL)
        .map_err(|e| text(format_args!("from_slice: {}", errname(e))))?;
    let dst = Coherent::<u8>::zeroed_slice(dma.dev(), len, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    let n = len - off;
    dma.copy(src.bus() + off as u64, dst.bus(), n)?;
    let got = volatile_read(&dst, n)?;
    expect(
        "the copy read back through the abstraction's volatile accessor",
        n,
        |i| got[i],
        |i| data[off + i],
    )
}

/// The first `n` bytes of `buf`, read as a driver reads memory a device may touch: volatile,
/// through the I/O view (`io_project!`, 7.3) or `dma_read!` (7.2, one byte at a time).
fn volatile_read(buf: &Coherent<[u8]>, n: usize) -> Result<KVVec<u8>, Failed> {
    let mut got =
        KVVec::from_elem(0u8, n, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    #[cfg(not(series_7_2))]
    let mut read = || -> Result {
        kernel::io::io_project!(buf, [try: 0..n]).copy_to_slice(&mut got);
        Ok(())
    };
    #[cfg(series_7_2)]
    let mut read = || -> Result {
        for (i, b) in got.iter_mut().enumerate() {
            *b = kernel::dma_read!(buf, [try: i]);
        }
        Ok(())
    };
    read().map_err(|e| text(format_args!("a volatile read of 0..{n}: {}", errname(e))))?;
    Ok(got)
}

/// A `#[repr(C)]` value the device fills as bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Pair {
    a: u64,
    b: u32,
    c: u32,
}

// SAFETY: `Pair` is plain integers without padding: every bit pattern is valid.
unsafe impl kernel::transmute::FromBytes for Pair {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for Pair {}

fn one_value(dma: &Dma<'_>) -> Result<(), Failed> {
    let zeroed = Coherent::<Pair>::zeroed(dma.dev(), GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed: {}", errname(e))))?;
    let init = Coherent::<Pair>::init(dma.dev(), GFP_KERNEL, Pair { a: 1, b: 2, c: 3 })
        .map_err(|e| text(format_args!("init: {}", errname(e))))?;
    // SAFETY: the device has not been given either address yet.
    let (z, i) = unsafe { (*zeroed.as_ref(), *init.as_ref()) };
    if (z.a, z.b, z.c) != (0, 0, 0) || (i.a, i.b, i.c) != (1, 2, 3) {
        return Err(text(format_args!(
            "initial values wrong: zeroed {} {} {}, init {} {} {}",
            z.a, z.b, z.c, i.a, i.b, i.c
        )));
    }
    let size = core::mem::size_of::<Pair>();
    dma.fill(init.bus(), size, 0x1122_3344)?;
    // SAFETY: the device's transfer is done.
    let v = unsafe { *init.as_ref() };
    if (v.a, v.b, v.c) != (0x1122_3344_1122_3344, 0x1122_3344, 0x1122_3344) {
        return Err(text(format_args!(
            "after the device's FILL: a {:#x} b {:#x} c {:#x}",
            v.a, v.b, v.c
        )));
    }
    Ok(())
}
