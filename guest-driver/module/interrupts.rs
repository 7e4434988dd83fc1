// SPDX-License-Identifier: GPL-2.0

//! Interrupt handlers: one per queue vector, and the error (or single shared) vector.

use kernel::{
    io::Io,
    irq::{self, IrqReturn},
    prelude::*,
    sync::{atomic::Relaxed, Arc},
};

use crate::device::atomic_update;
use crate::regs;
use crate::state::DevState;

/// Interrupt handler of one queue's vector.
pub(crate) struct QueueIrq {
    pub(crate) dev: Arc<DevState>,
    pub(crate) queue: usize,
}

impl irq::Handler for QueueIrq {
    fn handle(&self) -> IrqReturn {
        if self.dev.is_dead() {
            // halted: teardown synchronizes this vector after setting `dead`
            return IrqReturn::Handled;
        }
        if let Some(q) = self.dev.queues.get(self.queue) {
            q.reap(&self.dev);
        }
        IrqReturn::Handled
    }
}

/// Handler of the error vector, or of the single vector in MSI/INTx mode (`all`).
pub(crate) struct SharedIrq {
    pub(crate) dev: Arc<DevState>,
    /// One vector for everything: read the cause register to see what happened.
    pub(crate) all: bool,
}

impl irq::Handler for SharedIrq {
    fn handle(&self) -> IrqReturn {
        if self.dev.is_dead() {
            // halted: no register access (teardown synchronizes this vector after setting `dead`)
            return IrqReturn::None;
        }
        let Some(bar) = self.dev.bar.try_access() else {
            return IrqReturn::None;
        };
        let cause = if self.all {
            let cause = bar.try_read(regs::IRQ_CAUSE);
            match cause {
                // all ones: the device is gone
                Ok(c) if c.into_raw() != 0 && c.into_raw() != u32::MAX => {
                    // write 1 to clear exactly what was read
                    let _ = bar.try_write_reg(c);
                    c
                }
                _ => return IrqReturn::None,
            }
        } else {
            regs::IRQ_CAUSE::zeroed().with_error(true)
        };
        if cause.error() {
            self.dev.error_irqs.fetch_add(1, Relaxed);
            if let Ok(error) = bar.try_read(regs::ERROR) {
                let bits = error.into_raw();
                if bits != 0 && bits != u32::MAX {
                    atomic_update(&self.dev.error_bits, |seen| seen | bits);
                    // write 1 to clear the bits just recorded, not ones raised since
                    let _ = bar.try_write_reg(error);
                    if error.fatal() {
                        // every queue is halted: fail what waits now, not at its timeout
                        self.dev.fatal_error();
                    }
                }
            }
        }
        drop(bar);
        for (i, q) in self.dev.queues.iter().enumerate() {
            if cause.queue(i) {
                q.reap(&self.dev);
            }
        }
        IrqReturn::Handled
    }
}

/// The handler type of every vector.
pub(crate) enum IrqHandler {
    Queue(QueueIrq),
    Shared(SharedIrq),
}

impl irq::Handler for IrqHandler {
    fn handle(&self) -> IrqReturn {
        match self {
            IrqHandler::Queue(h) => h.handle(),
            IrqHandler::Shared(h) => h.handle(),
        }
    }
}
