// SPDX-License-Identifier: GPL-2.0

//! What probe acquires that needs undoing, as guards whose `Drop` undoes it: the
//! `/dev/dmalabN` number, and the device's DMA (halted before its memory is freed).
//!
//! Probe keeps each guard in a local until it succeeds, so an early return drops exactly the
//! guards made so far, in reverse order; on success they move into `DmalabData`, whose field
//! order is the same reverse order.

use kernel::{
    io::Io,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc,
    },
};

use crate::regs;
use crate::state::{atomic_update, DevState};

/// Names of the misc devices; the index is the device's number.
const MISC_NAMES: [&CStr; 8] = [
    c"dmalab0", c"dmalab1", c"dmalab2", c"dmalab3", c"dmalab4", c"dmalab5", c"dmalab6", c"dmalab7",
];
/// Bit n set: `/dev/dmalabN` is taken by a bound device.
static MISC_USED: Atomic<u32> = Atomic::new(0);

/// A claimed `/dev/dmalabN` number; dropping it gives the number back.
pub(crate) struct MiscSlot(usize);

impl MiscSlot {
    /// Claims the lowest free number, or fails with `EBUSY` when all are taken.
    pub(crate) fn claim() -> Result<Self> {
        loop {
            let used = MISC_USED.load(Relaxed);
            let free = (!used).trailing_zeros() as usize;
            if free >= MISC_NAMES.len() {
                return Err(EBUSY);
            }
            if MISC_USED.cmpxchg(used, used | (1 << free), Relaxed).is_ok() {
                return Ok(Self(free));
            }
        }
    }

    /// The device node's name, `dmalabN`.
    pub(crate) fn name(&self) -> &'static CStr {
        MISC_NAMES[self.0]
    }
}

impl Drop for MiscSlot {
    fn drop(&mut self) {
        let bit = 1 << self.0;
        atomic_update(&MISC_USED, |used| used & !bit);
    }
}

/// Owns the device's permission to DMA. Dropping it resets the device, waits for the reset to
/// finish (a non-posted read), fails every waiting caller, and only then frees the rings and
/// bounce buffers: the `Coherent` drop contract (no DMA into freed memory) holds on every path,
/// including a probe that fails after some queues were programmed.
pub(crate) struct DeviceHalt(Arc<DevState>);

impl DeviceHalt {
    /// Takes charge of `dev`'s DMA; make it before the device learns any ring address.
    pub(crate) fn new(dev: Arc<DevState>) -> Self {
        Self(dev)
    }
}

impl Drop for DeviceHalt {
    fn drop(&mut self) {
        let dev = &self.0;
        dev.dead.store(true, Relaxed);
        if let Some(bar) = dev.bar.try_access() {
            let _ = bar.try_write_reg(regs::DEV_CTRL::zeroed().with_reset(true));
            // Non-posted: when this returns the device has finished the reset and does no more
            // DMA.
            let _ = bar.try_read(regs::DEV_STATUS);
        }
        dev.release_dma();
    }
}
