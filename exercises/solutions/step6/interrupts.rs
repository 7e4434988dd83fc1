// SPDX-License-Identifier: GPL-2.0

//! Interrupt handlers: one per queue vector (MSI-X vector q for queue q), and the error vector.

use kernel::{
    io::Io,
    irq::{self, IrqReturn},
    prelude::*,
    sync::Arc,
};

use crate::{regs, with_bar, DevState};

/// What one vector's handler does.
pub(crate) enum IrqHandler {
    /// Queue `q`'s completions.
    Queue(Arc<DevState>, usize),
    /// The device reported an error (ERROR register).
    Error(Arc<DevState>),
}

impl irq::Handler for IrqHandler {
    fn handle(&self) -> IrqReturn {
        match self {
            IrqHandler::Queue(dev, q) => {
                if let Some(queue) = dev.queues.get(*q) {
                    queue.reap(dev);
                }
            }
            IrqHandler::Error(dev) => {
                // Read the sticky bits and clear exactly those (write 1 to clear).
                let bits = with_bar(dev, |bar| {
                    let e = bar.read(regs::ERROR);
                    bar.write_reg(e);
                    e.into_raw()
                });
                if let Ok(bits) = bits {
                    pr_warn!("dmalab: device error bits {:#x}\n", bits);
                }
            }
        }
        IrqReturn::Handled
    }
}
