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

impl Drop for DeviceHalt<'_> {
    fn drop(&mut self) {
        let dev = &self.dev;
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
    }
}
