// SPDX-License-Identifier: GPL-2.0

//! Interrupt handlers: one per queue vector, and the error (or single shared) vector.

use kernel::{
    io::Io,
    irq::{self, IrqReturn},
    sync::{atomic::Relaxed, Arc},
};

use crate::abi;
use crate::state::{atomic_update, DevState};

/// Interrupt handler of one queue's vector.
pub(crate) struct QueueIrq {
    pub(crate) dev: Arc<DevState>,
    pub(crate) queue: usize,
}

impl irq::Handler for QueueIrq {
    fn handle(&self) -> IrqReturn {
        let q = &self.dev.queues[self.queue];
        self.dev.reap(q);
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
        let Some(bar) = self.dev.bar.try_access() else {
            return IrqReturn::None;
        };
        let cause = if self.all {
            let c = bar.try_read32(abi::REG_IRQ_CAUSE).unwrap_or(0);
            if c == 0 || c == u32::MAX {
                return IrqReturn::None;
            }
            let _ = bar.try_write32(c, abi::REG_IRQ_CAUSE);
            c
        } else {
            abi::IRQ_CAUSE_ERROR
        };
        if cause & abi::IRQ_CAUSE_ERROR != 0 {
            self.dev.error_irqs.fetch_add(1, Relaxed);
            let bits = bar.try_read32(abi::REG_ERROR).unwrap_or(0);
            if bits != 0 && bits != u32::MAX {
                atomic_update(&self.dev.error_bits, |v| v | bits);
                let _ = bar.try_write32(bits, abi::REG_ERROR);
            }
        }
        drop(bar);
        for (i, q) in self.dev.queues.iter().enumerate() {
            if cause & abi::irq_cause_queue(i) != 0 {
                self.dev.reap(q);
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
