// SPDX-License-Identifier: GPL-2.0

//! What probe acquires that needs undoing, as guards whose `Drop` undoes it: the
//! `/dev/dmalabN` number, and the device's DMA and interrupts (the device halted before its
//! memory is freed).
//!
//! Probe keeps each guard in a local until it succeeds, so an early return drops exactly the
//! guards made so far, in reverse order; on success they move into `DmalabData`, whose field
//! order is the same reverse order.

use core::pin::Pin;
use kernel::{
    io::Io,
    irq,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Relaxed},
        Arc,
    },
};

use crate::device::atomic_update;
use crate::interrupts::IrqHandler;
use crate::regs;
use crate::state::DevState;

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

/// Owns the device's permission to DMA and its interrupt handlers.
///
/// Dropping it halts the device in an order that leaves no window: first `dead` is set, so no
/// path starts a register write any more; then every path that may have checked `dead` just
/// before is waited out (each vector is synchronized, `ctrl` and each ring lock are taken
/// once); only then is the device reset, and the reset read back (non-posted), so it does no
/// more DMA; every waiter is failed and the rings and bounce buffers are freed (the `Coherent`
/// drop contract); last the interrupt handlers are freed, as the fields drop. This holds on
/// every path, including a probe that fails after some queues were programmed.
pub(crate) struct DeviceHalt<'bound> {
    dev: Arc<DevState>,
    irqs: KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>,
}

impl<'bound> DeviceHalt<'bound> {
    /// Takes charge of `dev`'s DMA and of its interrupt handlers; make it before the device
    /// learns any ring address.
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
        // 1. No new register access from here on.
        dev.mark_dead();
        // 2. Wait out whoever checked `dead` before it was set: handlers running on another
        //    CPU, a device reset in progress, a submitter or timeout inside its ring lock.
        for irq in self.irqs.iter() {
            irq.synchronize();
        }
        let ctrl = dev.ctrl.lock();
        for q in dev.queues.iter() {
            drop(q.ring.lock());
        }
        // 3. The device is ours alone: reset it. The read is not posted: when it returns the
        //    reset is done and the device does no more DMA.
        //    A device that stopped answering (surprise removal) is left alone.
        let bar = if dev.gone.load(Acquire) {
            None
        } else {
            dev.bar.try_access()
        };
        if let Some(bar) = bar {
            let _ = bar.try_write_reg(regs::DEV_CTRL::zeroed().with_reset(true));
            let _ = bar.try_read(regs::DEV_STATUS);
        }
        drop(ctrl);
        // 4. Fail every waiter and free the DMA memory; `irqs` is freed after this, as the
        //    fields drop.
        dev.release_dma();
        // 5. The failed waiters unmap the callers' pages they had mapped (zero-copy): the
        //    device must still be bound for that, so wait for the last of them.
        dev.map_gate.wait_idle();
    }
}
