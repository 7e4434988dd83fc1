// SPDX-License-Identifier: GPL-2.0

//! Teardown as a guard: `DeviceHalt` owns the device's permission to use its DMA memory.
//! Probe makes it before the device learns any address; dropping it, on a failed probe or on
//! unbind alike, stops the device and only then frees the memory.

use kernel::sync::{atomic::Release, Arc};

use crate::{reset, with_bar, DevState};

/// Owns the device's DMA memory; dropping it halts the device, then frees the memory.
pub(crate) struct DeviceHalt {
    dev: Arc<DevState>,
}

impl DeviceHalt {
    /// Takes charge of `dev`'s DMA memory; make it before the device learns any ring address.
    pub(crate) fn new(dev: Arc<DevState>) -> Self {
        Self { dev }
    }
}

// ANCHOR: halt
impl Drop for DeviceHalt {
    fn drop(&mut self) {
        let dev = &self.dev;
        // EXERCISE: Halt the device before its memory goes, in this order: (1) mark the
        // device dead (dev.dead), so no request starts; (2) wait out each queue's request in
        // progress (take and drop its bufs lock); (3) reset the device (with_bar(dev, reset)),
        // which returns when the device does no more DMA; (4) free the memory
        // (dev.release_dma()). Behind an IOMMU, freeing first unmaps memory the device may
        // still be using: the device notices and says so.
        // STUB: dev.release_dma();
        dev.dead.store(true, Release);
        for q in dev.queues.iter() {
            drop(q.bufs.lock());
        }
        let _ = with_bar(dev, reset);
        dev.release_dma();
        // END EXERCISE
    }
}
// ANCHOR_END: halt
