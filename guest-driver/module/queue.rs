// SPDX-License-Identifier: GPL-2.0

//! The request path of one queue pair: submitting a request, waiting for its completion,
//! copying results out.

use kernel::{
    io::{io_write, Io},
    prelude::*,
    sync::{
        atomic::{Acquire, Relaxed},
        barrier::{dma_mb, Write},
        CondVarTimeoutResult,
    },
    time::{msecs_to_jiffies, Instant},
    uaccess::{UserPtr, UserSlice},
};

use crate::abi::{self, Completion, Descriptor, Opcode, Request, Status};
use crate::bugs::{self, DmaBug};
use crate::pool::{
    copy_in_from_user, segments, split_to, wait_for_resources, Pool, Segments, Side,
};
use crate::pool::{PAGE, PAGES_PER_BLOCK};
use crate::regs;
use crate::ring::{Slot, SlotState, Tag};
use crate::ring::{SG_MAX, SLOTS};
use crate::state::{reset_after_fatal, status_to_result, DevState, Queue};
use crate::streaming::DeviceDone;
use crate::zerocopy::{self, ZeroCopy};
/// A request's timeout when the caller gives none.
const DEFAULT_TIMEOUT_MS: u32 = 5000;

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
    pub(crate) fn submit(&self, dev: &DevState, req: &mut Request) -> Result {
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
        dev: &DevState,
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
        dev: &'a DevState,
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
            if let Some(zc) = ZeroCopy::try_map(&dev.map_gate, dev.bar.device(), req) {
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
                return Ok(Prepared {
                    buffers: Buffers::ZeroCopy(zc),
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
        match p.buffers {
            // bug: the error path forgets to give the request's pages back
            Buffers::Bounce { .. } if leak => {}
            Buffers::Bounce { src, dst } => self.release(&src, &dst),
            // bug: the error path forgets the unmap (the mapping stays, the device unbinds)
            Buffers::ZeroCopy(zc) if leak => zc.leak(),
            Buffers::ZeroCopy(zc) => zc.release(done),
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
        dev: &DevState,
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
            d.src = s_a;
            d.dst = d_a;
            d.src_nseg = s_n;
            d.dst_nseg = d_n;
            let i = st.push(&d)?;
            st.outstanding += 1;
            st.slots[slot] = Slot {
                state: SlotState::InFlight,
                generation,
                start: Some(Instant::now()),
            };
            st.stats.submitted += 1;
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
    pub(crate) fn ring_doorbell(&self, dev: &DevState) -> Result {
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
        dev: &DevState,
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
                    dev.reset_queue_locked(self, &mut st, ETIMEDOUT);
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
                            dev.reset_queue_locked(self, &mut st, EINTR);
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
            let _ = reset_after_fatal(dev);
        }
        let ns = start.map_or(0, |t| t.elapsed().as_nanos());
        // SAFETY: the loop above left only when the slot was done (its completion read: the
        // device writes a request's completion after its last access to the request's memory,
        // datasheet "Ordering"), or failed by a queue reset (done above or by another waiter),
        // a fatal error (the device halted every queue; `reset_after_fatal` above) or teardown
        // (the device reset and read back). The one exception is the deliberate `dma_bug`
        // FreeOnTimeout, which breaks this promise on purpose for the oracle tests.
        let done = unsafe { DeviceDone::new() };
        (result.map(|c| (c, u64::try_from(ns).unwrap_or(0))), done)
    }
}

/// Runs a batch of requests (`IOC_SUBMIT_BATCH`) with as many in flight at once as the rings
/// and pools allow: the requests are prepared and posted in order, each queue's doorbell is
/// rung once per wave, then the wave's requests are waited for and finished in order. A request
/// that would have to wait for bounce pages or a ring slot ends the wave first: what it waits
/// for may be held by its own batch's earlier requests (or, for slots, by another batch's that
/// it has not rung either). Each request's outcome goes in its `error` field;
/// returns how many succeeded.
pub(crate) fn submit_batch(dev: &DevState, reqs: &mut [Request]) -> Result<u32> {
    // (request index, slot, prepared): reserved up front, so a push never allocates
    let mut wave = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
    let mut done = 0;
    for i in 0..reqs.len() {
        let Some(q) = dev.queues.get(usize::from(reqs[i].queue)) else {
            reqs[i].error = errno(EINVAL);
            continue;
        };
        let prepared = loop {
            match q.prepare(dev, &mut reqs[i], wave.is_empty()) {
                Err(e) if e.to_errno() == EAGAIN.to_errno() && !wave.is_empty() => {
                    done += drain(dev, reqs, &mut wave);
                }
                other => break other,
            }
        };
        let p = match prepared {
            Err(e) => {
                reqs[i].error = errno(e);
                continue;
            }
            Ok(p) => p,
        };
        // likewise for a ring slot: several batches on one queue must not hold every slot
        // with requests none of them has rung
        let posted = loop {
            let may_wait = wave.is_empty();
            match q.post(dev, &mut reqs[i], &p, Handover::Batched { may_wait }) {
                Err(e) if e.to_errno() == EAGAIN.to_errno() && !may_wait => {
                    done += drain(dev, reqs, &mut wave);
                }
                other => break other,
            }
        };
        match posted {
            Ok(slot) => wave.push((i, slot, p), GFP_KERNEL)?,
            Err(e) => {
                // SAFETY: not posted: the device never saw the request's memory.
                let done = unsafe { DeviceDone::new() };
                let r = q.finish(&mut reqs[i], p, Err(e), &done);
                reqs[i].error = outcome(&reqs[i], r);
            }
        }
    }
    done += drain(dev, reqs, &mut wave);
    Ok(done)
}

/// Rings the doorbell of every queue the wave posted to, then waits for and finishes its
/// requests in order; returns how many succeeded.
fn drain<'a>(
    dev: &'a DevState,
    reqs: &mut [Request],
    wave: &mut KVec<(usize, usize, Prepared<'a>)>,
) -> u32 {
    let mut rung = 0u32;
    for &(i, _, _) in wave.iter() {
        let q = usize::from(reqs[i].queue);
        if rung & (1 << q) == 0 {
            rung |= 1 << q;
            // A device that is gone fails the waits below (teardown releases them).
            let _ = dev.queues[q].ring_doorbell(dev);
        }
    }
    let mut ok = 0;
    for (i, slot, p) in wave.drain_all() {
        let q = &dev.queues[usize::from(reqs[i].queue)];
        let (result, done) = q.wait(dev, slot, p.timeout_ms);
        let r = q.finish(&mut reqs[i], p, result, &done);
        reqs[i].error = outcome(&reqs[i], r);
        ok += u32::from(reqs[i].error == 0);
    }
    ok
}

/// An errno as `Request::error` (positive).
fn errno(e: Error) -> u32 {
    e.to_errno().unsigned_abs()
}

/// A finished request's outcome as `Request::error`: its failure's errno, or its status's
/// (as `IOC_SUBMIT` would return it), 0 when it succeeded.
fn outcome(req: &Request, r: Result) -> u32 {
    let r = r.and_then(|()| match DmaBug::active() {
        DmaBug::IgnoreStatus => Ok(()),
        _ => status_to_result(req.status),
    });
    r.err().map_or(0, errno)
}
