//! The direct-transfer block (`DMA_*` registers): one transfer at a time, started by a register
//! write and polled for, as QEMU's `edu` does it, with none of its 100 ms delay.
//!
//! The block is a small worker of its own: the MMIO path latches the operands into a
//! [`Descriptor`] when `DMA_CMD` is written and hands it to the block's thread, which runs it
//! through the same fault plan and engine as a ring descriptor (so validation, the event log
//! and the fault hooks are the rings'), then sets `DONE`. In events and fault rules the block is
//! queue [`abi::DIRECT_QUEUE`]; the transfer's number stands where a ring slot and a tag would.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dmalab_abi::{self as abi, Descriptor};

use crate::direct_regs::{DirectRx, Msg};
use crate::lane::{self, Origin, Publish};
use crate::memory::MemView;
use crate::registers::DmaStatus;
use crate::shared::Shared;

/// The block's thread: runs transfers until told to stop.
pub(crate) fn run(dev: Arc<Shared>, rx: DirectRx) {
    for msg in rx.0.iter() {
        match msg {
            // A reset is waiting behind this start: the transfer never runs.
            Msg::Start(_) if dev.direct.reset_requested.load(Ordering::SeqCst) => {}
            Msg::Start(d) => transfer(&dev, &d),
            Msg::Reset(ack) => {
                let _ = ack.send(());
            }
            Msg::Stop => break,
        }
        dev.log.flush();
    }
}

/// The block as a descriptor's origin: polled (no vector), stopped by a device reset.
struct Block<'a>(&'a Shared);

impl Origin for Block<'_> {
    fn queue(&self) -> u16 {
        abi::DIRECT_QUEUE
    }

    fn cancelled(&self) -> bool {
        self.0.direct.reset_requested.load(Ordering::SeqCst)
    }

    fn view(&mut self) -> Arc<MemView> {
        self.0.mem.view()
    }

    /// `BUSY` stays until a device reset.
    fn stall(&mut self) {}

    /// The block has no interrupt.
    fn spurious_irq(&mut self) {}
}

/// Runs one transfer and, unless a fault keeps it from finishing, sets `DONE`.
fn transfer(dev: &Shared, d: &Descriptor) {
    let mut block = Block(dev);
    // Stopped short (a halted device, a stall, a reset) or its completion dropped: BUSY stays
    // until a device reset.
    let Some(done) = lane::execute(dev, &mut block, d.tag, d) else {
        return;
    };
    let Publish::Now(_) = lane::publish(&mut block, &done.plan, done.view) else {
        return;
    };
    let out = done.out;
    if let Some(o) = dev.oracle.get() {
        o.close_request(abi::DIRECT_QUEUE, 0, d.tag);
    }
    {
        let mut r = dev.direct.regs.lock().unwrap();
        r.result = out.result;
        r.bytes = out.bytes;
        // Release: the data are in memory before the guest can see DONE.
        std::sync::atomic::fence(Ordering::Release);
        r.status = DmaStatus::new().with_done(true).with_code(out.status);
    }
    let c = out.completion(d.tag);
    lane::completed(dev, abi::DIRECT_QUEUE, d.tag, &c);
}
