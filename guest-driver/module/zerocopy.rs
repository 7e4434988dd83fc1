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
use crate::pool::{Segments, PAGE};
use crate::ring::SG_MAX;
use crate::streaming::{
    self, DeviceDone, DeviceOwned, Direction, FromDevice, Mapping, SgStore, ToDevice, UserPages,
};

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

/// Pages a request side can span: `MAX_REQUEST` bytes starting anywhere in a page.
const MAX_PAGES: usize = abi::MAX_REQUEST as usize / PAGE + 1;

/// What one zero-copy request needs besides the caller's pages, kept from one request to the
/// next so that the request path allocates nothing (the block layer's per-request storage is
/// the model): each side's page array and scatter-gather table, and the device's segment
/// lists. A part that a failure or a leak took away is made again by the next request.
pub(crate) struct Storage {
    src_pages: KVec<*mut kernel::bindings::page>,
    dst_pages: KVec<*mut kernel::bindings::page>,
    src_table: Option<SgStore>,
    dst_table: Option<SgStore>,
    segs: (Segments, Segments),
}

// SAFETY: the page arrays hold no pins while stored (they are emptied when the pages are
// unpinned); the tables are `Send`.
unsafe impl Send for Storage {}

impl Storage {
    fn new() -> Result<KBox<Self>> {
        Ok(KBox::new(
            Self {
                src_pages: KVec::with_capacity(MAX_PAGES, GFP_KERNEL)?,
                dst_pages: KVec::with_capacity(MAX_PAGES, GFP_KERNEL)?,
                src_table: Some(SgStore::new(MAX_PAGES as u32)?),
                dst_table: Some(SgStore::new(MAX_PAGES as u32)?),
                segs: (
                    KVec::with_capacity(SG_MAX, GFP_KERNEL)?,
                    KVec::with_capacity(SG_MAX, GFP_KERNEL)?,
                ),
            },
            GFP_KERNEL,
        )?)
    }
}

/// Keeps the device bound while requests hold mappings for it, and keeps the requests'
/// [`Storage`].
///
/// A mapping must be undone before its device unbinds. Teardown marks the device dead and then
/// waits ([`MapGate::wait_idle`]) until every [`MapTicket`] is gone; a request takes a ticket
/// before it maps and drops it after it unmaps, and cannot take one once the device is dead.
/// A ticket comes with a request's storage and takes it back: the gate holds as many as
/// requests ever mapped at once, and frees them when the device goes.
#[pin_data]
pub(crate) struct MapGate {
    #[pin]
    live: Mutex<Gate>,
    #[pin]
    idle: CondVar,
}

/// The gate's state.
struct Gate {
    /// Tickets out.
    tickets: u32,
    /// No more tickets: the device is going.
    closed: bool,
    /// Storage not in use, and room to take back every one made.
    spare: KVec<KBox<Storage>>,
    /// Storage made so far.
    made: usize,
}

impl MapGate {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            live <- new_mutex!(Gate {
                tickets: 0,
                closed: false,
                spare: KVec::new(),
                made: 0,
            }),
            idle <- new_condvar!(),
        })
    }

    /// A ticket to map for `dev` (the device this gate belongs to), with storage for one
    /// request; `ENODEV` once closed. Storage is made only when every piece made so far is in
    /// use (a new high of requests mapped at once).
    pub(crate) fn enter<'a>(&'a self, dev: &'a Device) -> Result<MapTicket<'a>> {
        let mut live = self.live.lock();
        if live.closed {
            return Err(ENODEV);
        }
        live.tickets += 1;
        let storage = live.spare.pop();
        Ok(MapTicket {
            gate: self,
            dev,
            storage,
        })
    }

    /// Pieces of [`Storage`] made so far.
    pub(crate) fn storage_made(&self) -> usize {
        self.live.lock().made
    }

    /// Refuses new tickets and waits until the last one is dropped. Called by teardown after
    /// every waiter was failed, so the holders are on their way out.
    pub(crate) fn wait_idle(&self) {
        let mut live = self.live.lock();
        live.closed = true;
        while live.tickets > 0 {
            self.idle.wait(&mut live);
        }
    }
}

/// Permission to map for the device while held (see [`MapGate`]), and a request's storage.
pub(crate) struct MapTicket<'a> {
    gate: &'a MapGate,
    dev: &'a Device,
    storage: Option<KBox<Storage>>,
}

impl MapTicket<'_> {
    /// The device, bound for as long as the ticket lives.
    pub(crate) fn bound(&self) -> &Device<Bound> {
        // SAFETY: teardown runs before the device is unbound and does not return before every
        // ticket has been dropped (`MapGate::wait_idle`); the reference lives no longer than
        // `self`.
        unsafe { self.dev.as_bound() }
    }

    /// The request's storage, made now if the gate had none spare.
    fn take_storage(&mut self) -> Result<KBox<Storage>> {
        if let Some(s) = self.storage.take() {
            return Ok(s);
        }
        let s = Storage::new()?;
        // room in the gate's list to take it back when the ticket goes
        let mut live = self.gate.live.lock();
        let room = (live.made + 1).saturating_sub(live.spare.len());
        live.spare.reserve(room, GFP_KERNEL)?;
        live.made += 1;
        Ok(s)
    }
}

impl Drop for MapTicket<'_> {
    fn drop(&mut self) {
        let mut live = self.gate.live.lock();
        live.tickets -= 1;
        // storage beyond the room kept for it (none is made without room) is freed
        let extra = self
            .storage
            .take()
            .and_then(|s| live.spare.push_within_capacity(s).err());
        if live.tickets == 0 {
            self.gate.idle.notify_all();
        }
        drop(live);
        drop(extra);
    }
}

/// A request's guest memory, mapped where it is. Field order is drop order: the mappings are
/// undone (or leaked) before the ticket that keeps the device bound goes.
pub(crate) struct ZeroCopy<'a> {
    src: Option<Mapping<ToDevice, DeviceOwned>>,
    dst: Option<Mapping<FromDevice, DeviceOwned>>,
    /// What the mappings do not hold of the request's storage (their tables and page arrays
    /// come back into it at the unmap).
    storage: KBox<Storage>,
    ticket: MapTicket<'a>,
}

/// Pins and maps `len` bytes at user address `addr` for `dev` with the storage's page array
/// and table of one side, or gives them back and says why not.
fn map_side<D: Direction>(
    dev: &Device<Bound>,
    addr: u64,
    len: usize,
    pages: &mut KVec<*mut kernel::bindings::page>,
    table: &mut Option<SgStore>,
) -> Result<Mapping<D, DeviceOwned>> {
    let store = match table.take() {
        Some(t) => t,
        None => SgStore::new(MAX_PAGES as u32)?,
    };
    let user = UserPages::<D>::pin_in(
        UserPtr::from_addr(addr as usize),
        len,
        core::mem::take(pages),
    )?;
    match streaming::map_in(user, dev, abi::MAX_REQUEST, store) {
        Ok(m) => Ok(m),
        Err((e, user, store)) => {
            *pages = user.unpin();
            *table = Some(store);
            Err(e)
        }
    }
}

impl<'a> ZeroCopy<'a> {
    /// Pins and maps `req`'s guest memory for the device, or says why it cannot (`None`: use
    /// the bounce pool). A range that is not the caller's to pin is not an error here: the
    /// bounce path's copy reports it (`EFAULT`) the way it always has. Allocates nothing once
    /// the gate has storage spare.
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
        let mut ticket = gate.enter(dev).ok()?;
        let mut storage = ticket.take_storage().ok()?;
        let st = &mut *storage;
        let bound = ticket.bound();
        let src = if src_guest {
            map_side::<ToDevice>(bound, req.src, len, &mut st.src_pages, &mut st.src_table).ok()
        } else {
            None
        };
        let dst = if dst_guest {
            map_side::<FromDevice>(bound, req.dst, len, &mut st.dst_pages, &mut st.dst_table).ok()
        } else {
            None
        };
        let this = Self {
            src,
            dst,
            storage,
            ticket,
        };
        let mapped = (this.src.is_some() || !src_guest) && (this.dst.is_some() || !dst_guest);
        let too_many = this
            .src
            .as_ref()
            .is_some_and(|m| m.segment_count() > SG_MAX)
            || this
                .dst
                .as_ref()
                .is_some_and(|m| m.segment_count() > SG_MAX);
        if !mapped || too_many {
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

    /// The device's segments for the source and destination sides, in the storage's lists
    /// (give them back with [`ZeroCopy::keep_segments`]).
    pub(crate) fn segments(&mut self) -> Result<(Segments, Segments)> {
        let (mut s, mut d) = core::mem::take(&mut self.storage.segs);
        side(self.src.as_ref(), &mut s)?;
        side(self.dst.as_ref(), &mut d)?;
        Ok((s, d))
    }

    /// Takes back the segment lists [`ZeroCopy::segments`] gave out, for the next request.
    pub(crate) fn keep_segments(&mut self, src: Segments, dst: Segments) {
        self.storage.segs = (src, dst);
    }

    /// Debug-only `dma_bug` LeakOnError: forgets the mappings (pages stay pinned and mapped,
    /// DMA-API debug reports them at unbind) but lets the device unbind.
    pub(crate) fn leak(self) {
        let Self {
            src,
            dst,
            storage,
            mut ticket,
        } = self;
        core::mem::forget(src);
        core::mem::forget(dst);
        ticket.storage = Some(storage);
    }

    /// Undoes the mappings and unpins the pages (the destination's marked dirty: the device
    /// wrote them), the device being done with them; the storage goes back to the gate.
    pub(crate) fn release(self, done: &DeviceDone) {
        let Self {
            src,
            dst,
            mut storage,
            mut ticket,
        } = self;
        if let Some(m) = src {
            let (pages, table) = m.unmap_keeping(done);
            storage.src_pages = pages.unpin();
            storage.src_table = Some(table);
        }
        if let Some(m) = dst {
            let (pages, table) = m.unmap_keeping(done);
            storage.dst_pages = pages.unpin();
            storage.dst_table = Some(table);
        }
        ticket.storage = Some(storage);
    }
}

/// One side's segments into `out` (emptied first), as the descriptor builder takes them.
fn side<D: crate::streaming::Direction>(
    m: Option<&Mapping<D, DeviceOwned>>,
    out: &mut Segments,
) -> Result {
    out.clear();
    if let Some(m) = m {
        out.reserve(m.segment_count(), GFP_KERNEL)?;
        for s in m.segments() {
            out.push_within_capacity((s.addr, s.len))
                .map_err(|_| ENOMEM)?;
        }
    }
    Ok(())
}
