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

impl Drop for DeviceHalt {
    fn drop(&mut self) {
        let dev = &self.dev;
        dev.dead.store(true, Release);
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
