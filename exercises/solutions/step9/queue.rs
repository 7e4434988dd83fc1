// SPDX-License-Identifier: GPL-2.0

//! One queue pair: its rings (shared with its interrupt handler), its data buffers, and the
//! request path: post, ring the doorbell, sleep until the handler says the completion is in.

use kernel::{
    dma::Coherent,
    io::io_read,
    prelude::*,
    sync::{atomic::Acquire, CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq},
    time::msecs_to_jiffies,
    uaccess::{UserPtr, UserSlice},
};

use crate::abi::{self, Completion, Descriptor, Opcode, Request, SgEntry, Status};
use crate::streaming::DeviceDone;
use crate::ring::Rings;
use crate::sg::{build_list, Blocks, SG_MAX};
use crate::{with_bar, DevState, DEFAULT_TIMEOUT_MS};

/// A queue's data memory: a source and a destination side, and a scatter-gather table with
/// room for a list per side.
pub(crate) struct Buffers {
    pub(crate) src: Blocks,
    pub(crate) dst: Blocks,
    pub(crate) sg: Coherent<[SgEntry]>,
}

/// What the request path and the interrupt handler share, under the queue's spinlock.
pub(crate) struct RingState {
    /// `None` once unbind has freed them.
    pub(crate) rings: Option<Rings>,
    /// The tag of the request in flight, if one is.
    pub(crate) waiting: Option<u32>,
    /// Its completion, once the handler found it.
    pub(crate) done: Option<Completion>,
    /// Or why it failed without one (a fatal device error, a device reset).
    pub(crate) failed: Option<Error>,
}

/// One queue pair.
#[pin_data]
pub(crate) struct Queue {
    pub(crate) index: usize,
    /// The data buffers; the lock makes requests one at a time per queue.
    #[pin]
    pub(crate) bufs: Mutex<Option<Buffers>>,
    /// Taken by the interrupt handler too, so interrupts are off while it is held.
    #[pin]
    pub(crate) ring: SpinLockIrq<RingState>,
    /// Signalled by the handler when `done` is set.
    #[pin]
    pub(crate) done_cv: CondVar,
    /// The next tag.
    pub(crate) next_tag: kernel::sync::atomic::Atomic<u32>,
}

impl Queue {
    /// Called by the queue's interrupt handler.
    pub(crate) fn reap(&self, dev: &DevState) {
        let mut st = self.ring.lock();
        self.take_completions(&mut st, dev);
    }

    /// With the ring lock held: takes every new completion off the ring, hands the awaited one
    /// to its waiter and gives the slots back to the device.
    fn take_completions(&self, st: &mut RingState, dev: &DevState) {
        let Some(rings) = st.rings.as_mut() else {
            return;
        };
        let mut took = false;
        while let Ok(Some(c)) = rings.take() {
            took = true;
            // Any other tag is stale (a request that timed out) or a duplicate: dropped.
            if st.waiting == Some(c.tag) && st.done.is_none() {
                st.done = Some(c);
            }
        }
        if took {
            let _ = with_bar(dev, |bar| rings.return_completions(bar, self.index));
            self.done_cv.notify_all();
        }
    }

    /// Runs one request on this queue.
    pub(crate) fn transfer(&self, dev: &DevState, req: &mut Request) -> Result {
        let op = Opcode::from_raw(req.opcode).ok_or(EINVAL)?;
        let len = req.len as usize;
        if len == 0 || req.len > abi::MAX_REQUEST || usize::from(req.nseg) > SG_MAX {
            return Err(EINVAL);
        }
        let timeout_ms = match req.timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            ms => ms,
        };
        let bufs = self.bufs.lock();
        let Some(bufs) = &*bufs else {
            return Err(ENODEV);
        };
        if dev.dead.load(Acquire) {
            // unbind has begun: it waits for this lock, then stops the device
            return Err(ENODEV);
        }
        if op.src_in_guest() {
            let mut staged = KVVec::new();
            staged.resize(len, 0, GFP_KERNEL)?;
            UserSlice::new(UserPtr::from_addr(req.src as usize), len)
                .reader()
                .read_slice(&mut staged)?;
            bufs.src.fill(&staged)?;
        }
        if op.dst_in_guest() {
            // What the device writes is what the caller gets back: clear it first, so that a
            // device that moves less than it reports never hands this caller the bytes an
            // earlier request (perhaps another process's) left in the buffer.
            bufs.dst.fill(&KVVec::from_elem(0u8, len, GFP_KERNEL)?)?;
        }
        // Each guest-memory side: one segment is a plain address, more are a list in the
        // queue's SG table (source lists from entry 0, destination lists from entry SG_MAX).
        let want = usize::from(req.nseg).max(1);
        let mut flags = 0;
        let mut side = |blocks: &Blocks, at: usize, sg_flag: u8| -> Result<(u64, u16)> {
            let n = build_list(blocks, len, want, &bufs.sg, at)?;
            if n == 1 {
                return Ok((io_read!(bufs.sg, [try: at].addr), 0));
            }
            flags |= sg_flag;
            let table = bufs.sg.dma_address() + (at * core::mem::size_of::<SgEntry>()) as u64;
            Ok((table, n as u16))
        };
        let (src, src_nseg) = match (op.src_in_guest(), op.has_src()) {
            (true, _) => side(&bufs.src, 0, abi::DESC_SRC_SG)?,
            (false, true) => (req.dev_offset, 0),
            (false, false) => (0, 0),
        };
        let (dst, dst_nseg) = match (op.dst_in_guest(), op.has_dst()) {
            (true, _) => side(&bufs.dst, SG_MAX, abi::DESC_DST_SG)?,
            (false, true) => (req.dev_offset, 0),
            (false, false) => (0, 0),
        };
        let d = Descriptor {
            opcode: op.raw(),
            flags,
            src_nseg,
            dst_nseg,
            len: req.len,
            src,
            dst,
            pattern: if op == Opcode::Fill { req.pattern } else { 0 },
            ..Descriptor::default()
        };
        let c = self.post_and_wait(dev, d, timeout_ms, &mut req.tag)?;
        req.tag = c.tag;
        req.status = u32::from(c.status);
        req.result = c.result;
        req.bytes = c.bytes;
        req.segments = u32::from(src_nseg.max(dst_nseg).max(1));
        if op.dst_in_guest() && c.status == Status::Ok.raw() {
            let mut w = UserSlice::new(UserPtr::from_addr(req.dst as usize), len).writer();
            bufs.dst.copy_out(&mut w, len)?;
        }
        Ok(())
    }

    /// Posts `d` (with the next tag, which `tag` receives at once: the caller learns which
    /// request this was whatever happens to it), rings the doorbell and sleeps until its
    /// completion, a failure or the timeout. On a timeout or a signal the queue is reset before
    /// this returns, so the device no longer owns the request's memory; on `ENODEV` (teardown,
    /// a vanished device) it may still, until teardown resets the device.
    fn post_and_wait(
        &self,
        dev: &DevState,
        mut d: Descriptor,
        timeout_ms: u32,
        tag: &mut u32,
    ) -> Result<Completion> {
        d.tag = self.next_tag.load(kernel::sync::atomic::Relaxed);
        self.next_tag
            .store(d.tag.wrapping_add(1), kernel::sync::atomic::Relaxed);
        *tag = d.tag;
        if dev.needs_reset.load(Acquire) {
            // A fatal error halted the device: it runs nothing until it is reset.
            dev.recover()?;
        }

        let mut st = self.ring.lock();
        // Checked under the ring lock, which teardown takes to fail the waiters: either it
        // sees this request waiting, or this sees `dead`.
        if dev.dead.load(Acquire) {
            return Err(ENODEV);
        }
        let tail = st.rings.as_mut().ok_or(ENODEV)?.post(&d)?;
        st.waiting = Some(d.tag);
        st.done = None;
        st.failed = None;
        with_bar(dev, |bar| Rings::ring_doorbell(bar, self.index, tail))??;
        let waited = loop {
            if let Some(c) = st.done.take() {
                break Ok(c);
            }
            if let Some(e) = st.failed.take() {
                // failed by the error handler or a device reset, which stops the device
                break Err(e);
            }
            let woke = self
                .done_cv
                .wait_interruptible_timeout(&mut st, msecs_to_jiffies(timeout_ms));
            let failed = match woke {
                CondVarTimeoutResult::Woken { .. } => continue,
                CondVarTimeoutResult::Timeout => ETIMEDOUT,
                CondVarTimeoutResult::Signal { .. } => EINTR,
            };
            // A completion whose interrupt was lost is on the ring all the same: look first.
            self.take_completions(&mut st, dev);
            if let Some(c) = st.done.take() {
                break Ok(c);
            }
            // Teardown has begun, or the device reads all ones (surprise removal): no register
            // access any more, and every request from now on fails at once.
            if dev.dead.load(Acquire) || dev.gone() {
                break Err(ENODEV);
            }
            // The device may still own the request's memory: reset the queue (it drops the
            // request) and start it over before the next request uses that memory.
            let q = self.index;
            if let Some(rings) = st.rings.as_mut() {
                with_bar(dev, |bar| {
                    rings.reset(bar, q).and_then(|()| rings.program(bar, q))
                })??;
            }
            break Err(failed);
        };
        st.waiting = None;
        drop(st);
        if waited.is_err() && dev.needs_reset.load(Acquire) {
            // the device is halted: reset it now rather than at the next request
            let _ = dev.recover();
        }
        waited
    }

    /// Runs `opcode` over `len` bytes between device segments the caller mapped (`src` and
    /// `dst`: bus address and length of each), while the caller holds this queue's buffers
    /// (`bufs`, whose scatter-gather table carries the lists). Returns the completion, and the
    /// evidence that the device is done with the segments' memory when there is some: `None`
    /// when teardown failed the request before it reset the device, which then may still use
    /// the memory (the caller must leave it mapped: dropping a device-owned mapping leaks it).
    pub(crate) fn run_on(
        &self,
        dev: &DevState,
        bufs: &Buffers,
        opcode: Opcode,
        len: u32,
        src: &[(u64, u32)],
        dst: &[(u64, u32)],
    ) -> (Result<Completion>, Option<DeviceDone>) {
        let side = |segs: &[(u64, u32)], at: usize, sg_flag: u8| -> Result<(u64, u16, u8)> {
            match segs {
                [] => Err(EINVAL),
                [(addr, _)] => Ok((*addr, 0, 0)),
                _ if segs.len() > SG_MAX => Err(EINVAL),
                _ => {
                    for (n, &(addr, len)) in segs.iter().enumerate() {
                        kernel::io::io_write!(bufs.sg, [try: at + n].addr, addr);
                        kernel::io::io_write!(bufs.sg, [try: at + n].len, len);
                        kernel::io::io_write!(bufs.sg, [try: at + n].rsvd, 0);
                    }
                    let table =
                        bufs.sg.dma_address() + (at * core::mem::size_of::<SgEntry>()) as u64;
                    Ok((table, segs.len() as u16, sg_flag))
                }
            }
        };
        let posted = side(src, 0, abi::DESC_SRC_SG).and_then(|(src, src_nseg, f1)| {
            let (dst, dst_nseg, f2) = side(dst, SG_MAX, abi::DESC_DST_SG)?;
            let d = Descriptor {
                opcode: opcode.raw(),
                flags: f1 | f2,
                src_nseg,
                dst_nseg,
                len,
                src,
                dst,
                ..Descriptor::default()
            };
            let mut tag = 0;
            self.post_and_wait(dev, d, DEFAULT_TIMEOUT_MS, &mut tag)
        });
        let done = match &posted {
            Err(e) if *e == ENODEV => None,
            _ => {
                // A device reset that failed the request (IOC_RESET, recovery from a fatal
                // error) runs under `ctrl`: once `ctrl` is free, that reset is over.
                drop(dev.ctrl.lock());
                // SAFETY: the request is over for the device: its completion was read (the
                // device writes it after its last access to the request's memory, datasheet
                // "Ordering"), or its queue was reset (a timeout, a signal), or the device was
                // reset (just waited for above), or it was never posted.
                Some(unsafe { DeviceDone::new() })
            }
        };
        (posted, done)
    }
}
