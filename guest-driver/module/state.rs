// SPDX-License-Identifier: GPL-2.0

//! The state a binding shares between the PCI driver, interrupt handlers and open files: the
//! device and its queues, and what concerns all queues at once: a fatal error, device resets,
//! releasing DMA memory, statistics.

use core::pin::Pin;
use kernel::{
    io::Io,
    pci,
    prelude::*,
    sync::atomic::{Relaxed, Release},
};

use crate::abi::{self, DeviceInfo, Stats};
use crate::bugs::DmaBug;
use crate::device::Device;
use crate::queue::{Owner, Queue};
use crate::regs;
use crate::ring::{program_queue, SlotState};

/// State shared by the PCI driver, the interrupt handlers and open files: the device and its
/// queues. It derefs to the [`Device`], so `dev.bar`, `dev.is_dead()` and the counters read
/// as before; what concerns every queue at once (a fatal error, device resets, releasing the
/// DMA memory, statistics) is here.
///
/// Who may touch the device is [`Device`]'s rule (its `dead` flag).
#[pin_data]
pub(crate) struct DevState {
    #[pin]
    pub(crate) device: Device,
    pub(crate) queues: KVec<Pin<KBox<Queue>>>,
}

impl core::ops::Deref for DevState {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.device
    }
}

impl Owner for DevState {
    fn queue(&self, index: usize) -> Option<&Queue> {
        self.queues.get(index).map(|q| &**q)
    }

    /// Resets the device unless another waiter already has; `ctrl` is held throughout a
    /// reset, so taking it waits for one in progress.
    fn recover_from_fatal(&self) -> Result {
        let _ctrl = self.ctrl.lock();
        if self.needs_reset.cmpxchg(true, false, Relaxed).is_ok() {
            reset_device_locked(self)
        } else {
            Ok(())
        }
    }
}

impl DevState {
    /// The state of a device whose BAR is `bar`, with `queues` allocated and described by
    /// `info`.
    pub(crate) fn new(
        bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
        queues: KVec<Pin<KBox<Queue>>>,
        info: DeviceInfo,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(DevState {
            device <- Device::new(bar, info),
            queues,
        })
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
        s.zero_copy_storage = self.map_gate.storage_made() as u64;
        s
    }
}

/// Device reset from user space: every queue is reset and reprogrammed. Holds `ctrl`
/// throughout, so teardown's reset never interleaves with it.
pub(crate) fn reset_device(dev: &DevState) -> Result {
    let _ctrl = dev.ctrl.lock();
    reset_device_locked(dev)
}

/// [`reset_device`] with `ctrl` held.
fn reset_device_locked(dev: &DevState) -> Result {
    if dev.is_dead() {
        return Err(ENODEV);
    }
    for q in dev.queues.iter() {
        let mut st = q.ring.lock();
        q.reset_locked(dev, &mut st, ECANCELED);
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
