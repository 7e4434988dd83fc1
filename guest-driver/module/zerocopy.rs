// SPDX-License-Identifier: GPL-2.0

//! The zero-copy data path: a request's guest memory mapped where it is, with the streaming
//! DMA abstraction (`streaming.rs`), so the device's scatter-gather lists point at the caller's
//! own pages; and the rule that chooses it over the bounce pool (module parameter `dma_mode`).

use kernel::{
    device::{Bound, Device},
    new_condvar, new_mutex,
    prelude::*,
    sync::{CondVar, Mutex},
    uaccess::UserPtr,
};

use crate::abi::{self, Opcode, Request};
use crate::pool::Segments;
use crate::ring::SG_MAX;
use crate::streaming::{DeviceDone, DeviceOwned, FromDevice, Mapping, ToDevice, UserPages};

/// Destinations must start and end on a cache line: a device write into a line the CPU (or
/// another request) shares is lost or clobbered on a non-coherent machine, and DMA-API debug
/// reports overlapping device-writable mappings of one line. Linux's L1 line on x86-64.
const CACHE_LINE: u64 = 64;

/// The `dma_mode` module parameter.
pub(crate) fn mode() -> u32 {
    match crate::module_parameters::dma_mode.value() {
        m @ (abi::DMA_MODE_AUTO | abi::DMA_MODE_BOUNCE | abi::DMA_MODE_ZERO_COPY) => m,
        _ => abi::DMA_MODE_AUTO,
    }
}

/// The `zero_copy_min` module parameter: in auto mode, smaller requests are copied.
pub(crate) fn threshold() -> u32 {
    crate::module_parameters::zero_copy_min.value()
}

/// Whether the mode wants `req` zero-copy (its memory may still not allow it).
pub(crate) fn wanted(req: &Request) -> bool {
    match mode() {
        abi::DMA_MODE_BOUNCE => false,
        abi::DMA_MODE_ZERO_COPY => true,
        _ => req.len >= threshold(),
    }
}

/// Keeps the device bound while requests hold mappings for it.
///
/// A mapping must be undone before its device unbinds. Teardown marks the device dead and then
/// waits ([`MapGate::wait_idle`]) until every [`MapTicket`] is gone; a request takes a ticket
/// before it maps and drops it after it unmaps, and cannot take one once the device is dead.
#[pin_data]
pub(crate) struct MapGate {
    #[pin]
    live: Mutex<(u32, bool)>,
    #[pin]
    idle: CondVar,
}

impl MapGate {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            live <- new_mutex!((0, false)),
            idle <- new_condvar!(),
        })
    }

    /// A ticket to map for `dev` (the device this gate belongs to); `ENODEV` once closed.
    pub(crate) fn enter<'a>(&'a self, dev: &'a Device) -> Result<MapTicket<'a>> {
        let mut live = self.live.lock();
        if live.1 {
            return Err(ENODEV);
        }
        live.0 += 1;
        Ok(MapTicket { gate: self, dev })
    }

    /// Refuses new tickets and waits until the last one is dropped. Called by teardown after
    /// every waiter was failed, so the holders are on their way out.
    pub(crate) fn wait_idle(&self) {
        let mut live = self.live.lock();
        live.1 = true;
        while live.0 > 0 {
            self.idle.wait(&mut live);
        }
    }
}

/// Permission to map for the device while held (see [`MapGate`]).
pub(crate) struct MapTicket<'a> {
    gate: &'a MapGate,
    dev: &'a Device,
}

impl MapTicket<'_> {
    /// The device, bound for as long as the ticket lives.
    pub(crate) fn bound(&self) -> &Device<Bound> {
        // SAFETY: teardown runs before the device is unbound and does not return before every
        // ticket has been dropped (`MapGate::wait_idle`); the reference lives no longer than
        // `self`.
        unsafe { self.dev.as_bound() }
    }
}

impl Drop for MapTicket<'_> {
    fn drop(&mut self) {
        let mut live = self.gate.live.lock();
        live.0 -= 1;
        if live.0 == 0 {
            self.gate.idle.notify_all();
        }
    }
}

/// A request's guest memory, mapped where it is. Field order is drop order: the mappings are
/// undone (or leaked) before the ticket that keeps the device bound goes.
pub(crate) struct ZeroCopy<'a> {
    src: Option<Mapping<ToDevice, DeviceOwned>>,
    dst: Option<Mapping<FromDevice, DeviceOwned>>,
    _ticket: MapTicket<'a>,
}

impl<'a> ZeroCopy<'a> {
    /// Pins and maps `req`'s guest memory for the device, or says why it cannot (`None`: use
    /// the bounce pool). A range that is not the caller's to pin is not an error here: the
    /// bounce path's copy reports it (`EFAULT`) the way it always has.
    pub(crate) fn try_map(gate: &'a MapGate, dev: &'a Device, req: &Request) -> Option<Self> {
        let opcode = Opcode::from_raw(req.opcode)?;
        let len = req.len as usize;
        let (src_guest, dst_guest) = (opcode.src_in_guest(), opcode.dst_in_guest());
        if !src_guest && !dst_guest {
            return None;
        }
        if dst_guest && (req.dst % CACHE_LINE != 0 || u64::from(req.len) % CACHE_LINE != 0) {
            return None;
        }
        if src_guest && dst_guest {
            let (s, d, n) = (req.src, req.dst, u64::from(req.len));
            // A COPY onto itself would read what it already wrote: the bounce path's snapshot
            // of the source keeps its meaning.
            if s < d.saturating_add(n) && d < s.saturating_add(n) {
                return None;
            }
        }
        let ticket = gate.enter(dev).ok()?;
        let bound = ticket.bound();
        let src = if src_guest {
            let pages =
                UserPages::<ToDevice>::pin(UserPtr::from_addr(req.src as usize), len).ok()?;
            Some(pages.map(bound, abi::MAX_REQUEST).ok()?)
        } else {
            None
        };
        let dst = if dst_guest {
            let pages =
                UserPages::<FromDevice>::pin(UserPtr::from_addr(req.dst as usize), len).ok();
            match pages.and_then(|p| p.map(bound, abi::MAX_REQUEST).ok()) {
                Some(m) => Some(m),
                None => {
                    // SAFETY: `src` was mapped just now and never named to the device.
                    let done = unsafe { DeviceDone::new() };
                    drop(src.map(|m| m.unmap(&done)));
                    return None;
                }
            }
        } else {
            None
        };
        let this = Self {
            src,
            dst,
            _ticket: ticket,
        };
        let too_many = this
            .src
            .as_ref()
            .is_some_and(|m| m.segment_count() > SG_MAX)
            || this
                .dst
                .as_ref()
                .is_some_and(|m| m.segment_count() > SG_MAX);
        if too_many {
            // SAFETY: never named to the device.
            this.release(&unsafe { DeviceDone::new() });
            return None;
        }
        Some(this)
    }

    /// Pages pinned, both sides.
    pub(crate) fn pinned_pages(&self) -> u32 {
        let n = self.src.as_ref().map_or(0, |m| m.page_count())
            + self.dst.as_ref().map_or(0, |m| m.page_count());
        n as u32
    }

    /// The device's segments for the source and destination sides.
    pub(crate) fn segments(&self) -> Result<(Segments, Segments)> {
        Ok((side(self.src.as_ref())?, side(self.dst.as_ref())?))
    }

    /// Debug-only `dma_bug` LeakOnError: forgets the mappings (pages stay pinned and mapped,
    /// DMA-API debug reports them at unbind) but lets the device unbind.
    pub(crate) fn leak(self) {
        let Self { src, dst, _ticket } = self;
        core::mem::forget(src);
        core::mem::forget(dst);
    }

    /// Undoes the mappings and unpins the pages (the destination's marked dirty: the device
    /// wrote them), the device being done with them.
    pub(crate) fn release(self, done: &DeviceDone) {
        let Self { src, dst, _ticket } = self;
        drop(src.map(|m| m.unmap(done)));
        drop(dst.map(|m| m.unmap(done)));
    }
}

/// One side's segments, as the descriptor builder takes them.
fn side<D: crate::streaming::Direction>(m: Option<&Mapping<D, DeviceOwned>>) -> Result<Segments> {
    let mut v = KVec::new();
    if let Some(m) = m {
        v.reserve(m.segment_count(), GFP_KERNEL)?;
        for s in m.segments() {
            v.push((s.addr, s.len), GFP_KERNEL)?;
        }
    }
    Ok(v)
}
