// SPDX-License-Identifier: GPL-2.0

//! One queue pair: its rings (shared with its interrupt handler), its data buffers, and the
//! request path: post, ring the doorbell, sleep until the handler says the completion is in.

use kernel::{
    dma::Coherent,
    io::{io_project, Io},
    prelude::*,
    sync::{atomic::Acquire, CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq},
    time::msecs_to_jiffies,
    uaccess::{UserPtr, UserSlice},
};

use crate::abi::{Completion, Descriptor, Opcode, Request, Status};
use crate::ring::Rings;
use crate::{with_bar, DevState, BUF, DEFAULT_TIMEOUT_MS};

/// A source and a destination buffer in coherent memory.
pub(crate) struct Buffers {
    pub(crate) src: Coherent<[u8]>,
    pub(crate) dst: Coherent<[u8]>,
}

/// What the request path and the interrupt handler share, under the queue's spinlock.
pub(crate) struct RingState {
    /// `None` once unbind has freed them.
    pub(crate) rings: Option<Rings>,
    /// The tag of the request in flight, if one is.
    pub(crate) waiting: Option<u32>,
    /// Its completion, once the handler found it.
    pub(crate) done: Option<Completion>,
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
    // ANCHOR: reap
    /// Called by the queue's interrupt handler: takes every new completion off the ring,
    /// hands the awaited one to its waiter and gives the slots back to the device.
    pub(crate) fn reap(&self, dev: &DevState) {
        let mut st = self.ring.lock();
        let st = &mut *st;
        let Some(rings) = st.rings.as_mut() else {
            return;
        };
        // EXERCISE: Take every completion the device has written (rings.take() until it
        // says None). The one whose tag is st.waiting goes into st.done; any other is stale
        // (a request that timed out) and is dropped. If any were taken, return the slots
        // with the CQ_HEAD doorbell (rings.return_completions, inside with_bar) and wake the
        // waiter (self.done_cv.notify_all()).
        // STUB: let _ = (rings, dev);
        let mut took = false;
        while let Ok(Some(c)) = rings.take() {
            took = true;
            if st.waiting == Some(c.tag) {
                st.done = Some(c);
            }
        }
        if took {
            let _ = with_bar(dev, |bar| rings.return_completions(bar, self.index));
            self.done_cv.notify_all();
        }
        // END EXERCISE
    }
    // ANCHOR_END: reap

    // ANCHOR: transfer
    /// Runs one request on this queue.
    pub(crate) fn transfer(&self, dev: &DevState, req: &mut Request) -> Result {
        let op = Opcode::from_raw(req.opcode).ok_or(EINVAL)?;
        let len = req.len as usize;
        if len == 0 || len > BUF || req.nseg > 1 {
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
            io_project!(bufs.src, [try: 0..len]).copy_from_slice(&staged);
        }
        if op.dst_in_guest() {
            // What the device writes is what the caller gets back: clear it first, so that a
            // device that moves less than it reports never hands this caller the bytes an
            // earlier request (perhaps another process's) left in the buffer.
            let zeroes = KVVec::from_elem(0u8, len, GFP_KERNEL)?;
            io_project!(bufs.dst, [try: 0..len]).copy_from_slice(&zeroes);
        }
        let operand =
            |in_guest: bool, present: bool, buf: &Coherent<[u8]>| match (in_guest, present) {
                (true, _) => buf.dma_address(),
                (false, true) => req.dev_offset,
                (false, false) => 0,
            };
        let tag = self.next_tag.load(kernel::sync::atomic::Relaxed);
        self.next_tag
            .store(tag.wrapping_add(1), kernel::sync::atomic::Relaxed);
        let d = Descriptor {
            opcode: op.raw(),
            tag,
            len: req.len,
            src: operand(op.src_in_guest(), op.has_src(), &bufs.src),
            dst: operand(op.dst_in_guest(), op.has_dst(), &bufs.dst),
            pattern: if op == Opcode::Fill { req.pattern } else { 0 },
            ..Descriptor::default()
        };

        let mut st = self.ring.lock();
        let tail = st.rings.as_mut().ok_or(ENODEV)?.post(&d)?;
        st.waiting = Some(tag);
        st.done = None;
        with_bar(dev, |bar| Rings::ring_doorbell(bar, self.index, tail))??;
        // EXERCISE: Sleep until the interrupt handler has put the completion in st.done:
        // self.done_cv.wait_interruptible_timeout(&mut st, msecs_to_jiffies(timeout_ms)) gives
        // up the spinlock while asleep. On Timeout (or a signal) the device may still own the
        // buffers: reset the queue and reprogram it (rings.reset, rings.program, inside
        // with_bar) and fail with ETIMEDOUT (EINTR for a signal). Recheck st.done after every
        // wakeup: a wakeup is not a completion.
        // STUB: let _ = (timeout_ms, msecs_to_jiffies(0));
        // STUB: let c: Option<Completion> = st.done.take();
        // STUB: let Some(c) = c else { return Err(ETIMEDOUT) };
        let c = loop {
            if let Some(c) = st.done.take() {
                break c;
            }
            let woke = self
                .done_cv
                .wait_interruptible_timeout(&mut st, msecs_to_jiffies(timeout_ms));
            let failed = match woke {
                CondVarTimeoutResult::Woken { .. } => continue,
                CondVarTimeoutResult::Timeout => ETIMEDOUT,
                CondVarTimeoutResult::Signal { .. } => EINTR,
            };
            if let Some(c) = st.done.take() {
                break c;
            }
            st.waiting = None;
            let q = self.index;
            if let Some(rings) = st.rings.as_mut() {
                with_bar(dev, |bar| {
                    rings.reset(bar, q).and_then(|()| rings.program(bar, q))
                })??;
            }
            return Err(failed);
        };
        // END EXERCISE
        st.waiting = None;
        drop(st);

        req.tag = c.tag;
        req.status = u32::from(c.status);
        req.result = c.result;
        req.bytes = c.bytes;
        req.segments = 1;
        if op.dst_in_guest() && c.status == Status::Ok.raw() {
            UserSlice::new(UserPtr::from_addr(req.dst as usize), len)
                .writer()
                .write_dma(&bufs.dst, 0, len)?;
        }
        Ok(())
    }
    // ANCHOR_END: transfer
}
