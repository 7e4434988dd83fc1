// SPDX-License-Identifier: GPL-2.0

//! Teardown as a guard: `DeviceHalt` owns the device's permission to use its DMA memory and its
//! interrupt handlers. Probe makes it before the device learns any address; dropping it, on a
//! failed probe or on unbind alike, halts the device with requests in flight and only then
//! frees the memory, then the handlers.

use core::pin::Pin;
use kernel::{
    irq,
    prelude::*,
    sync::{atomic::Release, Arc},
};

use crate::interrupts::IrqHandler;
use crate::{reset, with_bar, DevState};

/// Owns the device's DMA memory and interrupt handlers; dropping it halts the device, frees
/// the memory, then the handlers (as its fields drop).
pub(crate) struct DeviceHalt<'bound> {
    dev: Arc<DevState>,
    irqs: KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>,
}

impl<'bound> DeviceHalt<'bound> {
    /// Takes charge of `dev`'s DMA memory and of its handlers; make it before the device learns
    /// any ring address.
    pub(crate) fn new(
        dev: Arc<DevState>,
        irqs: KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>,
    ) -> Self {
        Self { dev, irqs }
    }
}

// ANCHOR: halt
impl Drop for DeviceHalt<'_> {
    fn drop(&mut self) {
        let dev = &self.dev;
        // EXERCISE: Halt a device that has requests in flight, leaving no window: (1) mark it
        // dead, so nothing starts a register access any more; (2) wait out every handler that
        // may have checked `dead` just before (irq.synchronize() on each of self.irqs);
        // (3) fail every waiting request with ENODEV now (dev.fail_all), so no caller waits
        // for its timeout; (4) wait out each queue's request in progress (take and drop its
        // bufs lock); (5) reset the device under `ctrl`; (6) free the DMA memory.
        // STUB: dev.dead.store(true, Release);
        // STUB: for q in dev.queues.iter() {
        // STUB:     drop(q.bufs.lock());
        // STUB: }
        // STUB: let _ = with_bar(dev, reset);
        // STUB: dev.release_dma();
        // STUB: let _ = &self.irqs;
        dev.dead.store(true, Release);
        for irq in self.irqs.iter() {
            irq.synchronize();
        }
        dev.fail_all(ENODEV);
        for q in dev.queues.iter() {
            drop(q.bufs.lock());
        }
        // a device reset in progress finishes first; none starts after (they check `dead`)
        let ctrl = dev.ctrl.lock();
        let _ = with_bar(dev, reset);
        drop(ctrl);
        dev.release_dma();
        // END EXERCISE
    }
}
// ANCHOR_END: halt
