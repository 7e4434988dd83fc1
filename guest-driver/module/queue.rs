// SPDX-License-Identifier: GPL-2.0

//! One queue pair: its rings and bounce pool, and its request path: preparing a request's
//! memory, posting it, waiting for and reaping its completion, resetting the queue, copying
//! results out, and batches.

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::Coherent,
    io::{io_write, Io},
    new_condvar, new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        atomic::{Acquire, Relaxed},
        barrier::{dma_mb, Write},
        CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq,
    },
    time::{msecs_to_jiffies, Instant},
    uaccess::{UserPtr, UserSlice},
};

use pin_init::pin_init_array_from_fn;

use crate::abi::{self, Completion, Descriptor, Opcode, QueueStats, Request, SgEntry, Status};
use crate::bugs::{self, DmaBug};
use crate::device::Device;
use crate::pool::{
    clear, copy_in_from_user, segments, split_to, wait_for_resources, Pool, Segments, Side,
};
use crate::pool::{FreeMap, BLOCK, BLOCKS, PAGE, PAGES_PER_BLOCK, POOL_PAGES};
use crate::regs;
use crate::ring::{program_queue, reset_queue, RingState, Rings, Slot, SlotState, Tag};
use crate::ring::{RING, SG_MAX, SLOTS};
use crate::streaming::DeviceDone;
use crate::zerocopy::{self, ZeroCopy};
/// A request's timeout when the caller gives none.
const DEFAULT_TIMEOUT_MS: u32 = 5000;

/// What a queue's request path needs of the binding it belongs to, beyond the [`Device`]
/// itself (`state.rs` implements it): the other queues, for a batch that spans them, and the
/// recovery from a fatal error, which resets the whole device.
pub(crate) trait Owner: core::ops::Deref<Target = Device> {
    /// Queue `index`, if the device has it.
    fn queue(&self, index: usize) -> Option<&Queue>;

    /// After a fatal error: resets the device unless another waiter already has, and returns
    /// only once no reset is in progress (the device is then done with every request's
    /// memory).
    fn recover_from_fatal(&self) -> Result;
}

/// One queue pair: its rings and bounce pool, each with the condition variable its waiters
/// sleep on.
#[pin_data]
pub(crate) struct Queue {
    pub(crate) index: u16,
    #[pin]
    pub(crate) ring: SpinLockIrq<RingState>,
    /// Signalled when ring space or a slot frees up: submitters waiting for room.
    #[pin]
    pub(crate) ring_cv: CondVar,
    /// `done_cv[i]` is signalled when slot `i`'s request completes or fails: its waiter alone
    /// wakes. (One condition variable for the whole queue woke every request in flight on each
    /// completion: at queue depth 32, 31 needless wake-ups and context switches per request.)
    #[pin]
    pub(crate) done_cv: [CondVar; SLOTS],
    #[pin]
    pub(crate) pool: Mutex<Pool>,
    #[pin]
    pub(crate) pool_cv: CondVar,
}

impl Queue {
    /// Allocates queue `index`'s rings and bounce pool: all of its DMA memory, at probe (the
    /// device is told none of it yet).
    pub(crate) fn new(pdev: &pci::Device<Core<'_>>, index: u16) -> Result<Pin<KBox<Queue>>> {
        let dev = pdev.as_ref();
        let rings = Rings {
            sq: Coherent::<Descriptor>::zeroed_slice(dev, RING, GFP_KERNEL)?,
            cq: Coherent::<Completion>::zeroed_slice(dev, RING, GFP_KERNEL)?,
            sg: Coherent::<SgEntry>::zeroed_slice(dev, SLOTS * 2 * SG_MAX, GFP_KERNEL)?,
        };
        let mut blocks = KVec::with_capacity(BLOCKS, GFP_KERNEL)?;
        for _ in 0..BLOCKS {
            blocks.push(
                Coherent::<u8>::zeroed_slice(dev, BLOCK, GFP_KERNEL)?,
                GFP_KERNEL,
            )?;
        }
        let ring = RingState {
            rings: Some(rings),
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            outstanding: 0,
            slots: [Slot {
                state: SlotState::Free,
                generation: 0,
                start: None,
            }; SLOTS],
            stats: QueueStats::default(),
        };
        let pool = Pool {
            blocks: Some(blocks),
            free: FreeMap([u64::MAX; POOL_PAGES / 64]),
        };
        KBox::pin_init(
            pin_init!(Queue {
                index,
                ring <- new_spinlock_irq!(ring),
                ring_cv <- new_condvar!(),
                done_cv <- pin_init_array_from_fn(|_| new_condvar!()),
                pool <- new_mutex!(pool),
                pool_cv <- new_condvar!(),
            }),
            GFP_KERNEL,
        )
    }

    /// Wakes every waiter of the queue: after requests were failed wholesale (a reset, a
    /// fatal error, teardown).
    pub(crate) fn wake_all(&self) {
        self.ring_cv.notify_all();
        for cv in self.done_cv.iter() {
            cv.notify_all();
        }
    }

    /// Counts an interrupt and reads the queue's completions, under one lock; wakes each
    /// completed request's waiter. Interrupt context.
    pub(crate) fn reap(&self, dev: &Device) {
        let q = self;
        let mut st = q.ring.lock();
        if dev.is_dead() {
            // halted: teardown fails every waiter; the completion head is not ours to move
            return;
        }
        st.stats.irqs += 1;
        let mut moved = false;
        // the slots whose requests completed: their waiters are woken, one each
        let mut done: u64 = 0;
        {
            let st = &mut *st;
            while let Ok(Some(c)) = st.pop() {
                moved = true;
                let tag = if DmaBug::active() == DmaBug::MatchByPosition {
                    // bug: the oldest request in flight, whatever the completion's tag says
                    st.slots
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| matches!(x.state, SlotState::InFlight))
                        .max_by_key(|(_, x)| x.start.map_or(0, |t| t.elapsed().as_nanos()))
                        .map(|(slot, x)| Tag {
                            slot,
                            generation: x.generation,
                        })
                } else {
                    Tag::decode(c.tag)
                };
                match tag.and_then(|t| Some((t, st.slots.get_mut(t.slot)?))) {
                    Some((t, slot))
                        if matches!(slot.state, SlotState::InFlight)
                            && slot.generation == t.generation =>
                    {
                        slot.state = SlotState::Done(c);
                        done |= 1 << t.slot;
                        st.outstanding = st.outstanding.saturating_sub(1);
                        st.stats.completed += 1;
                        if c.status != Status::Ok.raw() {
                            st.stats.errors += 1;
                        }
                    }
                    _ => st.stats.stray_completions += 1,
                }
            }
        }
        if moved {
            if let Some(bar) = dev.bar.try_access() {
                if let Ok(at) = regs::queue(q.index as usize) {
                    let _ = bar.try_write(at, regs::Q_CQ_HEAD::zeroed().with_index(st.cq_head));
                }
            }
            drop(st);
            for (i, cv) in q.done_cv.iter().enumerate() {
                if done & (1 << i) != 0 {
                    cv.notify_one();
                }
            }
            // ring space freed up
            q.ring_cv.notify_all();
        }
    }

    /// Resets the queue in the device and fails every request in flight with `err`.
    /// Called with the ring lock held; the device has stopped all DMA for the queue on return.
    pub(crate) fn reset_locked(&self, dev: &Device, st: &mut RingState, err: Error) {
        let qi = self.index as usize;
        // Halted by teardown (which waits for this lock before its reset) or gone: fail the
        // requests, leave the device alone.
        let bar = if dev.is_dead() {
            None
        } else {
            dev.bar.try_access()
        };
        if let Some(bar) = bar {
            let _ = reset_queue(&bar, qi);
            // A read is not posted: when it returns, the reset write has been handled.
            match bar.try_read(regs::DEV_STATUS) {
                // all ones: the device is gone
                Ok(st) if st.into_raw() == u32::MAX => dev.mark_gone(),
                Err(_) => dev.mark_gone(),
                // halted by a fatal error: only a device reset helps (done without this lock)
                Ok(st) if st.fatal() => dev.needs_reset.store(true, Relaxed),
                Ok(_) => {}
            }
        }
        for slot in st.slots.iter_mut() {
            if matches!(slot.state, SlotState::InFlight) {
                slot.state = SlotState::Failed(err);
            }
        }
        st.rewind();
        st.stats.resets += 1;
        if let Some(rings) = st.rings.as_ref() {
            if !dev.is_dead() {
                if let Some(bar) = dev.bar.try_access() {
                    let _ = program_queue(&bar, qi, rings);
                }
            }
        }
    }
}

/// Records the request in `slot` as handed to the device: from here its completion is
/// matched to it.
fn record_in_flight(st: &mut RingState, slot: usize, generation: u16) {
    st.outstanding += 1;
    st.slots[slot] = Slot {
        state: SlotState::InFlight,
        generation,
        start: Some(Instant::now()),
    };
    st.stats.submitted += 1;
}

/// Queue `qi`'s count of completed descriptors (`Q_DONE`), 0 if it cannot be read.
fn read_done(dev: &impl Owner, qi: usize) -> u32 {
    dev.bar
        .try_access()
        .and_then(|bar| bar.try_read(regs::queue(qi).ok()?).ok())
        .map_or(0, |r: regs::Q_DONE| r.into_raw())
}

/// The errno a device completion status becomes (0 for success).
pub(crate) fn status_to_result(status: u32) -> Result {
    let status = u16::try_from(status).ok().and_then(Status::from_raw);
    match status {
        Some(Status::Ok) => Ok(()),
        Some(Status::InternalRange | Status::AddrOverflow) => Err(ERANGE),
        Some(
            Status::BadOpcode
            | Status::BadLength
            | Status::TooManySegments
            | Status::Overlap
            | Status::BadDescriptor,
        ) => Err(EINVAL),
        // DMA_FAULT, DEVICE_ERROR and anything the device should not have said
        Some(Status::DmaFault | Status::AddrWidth | Status::DeviceError) | None => Err(EIO),
    }
}

/// How [`Queue::post`] hands a descriptor to the device.
#[derive(Clone, Copy)]
pub(crate) enum Handover {
    /// Ring the doorbell now; wait for a free slot if there is none (a single request).
    Now,
    /// Leave the doorbell to the batch ([`Queue::ring_doorbell`]). With `may_wait` false, fail
    /// with `EAGAIN` instead of waiting for a free slot: the batch's own posted requests may
    /// hold the slots, and they are not rung yet.
    Batched { may_wait: bool },
}

/// Where a request's guest memory is while the device works on it.
enum Buffers<'a> {
    /// Copied into pages of the queue's bounce pool (and out again, for data the device writes).
    Bounce { src: Side, dst: Side },
    /// The caller's own pages, pinned and mapped.
    ZeroCopy(ZeroCopy<'a>),
    /// Memory the caller of [`Queue::run_on`] mapped and gives back itself.
    Lent,
}

/// A request made ready for the device: its memory mapped or its bounce pages taken (and
/// filled, for data the device reads), its DMA segments built.
pub(crate) struct Prepared<'a> {
    buffers: Buffers<'a>,
    src_segs: Segments,
    dst_segs: Segments,
    timeout_ms: u32,
}

impl Prepared<'_> {
    /// How long its request may take.
    pub(crate) fn timeout_ms(&self) -> u32 {
        self.timeout_ms
    }

    /// The first bounce page of each side (the debug-only `dma_bug` variants touch them).
    fn first_pages(&self) -> (Option<u16>, Option<u16>) {
        match &self.buffers {
            Buffers::Bounce { src, dst } => {
                (src.pages.first().copied(), dst.pages.first().copied())
            }
            Buffers::ZeroCopy(_) | Buffers::Lent => (None, None),
        }
    }
}

impl Queue {
    /// Runs one request and waits for it: prepare, post (with its doorbell), wait, finish.
    pub(crate) fn submit(&self, dev: &impl Owner, req: &mut Request) -> Result {
        let p = self.prepare(dev, req, true)?;
        let (result, done) = match self.post(dev, req, &p, Handover::Now) {
            Ok(slot) => self.wait(dev, slot, p.timeout_ms),
            // SAFETY: the request was not posted, the device never saw its memory.
            Err(e) => (Err(e), unsafe { DeviceDone::new() }),
        };
        self.finish(req, p, result, &done)
    }

    /// Runs one device operation on memory the caller mapped itself (`selftest.rs`): posts it
    /// with these segments and waits. The caller keeps its memory and gives it back with the
    /// returned evidence.
    pub(crate) fn run_on(
        &self,
        dev: &impl Owner,
        opcode: Opcode,
        len: u32,
        src_segs: Segments,
        dst_segs: Segments,
    ) -> (Result<Completion>, DeviceDone) {
        let mut req = Request {
            opcode: opcode.raw(),
            queue: self.index as u8,
            len,
            ..Default::default()
        };
        let p = Prepared {
            buffers: Buffers::Lent,
            src_segs,
            dst_segs,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        };
        let posted = if p.src_segs.len() > SG_MAX || p.dst_segs.len() > SG_MAX {
            Err(EINVAL)
        } else {
            self.post(dev, &mut req, &p, Handover::Now)
        };
        match posted {
            Ok(slot) => {
                let (result, done) = self.wait(dev, slot, p.timeout_ms);
                (result.map(|(c, _)| c), done)
            }
            // SAFETY: not posted: the device never saw the memory.
            Err(e) => (Err(e), unsafe { DeviceDone::new() }),
        }
    }

    /// Checks `req` and makes its memory ready for the device: mapped where it is when the
    /// mode and the memory allow (`zerocopy.rs`), else through bounce pages with the user's data
    /// copied in. With `may_wait` false, fails with `EAGAIN` instead of waiting for bounce pages
    /// (a batch first waits for its own requests, which may hold them).
    pub(crate) fn prepare<'a>(
        &self,
        dev: &'a impl Owner,
        req: &mut Request,
        may_wait: bool,
    ) -> Result<Prepared<'a>> {
        let op = req.opcode;
        let len = req.len as usize;
        let opcode = Opcode::from_raw(op).ok_or(EINVAL)?;
        let (src_guest, dst_guest) = (opcode.src_in_guest(), opcode.dst_in_guest());
        if len == 0 || req.len > abi::MAX_REQUEST || u32::from(req.nseg) > abi::MAX_SG_SEGMENTS {
            return Err(EINVAL);
        }
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            req.timeout_ms
        };
        if dev.is_dead() {
            return Err(ENODEV);
        }
        let want = usize::from(req.nseg).max(1);
        req.path = abi::PATH_NONE;
        req.pinned_pages = 0;
        if (src_guest || dst_guest) && zerocopy::wanted(req) {
            if let Some(mut zc) = ZeroCopy::try_map(&dev.map_gate, dev.bar.device(), req) {
                let segs = zc.segments().and_then(|(mut s, mut d)| {
                    split_to(&mut s, want)?;
                    split_to(&mut d, want)?;
                    Ok((s, d))
                });
                let (src_segs, dst_segs) = match segs {
                    Ok(v) if v.0.len() <= SG_MAX && v.1.len() <= SG_MAX => v,
                    other => {
                        // SAFETY: not posted: the device never saw the mappings.
                        zc.release(&unsafe { DeviceDone::new() });
                        return Err(other.err().unwrap_or(EINVAL));
                    }
                };
                req.segments = src_segs.len().max(dst_segs.len()) as u32;
                req.path = abi::PATH_ZERO_COPY;
                req.pinned_pages = zc.pinned_pages();
                dev.zero_copy.fetch_add(1, Relaxed);
                let buffers = if DmaBug::active() == DmaBug::UnmapBeforeSubmit {
                    // bug: the mapping is undone before the device is told about it, and its
                    // bus addresses go into the descriptor all the same
                    // SAFETY: (what the bug breaks) the device has not seen the mappings yet,
                    // but it will be given their addresses.
                    zc.release(&unsafe { DeviceDone::new() });
                    Buffers::Lent
                } else {
                    Buffers::ZeroCopy(zc)
                };
                return Ok(Prepared {
                    buffers,
                    src_segs,
                    dst_segs,
                    timeout_ms,
                });
            }
            dev.zero_copy_fallbacks.fetch_add(1, Relaxed);
        }
        let npages = len.div_ceil(PAGE);
        let need = npages * (usize::from(src_guest) + usize::from(dst_guest));
        let (mut src, mut dst) = (Side { pages: KVec::new() }, Side { pages: KVec::new() });
        let (src_segs, dst_segs) = {
            let mut guard = self.pool.lock();
            // Waiters are woken one at a time (`release`), and each passes the wake-up on when
            // it leaves pages free or gives up: waking them all at every release made 31
            // threads at queue depth 32 wake, find too little, and sleep again.
            while guard.blocks.is_some() && guard.free.count() < need {
                if !may_wait {
                    return Err(EAGAIN);
                }
                if let Err(e) = wait_for_resources(&self.pool_cv, &mut guard, timeout_ms) {
                    self.pool_cv.notify_one();
                    return Err(e);
                }
            }
            let Pool { blocks, free } = &mut *guard;
            let blocks = blocks.as_ref().ok_or(ENODEV)?;
            let mut build = || -> Result<(Segments, Segments)> {
                if src_guest {
                    free.take(npages, &mut src.pages)?;
                    // Straight from the user into our pages, under the pool lock like the copy
                    // out (`copy_out`): a user page fault here delays this queue's other
                    // submitters, never the device or other queues.
                    copy_in_from_user(
                        blocks,
                        &src.pages,
                        UserPtr::from_addr(req.src as usize),
                        len,
                    )?;
                }
                if dst_guest {
                    free.take(npages, &mut dst.pages)?;
                    if DmaBug::active() != DmaBug::StaleBytes {
                        // no caller ever gets bytes another request left behind (`clear`)
                        clear(blocks, &dst.pages, len)?;
                    }
                }
                let s = if src_guest {
                    segments(blocks, &src.pages, len, want)?
                } else {
                    KVec::new()
                };
                let d = if dst_guest {
                    segments(blocks, &dst.pages, len, want)?
                } else {
                    KVec::new()
                };
                Ok((s, d))
            };
            let built = build();
            if free.count() > 0 {
                self.pool_cv.notify_one();
            }
            match built {
                Ok(v) if DmaBug::active() == DmaBug::ReuseBuffer => {
                    // bug: the pages look free while the device works on them
                    free.give_back(&src.pages);
                    free.give_back(&dst.pages);
                    v
                }
                Ok(v) => v,
                Err(e) => {
                    free.give_back(&src.pages);
                    free.give_back(&dst.pages);
                    return Err(e);
                }
            }
        };
        if src_segs.len() > SG_MAX || dst_segs.len() > SG_MAX {
            self.release(&src, &dst);
            return Err(EINVAL);
        }
        req.segments = src_segs.len().max(dst_segs.len()) as u32;
        if src_guest || dst_guest {
            req.path = abi::PATH_BOUNCE;
            dev.bounced.fetch_add(1, Relaxed);
        }
        Ok(Prepared {
            buffers: Buffers::Bounce { src, dst },
            src_segs,
            dst_segs,
            timeout_ms,
        })
    }

    /// Passes the device's answer (or the error) back in `req`, copies its output to the user
    /// (bounce) and gives the memory back: bounce pages to the pool, or the caller's pages
    /// unmapped and unpinned. `done` says the device no longer touches the memory.
    pub(crate) fn finish(
        &self,
        req: &mut Request,
        p: Prepared<'_>,
        result: Result<(Completion, u64)>,
        done: &DeviceDone,
    ) -> Result {
        let dst_guest = Opcode::from_raw(req.opcode).is_some_and(|o| o.dst_in_guest());
        let out = match result {
            Ok((c, ns)) => {
                req.latency_ns = ns;
                req.status = u32::from(c.status);
                req.bytes = c.bytes;
                req.result = c.result;
                match &p.buffers {
                    // Only what the device says it wrote: past a short count the pool pages
                    // still hold an earlier request's bytes (another caller's, perhaps), and
                    // zero-copy leaves the caller's own bytes there too.
                    Buffers::Bounce { dst, .. }
                        if c.status == Status::Ok.raw() && dst_guest && req.dst != 0 =>
                    {
                        self.copy_out(req, dst, (c.bytes as usize).min(req.len as usize))
                    }
                    _ => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        let failed = out.is_err() || req.status != u32::from(Status::Ok.raw());
        let leak = failed && DmaBug::active() == DmaBug::LeakOnError;
        let Prepared {
            buffers,
            src_segs,
            dst_segs,
            ..
        } = p;
        match buffers {
            // bug: the error path forgets to give the request's pages back
            Buffers::Bounce { .. } if leak => {}
            Buffers::Bounce { src, dst } => self.release(&src, &dst),
            // bug: the error path forgets the unmap (the mapping stays, the device unbinds)
            Buffers::ZeroCopy(zc) if leak => zc.leak(),
            Buffers::ZeroCopy(mut zc) => {
                // the segment lists go back with the rest of the request's storage
                zc.keep_segments(src_segs, dst_segs);
                zc.release(done)
            }
            Buffers::Lent => {}
        }
        out
    }

    /// Copies the device's output from the pool to the user's destination buffer.
    pub(crate) fn copy_out(&self, req: &Request, dst: &Side, len: usize) -> Result {
        let pool = self.pool.lock();
        let blocks = pool.blocks.as_ref().ok_or(ENODEV)?;
        let mut w = UserSlice::new(UserPtr::from_addr(req.dst as usize), len).writer();
        let mut left = len;
        for &p in dst.pages.iter() {
            let n = left.min(PAGE);
            let p = p as usize;
            w.write_dma(
                &blocks[p / PAGES_PER_BLOCK],
                (p % PAGES_PER_BLOCK) * PAGE,
                n,
            )?;
            left -= n;
        }
        Ok(())
    }

    pub(crate) fn release(&self, src: &Side, dst: &Side) {
        let mut pool = self.pool.lock();
        pool.free.give_back(&src.pages);
        pool.free.give_back(&dst.pages);
        drop(pool);
        self.pool_cv.notify_one();
    }

    /// Writes the descriptor (and SG tables) into a free slot and hands it over as `handover`
    /// says. Returns the slot.
    pub(crate) fn post(
        &self,
        dev: &impl Owner,
        req: &mut Request,
        p: &Prepared<'_>,
        handover: Handover,
    ) -> Result<usize> {
        let (src, dst, timeout_ms) = (&p.src_segs[..], &p.dst_segs[..], p.timeout_ms);
        let bug = DmaBug::active();
        let qi = self.index as usize;
        // `submit` checked it; an unknown opcode never reaches the ring
        let opcode = Opcode::from_raw(req.opcode).ok_or(EINVAL)?;
        let mut st = self.ring.lock();
        // wait for a free slot and ring space
        let slot = loop {
            if dev.is_dead() || st.rings.is_none() {
                return Err(ENODEV);
            }
            if st.outstanding < SLOTS as u32 {
                if let Some(i) = st
                    .slots
                    .iter()
                    .position(|s| matches!(s.state, SlotState::Free))
                {
                    break i;
                }
            }
            if let Handover::Batched { may_wait: false } = handover {
                return Err(EAGAIN);
            }
            wait_for_resources(&self.ring_cv, &mut st, timeout_ms)?;
        };
        let generation = st.slots[slot].generation.wrapping_add(1);
        let tag = Tag { slot, generation }.encode();
        req.tag = tag;
        // bug: the request is recorded in flight only after the doorbell
        let late_record = bug == DmaBug::IrqsOffAsLock && matches!(handover, Handover::Now);
        let mut done_before = 0;
        {
            let st = &mut *st;
            let rings = st.rings.as_ref().ok_or(ENODEV)?;
            let mut d = Descriptor {
                opcode: req.opcode,
                tag,
                len: req.len,
                ..Default::default()
            };
            let mut sg_side = |segs: &[(u64, u32)],
                               side: usize,
                               flag: u8,
                               nseg: &mut u16,
                               addr: &mut u64|
             -> Result {
                if segs.len() == 1 {
                    *addr = segs[0].0;
                    return Ok(());
                }
                let base = (slot * 2 + side) * SG_MAX;
                for (k, &(a, l)) in segs.iter().enumerate() {
                    io_write!(rings.sg, [try: base + k].addr, a);
                    io_write!(rings.sg, [try: base + k].len, l);
                    io_write!(rings.sg, [try: base + k].rsvd, 0);
                }
                d.flags |= flag;
                *nseg = segs.len() as u16;
                *addr = rings.sg.dma_address() + (base * abi::SG_ENTRY_SIZE) as u64;
                Ok(())
            };
            let (mut s_n, mut d_n, mut s_a, mut d_a) = (0, 0, 0, 0);
            if !src.is_empty() {
                sg_side(src, 0, abi::DESC_SRC_SG, &mut s_n, &mut s_a)?;
            }
            if !dst.is_empty() {
                sg_side(dst, 1, abi::DESC_DST_SG, &mut d_n, &mut d_a)?;
            }
            // the operands that are not guest memory: internal memory offsets, the pattern
            if opcode.has_dst() && !opcode.dst_in_guest() {
                d_a = req.dev_offset;
            }
            if opcode.has_src() && !opcode.src_in_guest() {
                s_a = req.dev_offset;
            }
            if opcode == Opcode::Fill {
                d.pattern = req.pattern;
            }
            if bug == DmaBug::TruncatedAddress && opcode.dst_in_guest() {
                d_a = u64::from(d_a as u32);
            }
            d.src = s_a;
            d.dst = d_a;
            d.src_nseg = s_n;
            d.dst_nseg = d_n;
            let i = st.push(&d)?;
            if late_record {
                done_before = read_done(dev, qi);
            } else {
                record_in_flight(st, slot, generation);
            }
            if let Handover::Now = handover {
                // Descriptor and SG tables must be visible to the device before the doorbell.
                dma_mb(Write);
                let bar = dev.bar.try_access().ok_or(ENODEV)?;
                bar.try_write(
                    regs::queue(qi)?,
                    regs::Q_SQ_TAIL::zeroed().with_index(st.sq_tail),
                )?;
            }
            if let (DmaBug::RewriteDescriptor, Some(rings)) = (bug, st.rings.as_ref()) {
                bugs::rewrite_descriptor(&rings.sq, i, tag ^ 0x8000);
            }
        }
        if late_record {
            // bug: "interrupts are off, so the completion cannot come before I record the
            // request": true on one CPU, where the interrupt waits for the enable; on two, the
            // handler runs on the other CPU while this one polls, finds no request in flight
            // for the tag and drops the completion as stray.
            let irqs = kernel::interrupt::local_interrupt_disable();
            drop(st);
            bugs::poll_for_a_completion(|| read_done(dev, qi), done_before);
            let mut st = self.ring.lock_with(&irqs);
            record_in_flight(&mut st, slot, generation);
            drop(st);
            drop(irqs);
            return Ok(slot);
        }
        drop(st);
        if matches!(bug, DmaBug::WriteAfterPost | DmaBug::ReadBeforeCompletion) {
            {
                let pool = self.pool.lock();
                if let Some(blocks) = pool.blocks.as_ref() {
                    match (bug, p.first_pages()) {
                        (DmaBug::WriteAfterPost, (Some(p), _)) => bugs::write_after_post(blocks, p),
                        (DmaBug::ReadBeforeCompletion, (_, Some(p))) => {
                            let _ = bugs::read_before_completion(blocks, p);
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(slot)
    }

    /// Rings the queue's doorbell with the current submission tail: every descriptor posted so
    /// far goes to the device.
    pub(crate) fn ring_doorbell(&self, dev: &impl Owner) -> Result {
        let st = self.ring.lock();
        if dev.is_dead() {
            return Err(ENODEV);
        }
        // Descriptors and SG tables must be visible to the device before the doorbell.
        dma_mb(Write);
        let bar = dev.bar.try_access().ok_or(ENODEV)?;
        bar.try_write(
            regs::queue(self.index as usize)?,
            regs::Q_SQ_TAIL::zeroed().with_index(st.sq_tail),
        )
    }

    /// Waits for the completion of the request in `slot`; after `timeout_ms`, resets the queue.
    /// Returns with the device done with the request's memory, whatever the outcome: its
    /// completion was read, or its queue (or the device) was reset or halted.
    pub(crate) fn wait(
        &self,
        dev: &impl Owner,
        slot: usize,
        timeout_ms: u32,
    ) -> (Result<(Completion, u64)>, DeviceDone) {
        let bug = DmaBug::active();
        let mut st = self.ring.lock();
        // wait for the completion
        let mut timed_out = false;
        // this call reset the queue, failing the other requests in flight: wake them
        let mut reset = false;
        let result = loop {
            match st.slots[slot].state {
                SlotState::Done(c) => break Ok(c),
                SlotState::Failed(e) => break Err(e),
                SlotState::Free => break Err(EIO),
                SlotState::InFlight if timed_out && bug == DmaBug::FreeOnTimeout => {
                    // bug: give up on the request (and its pages) without stopping the device
                    st.stats.timeouts += 1;
                    st.slots[slot].state = SlotState::Failed(ETIMEDOUT);
                }
                SlotState::InFlight if timed_out => {
                    // No completion in time: reset the queue, failing everything in flight.
                    st.stats.timeouts += 1;
                    self.reset_locked(dev, &mut st, ETIMEDOUT);
                    reset = true;
                }
                SlotState::InFlight => {
                    // bug: "no timeout" is 49 days
                    let wait_ms = if bug == DmaBug::NoTimeout {
                        u32::MAX
                    } else {
                        timeout_ms
                    };
                    let res = self.done_cv[slot]
                        .wait_interruptible_timeout(&mut st, msecs_to_jiffies(wait_ms));
                    match res {
                        CondVarTimeoutResult::Timeout => timed_out = true,
                        // The device may still be writing our pages: only a queue reset makes
                        // it safe to give them back, so a signal costs the queue a reset.
                        CondVarTimeoutResult::Signal { .. } => {
                            self.reset_locked(dev, &mut st, EINTR);
                            reset = true;
                        }
                        CondVarTimeoutResult::Woken { .. } => {}
                    }
                }
            }
        };
        let start = st.slots[slot].start.take();
        st.slots[slot].state = SlotState::Free;
        if let Ok(c) = &result {
            if c.status == Status::Ok.raw() {
                st.stats.bytes += u64::from(c.bytes);
            }
        }
        drop(st);
        if reset {
            self.wake_all();
        } else {
            // our slot is free again
            self.ring_cv.notify_all();
        }
        let failed_by_fatal = matches!(&result, Err(e) if e.to_errno() == EIO.to_errno());
        if failed_by_fatal || dev.needs_reset.load(Acquire) {
            // A fatal error halted every queue: reset the device and reprogram the queues (or
            // wait for whoever is doing it) before the buffers go back to the pool.
            let _ = dev.recover_from_fatal();
        }
        let ns = start.map_or(0, |t| t.elapsed().as_nanos());
        // SAFETY: the loop above left only when the slot was done (its completion read: the
        // device writes a request's completion after its last access to the request's memory,
        // datasheet "Ordering"), or failed by a queue reset (done above or by another waiter),
        // a fatal error (the device halted every queue; `Owner::recover_from_fatal` above) or
        // teardown (the device reset and read back). The one exception is the deliberate
        // `dma_bug` FreeOnTimeout, which breaks this promise on purpose for the oracle tests.
        let done = unsafe { DeviceDone::new() };
        (result.map(|c| (c, u64::try_from(ns).unwrap_or(0))), done)
    }
}
