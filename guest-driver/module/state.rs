// SPDX-License-Identifier: GPL-2.0

//! The state a binding shares between the PCI driver, interrupt handlers and open files:
//! reaping completions, queue and device resets, releasing DMA memory, statistics.

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::Coherent,
    io::Io,
    new_condvar, new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        CondVar, Mutex, SpinLockIrq,
    },
};
use pin_init::pin_init_array_from_fn;

use crate::abi::{self, Completion, Descriptor, DeviceInfo, QueueStats, SgEntry, Stats, Status};
use crate::bugs::DmaBug;
use crate::pool::{FreeMap, Pool, BLOCK, BLOCKS, POOL_PAGES};
use crate::regs;
use crate::ring::{program_queue, reset_queue, RingState, Rings, Slot, SlotState, Tag, SG_MAX};
use crate::ring::{RING, SLOTS};
use crate::zerocopy::MapGate;

/// One queue pair: its rings and bounce pool, each with the condition variable its waiters
/// sleep on. The request path is in `queue.rs`.
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
}

/// State shared by the PCI driver, the interrupt handlers and open files.
///
/// Who may touch the device: once `dead` is set (teardown decided to halt the device, or the
/// device stopped answering), nothing writes a register any more. Every path that writes one
/// checks `dead` first, in a place teardown waits out before it resets the device: interrupt
/// handlers at entry (teardown synchronizes every vector), submitters and timeouts under their
/// queue's ring lock (teardown takes each ring lock once), device resets under `ctrl` (teardown
/// holds it across its own reset). See `DeviceHalt` in `guards.rs`.
#[pin_data]
pub(crate) struct DevState {
    pub(crate) bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    pub(crate) queues: KVec<Pin<KBox<Queue>>>,
    pub(crate) info: DeviceInfo,
    /// Set at unbind or when the device stops answering: everything fails fast with ENODEV.
    pub(crate) dead: Atomic<bool>,
    /// The device stopped answering (a register read all ones: surprise removal): not even
    /// teardown writes to it.
    pub(crate) gone: Atomic<bool>,
    /// Serializes device-wide register sequences (device reset and reprogramming) with
    /// teardown's reset.
    #[pin]
    pub(crate) ctrl: Mutex<()>,
    /// The device reported a fatal error: the next waiter to leave resets it.
    pub(crate) needs_reset: Atomic<bool>,
    pub(crate) error_irqs: Atomic<u64>,
    pub(crate) error_bits: Atomic<u32>,
    pub(crate) device_resets: Atomic<u64>,
    /// Keeps the device bound while requests hold zero-copy mappings for it.
    #[pin]
    pub(crate) map_gate: MapGate,
    pub(crate) zero_copy: Atomic<u64>,
    pub(crate) bounced: Atomic<u64>,
    pub(crate) zero_copy_fallbacks: Atomic<u64>,
}

impl DevState {
    /// The state of a device whose BAR is `bar`, with `queues` allocated and described by
    /// `info`: alive, no error seen, nothing counted yet.
    pub(crate) fn new(
        bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
        queues: KVec<Pin<KBox<Queue>>>,
        info: DeviceInfo,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(DevState {
            bar,
            queues,
            info,
            dead: Atomic::new(false),
            gone: Atomic::new(false),
            ctrl <- new_mutex!(()),
            needs_reset: Atomic::new(false),
            error_irqs: Atomic::new(0),
            error_bits: Atomic::new(0u32),
            device_resets: Atomic::new(0),
            map_gate <- MapGate::new(),
            zero_copy: Atomic::new(0),
            bounced: Atomic::new(0),
            zero_copy_fallbacks: Atomic::new(0),
        })
    }
}

/// `*a = f(*a)`, atomically (the kernel's `Atomic` has no fetch_or/fetch_and).
pub(crate) fn atomic_update(a: &Atomic<u32>, f: impl Fn(u32) -> u32) {
    let mut old = a.load(Relaxed);
    while let Err(cur) = a.cmpxchg(old, f(old), Relaxed) {
        old = cur;
    }
}

impl DevState {
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Acquire)
    }

    /// From now on nothing writes a device register (see the type's documentation).
    pub(crate) fn mark_dead(&self) {
        self.dead.store(true, Release);
    }

    /// The device stopped answering: no register access at all from now on.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Release);
        self.mark_dead();
    }

    /// The device halted on a fatal error (its error vector said so): every request in flight
    /// fails with `EIO` now instead of waiting out its timeout, and the device is marked for a
    /// reset, which the first of those waiters performs; the others wait for it before they give
    /// their buffers back (the device may finish a DMA it had started). Interrupt context.
    pub(crate) fn fatal_error(&self) {
        self.needs_reset.store(true, Release);
        for q in self.queues.iter() {
            let mut st = q.ring.lock();
            for slot in st.slots.iter_mut() {
                if matches!(slot.state, SlotState::InFlight) {
                    slot.state = SlotState::Failed(EIO);
                }
            }
            drop(st);
            q.wake_all();
        }
    }

    /// Counts an interrupt for queue `q` and reads its completions, under one lock.
    pub(crate) fn reap(&self, q: &Queue) {
        let mut st = q.ring.lock();
        if self.is_dead() {
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
            if let Some(bar) = self.bar.try_access() {
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

    /// Resets queue `q` in the device and fails every request in flight with `err`.
    /// Called with the ring lock held; the device has stopped all DMA for the queue on return.
    pub(crate) fn reset_queue_locked(&self, q: &Queue, st: &mut RingState, err: Error) {
        let qi = q.index as usize;
        // Halted by teardown (which waits for this lock before its reset) or gone: fail the
        // requests, leave the device alone.
        let bar = if self.is_dead() {
            None
        } else {
            self.bar.try_access()
        };
        if let Some(bar) = bar {
            let _ = reset_queue(&bar, qi);
            // A read is not posted: when it returns, the reset write has been handled.
            match bar.try_read(regs::DEV_STATUS) {
                // all ones: the device is gone
                Ok(st) if st.into_raw() == u32::MAX => self.mark_gone(),
                Err(_) => self.mark_gone(),
                // halted by a fatal error: only a device reset helps (done without this lock)
                Ok(st) if st.fatal() => self.needs_reset.store(true, Relaxed),
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
            if !self.is_dead() {
                if let Some(bar) = self.bar.try_access() {
                    let _ = program_queue(&bar, qi, rings);
                }
            }
        }
    }

    /// Fails everything and frees all DMA memory; the device must have been reset.
    pub(crate) fn release_dma(&self) {
        for q in self.queues.iter() {
            let rings = {
                let mut st = q.ring.lock();
                for slot in st.slots.iter_mut() {
                    if matches!(slot.state, SlotState::InFlight) {
                        slot.state = SlotState::Failed(ENODEV);
                    }
                }
                st.rings.take()
            };
            q.wake_all();
            q.pool_cv.notify_all();
            let blocks = q.pool.lock().blocks.take();
            if DmaBug::active() == DmaBug::LeakOnUnbind {
                // bug: never freed
                core::mem::forget(rings);
                core::mem::forget(blocks);
                continue;
            }
            // `dma_free_attrs` must not run with interrupts off: drop outside the spinlock.
            drop(rings);
            drop(blocks);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for (i, q) in self.queues.iter().enumerate() {
            s.queue[i] = q.ring.lock().stats;
        }
        s.error_irqs = self.error_irqs.load(Relaxed);
        s.error_bits = u64::from(self.error_bits.load(Relaxed));
        s.device_resets = self.device_resets.load(Relaxed);
        s.zero_copy = self.zero_copy.load(Relaxed);
        s.bounced = self.bounced.load(Relaxed);
        s.zero_copy_fallbacks = self.zero_copy_fallbacks.load(Relaxed);
        s
    }
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
        Some(Status::DmaFault | Status::DeviceError) | None => Err(EIO),
    }
}

/// Device reset from user space: every queue is reset and reprogrammed. Holds `ctrl`
/// throughout, so teardown's reset never interleaves with it.
pub(crate) fn reset_device(dev: &DevState) -> Result {
    let _ctrl = dev.ctrl.lock();
    reset_device_locked(dev)
}

/// After a fatal error: resets the device unless another waiter already has. Returns only
/// once no reset is in progress (`ctrl` is held throughout one), so a caller may then give
/// its buffers back.
pub(crate) fn reset_after_fatal(dev: &DevState) -> Result {
    let _ctrl = dev.ctrl.lock();
    if dev.needs_reset.cmpxchg(true, false, Relaxed).is_ok() {
        reset_device_locked(dev)
    } else {
        Ok(())
    }
}

/// [`reset_device`] with `ctrl` held.
fn reset_device_locked(dev: &DevState) -> Result {
    if dev.is_dead() {
        return Err(ENODEV);
    }
    for q in dev.queues.iter() {
        let mut st = q.ring.lock();
        dev.reset_queue_locked(q, &mut st, ECANCELED);
        drop(st);
        q.wake_all();
    }
    let bar = dev.bar.try_access().ok_or(ENODEV)?;
    // The queues are halted; now reset the rest (errors, coalescing, internal memory).
    bar.try_write_reg(regs::DEV_CTRL::zeroed().with_reset(true))?;
    let _ = bar.try_read(regs::DEV_STATUS)?;
    dev.device_resets.fetch_add(1, Relaxed);
    for (i, q) in dev.queues.iter().enumerate() {
        let st = q.ring.lock();
        if let Some(rings) = st.rings.as_ref() {
            program_queue(&bar, i, rings)?;
        }
    }
    Ok(())
}
