// SPDX-License-Identifier: GPL-2.0

//! Lifetime rules: what happens to DMA memory and mappings when the device unbinds while the
//! driver still holds them. The module binds the device twice (see `dmalab.rs`):
//!
//! - **Round 1**, after every other API's tests: a `Coherent` goes into the driver's data (freed
//!   as the driver's data is dropped at unbind), and a `Devres<Coherent>` and an owned
//!   `SGTable` (whose mapping is a `Devres` inside it) are kept in a static, still referenced
//!   when the device unbinds. The device DMAs through all three first. After the unbind:
//!   DMA-API debug found nothing pending (the unbind's kernel log is the first result's),
//!   the `Devres` was revoked (`try_access` is `None`), and dropping the survivors afterwards
//!   unmaps or frees nothing twice.
//! - **Round 2**: a plain `Coherent` is kept past the unbind. The abstraction does not manage it
//!   (`rust/kernel/dma.rs` says so in a TODO): DMA-API debug reports it pending at unbind.
//!
//! A tree that skips the `Devres` revocation, unmaps an owned table early or frees with the
//! wrong size fails here (conformance/selftest/).

use core::{
    ptr,
    sync::atomic::{AtomicPtr, Ordering},
};
use kernel::{
    devres::Devres,
    dma::{Coherent, DataDirection},
    prelude::*,
    scatterlist::{Owned, SGTable},
};

use crate::device::{errname, expect, fill_byte, text, BusAddress, Dma, Failed};
use crate::report::result;

const API: &str = "lifetime";

/// Bytes of each buffer.
const SIZE: usize = 64 << 10;

/// The rounds of binding the lifetime tests need (`dmalab.rs` binds once per round).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Every API's tests, then the objects of the first round.
    Suite,
    /// A plain `Coherent` kept past the unbind.
    Unmanaged,
}

/// What the driver's data holds for these tests: freed as the driver unbinds.
pub(crate) struct Kept {
    _buf: Coherent<[u8]>,
}

/// One object kept past the unbind, in a static: the module's init takes it back afterwards.
struct Stash<T>(AtomicPtr<T>);

impl<T: Send> Stash<T> {
    const fn new() -> Self {
        Self(AtomicPtr::new(ptr::null_mut()))
    }

    /// Keeps `v` (in a box of its own), dropping what was kept before.
    fn put(&self, v: T) -> Result<(), Failed> {
        let v = KBox::new(v, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
        let old = self.0.swap(KBox::into_raw(v), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: a non-null pointer in the stash came from `KBox::into_raw` and is owned by
            // the stash, which just gave it up.
            drop(unsafe { KBox::from_raw(old) });
        }
        Ok(())
    }

    fn take(&self) -> Option<T> {
        let p = self.0.swap(ptr::null_mut(), Ordering::AcqRel);
        // SAFETY: as in `put`.
        (!p.is_null()).then(|| KBox::into_inner(unsafe { KBox::from_raw(p) }))
    }
}

type Table = SGTable<Owned<VVec<u8>>>;

static DEVRES: Stash<Devres<Coherent<[u8]>>> = Stash::new();
static TABLE: Stash<Pin<KBox<Table>>> = Stash::new();
static UNMANAGED: Stash<Coherent<[u8]>> = Stash::new();
/// Why a round's objects could not be made before the unbind, to report after it.
static EARLY: Stash<Failed> = Stash::new();

/// A coherent buffer the device has filled with `pattern`, checked.
fn filled(dma: &Dma<'_>, pattern: u32) -> Result<Coherent<[u8]>, Failed> {
    let buf = Coherent::<u8>::zeroed_slice(dma.dev(), SIZE, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    dma.fill(buf.bus(), SIZE, pattern)?;
    // SAFETY: the device's transfer is done.
    let got = unsafe { buf.as_ref() };
    expect(
        "the buffer the device filled",
        SIZE,
        |i| got[i],
        |i| fill_byte(pattern, i),
    )?;
    Ok(buf)
}

/// An owned table of `SIZE` bytes the device has read, checked.
fn table(dma: &Dma<'_>) -> Result<Pin<KBox<Table>>, Failed> {
    let mut v =
        VVec::<u8>::with_capacity(SIZE, GFP_KERNEL).map_err(|_| text(format_args!("no memory")))?;
    for i in 0..SIZE {
        v.push((i % 251) as u8, GFP_KERNEL)
            .map_err(|_| text(format_args!("no memory")))?;
    }
    let sgt = KBox::pin_init(
        SGTable::new(dma.dev(), v, DataDirection::ToDevice, GFP_KERNEL),
        GFP_KERNEL,
    )
    .map_err(|e| text(format_args!("SGTable::new: {}", errname(e))))?;
    let out = Coherent::<u8>::zeroed_slice(dma.dev(), SIZE, GFP_KERNEL)
        .map_err(|e| text(format_args!("zeroed_slice: {}", errname(e))))?;
    let mut at = 0usize;
    for e in sgt.iter() {
        let len = (e.dma_len() as usize).min(SIZE - at);
        dma.copy(e.dma_address(), out.bus() + at as u64, len)?;
        at += len;
    }
    // SAFETY: the device's transfers are done.
    let got = unsafe { out.as_ref() };
    expect(
        "the table as the device read it",
        SIZE,
        |i| got[i],
        |i| (i % 251) as u8,
    )?;
    Ok(sgt)
}

/// Round `round`'s objects, made in probe: what the driver's data keeps, if anything.
pub(crate) fn in_probe(dma: &Dma<'_>, round: Round) -> Option<Kept> {
    let made = match round {
        Round::Suite => (|| {
            let kept = filled(dma, 0x5a5a_1234)?;
            let managed = filled(dma, 0x0f0f_7788)?;
            let devres = Devres::new(dma.dev(), managed)
                .map_err(|e| text(format_args!("Devres::new: {}", errname(e))))?;
            DEVRES.put(devres)?;
            TABLE.put(table(dma)?)?;
            Ok(Some(Kept { _buf: kept }))
        })(),
        Round::Unmanaged => (|| {
            let buf = filled(dma, 0x3c3c_9911)?;
            UNMANAGED.put(buf)?;
            Ok(None)
        })(),
    };
    made.unwrap_or_else(|why: Failed| {
        // (without memory to keep the reason, the round's first result says "never made")
        let _ = EARLY.put(why);
        None
    })
}

/// Why this round's objects could not be made, if they could not.
fn early() -> Result<(), Failed> {
    EARLY.take().map_or(Ok(()), Err)
}

/// The device has unbound after round `round`: its tests' results.
pub(crate) fn after_unbind(round: Round) {
    match round {
        Round::Suite => {
            // first: the unbind's kernel log (DMA-API debug's pending report) is this line's
            result(
                API,
                format_args!(
                    "unbind with a Coherent in the driver's data, a Devres<Coherent> and an owned SGTable still referenced: nothing left allocated or mapped"
                ),
                early(),
            );
            let devres = DEVRES.take();
            result(
                API,
                format_args!("Devres<Coherent> still referenced at unbind: revoked"),
                match &devres {
                    None => Err(text(format_args!("it was never made"))),
                    Some(d) if d.try_access().is_some() => Err(text(format_args!(
                        "try_access() still gives the allocation after the device unbound"
                    ))),
                    Some(_) => Ok(()),
                },
            );
            drop(devres);
            // These two fail through the kernel log: a problem DMA-API debug prints between
            // the previous result line and this one is this test's (harness `conformance::parse`).
            result(
                API,
                format_args!("Devres<Coherent> dropped after the unbind: nothing freed twice"),
                Ok(()),
            );
            let had_table = TABLE.take().is_some();
            result(
                API,
                format_args!("owned SGTable dropped after the unbind: nothing unmapped twice"),
                if had_table {
                    Ok(())
                } else {
                    Err(text(format_args!("it was never made")))
                },
            );
        }
        Round::Unmanaged => {
            result(
                API,
                format_args!(
                    "unbind with a plain Coherent still referenced: nothing left allocated"
                ),
                early(),
            );
            drop(UNMANAGED.take());
            result(
                API,
                format_args!("plain Coherent dropped after the unbind: freed once"),
                Ok(()),
            );
        }
    }
}
