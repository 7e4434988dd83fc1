// SPDX-License-Identifier: GPL-2.0

//! Interrupt handlers: one per queue vector (MSI-X vector q for queue q), and the error vector.

use kernel::{
    io::Io,
    irq::{self, IrqReturn},
    prelude::*,
    sync::{
        atomic::{Acquire, Release},
        Arc,
    },
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
                if dev.dead.load(Acquire) {
                    // halted: teardown synchronizes this vector after setting `dead`
                    return IrqReturn::Handled;
                }
                if let Some(queue) = dev.queues.get(*q) {
                    queue.reap(dev);
                }
            }
            IrqHandler::Error(dev) => {
                if dev.dead.load(Acquire) {
                    // halted by teardown: not a register access any more
                    return IrqReturn::Handled;
                }
                // Read the sticky bits and clear exactly those (write 1 to clear).
                let Ok(error) = with_bar(dev, |bar| {
                    let e = bar.read(regs::ERROR);
                    bar.write_reg(e);
                    e
                }) else {
                    return IrqReturn::Handled;
                };
                if error.fatal() {
                    dev.needs_reset.store(true, Release);
                    dev.fail_all(EIO);
                }
                if error.into_raw() & !regs::ERROR::zeroed().with_fatal(true).into_raw() != 0 {
                    pr_warn!("dmalab: device error bits {:#x}\n", error.into_raw());
                }
            }
        }
        IrqReturn::Handled
    }
}
