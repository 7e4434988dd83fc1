//! The direct-transfer block (`DMA_*` registers): one transfer at a time, started by a register
//! write and polled for, as QEMU's `edu` does it, with none of its 100 ms delay.
//!
//! The block is a small worker of its own: the MMIO path latches the operands into a
//! [`Descriptor`] when `DMA_CMD` is written and hands it to the block's thread, which runs it
//! through the same fault plan and engine as a ring descriptor (so validation, the event log
//! and the fault hooks are the rings'), then sets `DONE`. In events and fault rules the block is
//! queue [`abi::DIRECT_QUEUE`]; the transfer's number stands where a ring slot and a tag would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dmalab_abi::{self as abi, Descriptor};

use crate::engine::{self, Ctx, Outcome};
use crate::eventlog::Event;
use crate::fault_plan::FaultPlan;
use crate::registers::{DmaStatus, ErrorBits};
use crate::shared::{sleep_unless, Shared};

/// The `DMA_*` registers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DirectRegs {
    pub src: u64,
    pub dst: u64,
    pub len: u32,
    pub pattern: u32,
    /// `DMA_STATUS`.
    pub status: DmaStatus,
    pub result: u32,
    pub bytes: u32,
    /// Transfers started since the device was built: the next one's number.
    pub started: u32,
}

enum Msg {
    /// Run this transfer (its number is its tag).
    Start(Descriptor),
    /// Stop any DMA and acknowledge.
    Reset(Sender<()>),
    Stop,
}

/// The part of the block the MMIO path and its thread share.
pub(crate) struct DirectShared {
    pub regs: Mutex<DirectRegs>,
    reset_requested: AtomicBool,
    tx: Sender<Msg>,
}

/// The reason a write to a `DMA_*` register was refused.
pub(crate) struct Busy;

impl DirectShared {
    pub(crate) fn new() -> (Self, DirectRx) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let d = Self {
            regs: Mutex::new(DirectRegs::default()),
            reset_requested: AtomicBool::new(false),
            tx,
        };
        (d, DirectRx(rx))
    }

    /// `DMA_*` register `reg` (a `REG_DMA_*` offset) as read by the guest.
    pub(crate) fn read(&self, reg: usize) -> u32 {
        let r = self.regs.lock().unwrap();
        match reg {
            abi::REG_DMA_SRC_LO => r.src as u32,
            abi::REG_DMA_SRC_HI => (r.src >> 32) as u32,
            abi::REG_DMA_DST_LO => r.dst as u32,
            abi::REG_DMA_DST_HI => (r.dst >> 32) as u32,
            abi::REG_DMA_LEN => r.len,
            abi::REG_DMA_PATTERN => r.pattern,
            abi::REG_DMA_STATUS => r.status.into_bits(),
            abi::REG_DMA_RESULT => r.result,
            abi::REG_DMA_BYTES => r.bytes,
            _ => 0,
        }
    }

    /// A guest write of `v` to `DMA_*` register `reg`. Refused while a transfer runs: the device
    /// owns the operands until `DONE`. Writing `DMA_CMD` starts a transfer; returns its
    /// descriptor so the caller can publish its ownership windows before the thread runs it.
    pub(crate) fn write(&self, reg: usize, v: u32) -> Result<Option<Descriptor>, Busy> {
        let mut r = self.regs.lock().unwrap();
        if r.status.busy() {
            return Err(Busy);
        }
        let lo = |x: u64| (x & !0xffff_ffff) | u64::from(v);
        let hi = |x: u64| (x & 0xffff_ffff) | (u64::from(v) << 32);
        match reg {
            abi::REG_DMA_SRC_LO => r.src = lo(r.src),
            abi::REG_DMA_SRC_HI => r.src = hi(r.src),
            abi::REG_DMA_DST_LO => r.dst = lo(r.dst),
            abi::REG_DMA_DST_HI => r.dst = hi(r.dst),
            abi::REG_DMA_LEN => r.len = v,
            abi::REG_DMA_PATTERN => r.pattern = v,
            abi::REG_DMA_CMD => {
                let d = Descriptor {
                    // The command's reserved bits travel in the descriptor's reserved field,
                    // where the engine refuses them with BAD_DESCRIPTOR like any other.
                    opcode: v as u8,
                    rsvd1: v >> 8,
                    tag: r.started,
                    len: r.len,
                    src: r.src,
                    dst: r.dst,
                    pattern: r.pattern,
                    ..Descriptor::default()
                };
                r.started = r.started.wrapping_add(1);
                r.status = DmaStatus::new().with_busy(true);
                (r.result, r.bytes) = (0, 0);
                drop(r);
                let _ = self.tx.send(Msg::Start(d));
                return Ok(Some(d));
            }
            _ => {}
        }
        Ok(None)
    }

    /// Device reset: waits until the running transfer (if any) has done its DMA, cutting an
    /// injected delay short, then clears the registers.
    pub(crate) fn reset(&self) {
        self.reset_requested.store(true, Ordering::SeqCst);
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Reset(tx)).is_ok() {
            // The thread finishes at most one transfer (bounded by MAX_TRANSFER) before it
            // answers; the timeout only guards a dead thread.
            let _ = rx.recv_timeout(Duration::from_secs(30));
        }
        let mut r = self.regs.lock().unwrap();
        *r = DirectRegs {
            started: r.started,
            ..DirectRegs::default()
        };
        drop(r);
        self.reset_requested.store(false, Ordering::SeqCst);
    }

    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// The receiving end of the block's channel, handed to [`run`].
pub(crate) struct DirectRx(Receiver<Msg>);

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

/// Runs one transfer and, unless a fault keeps it from finishing, sets `DONE`.
fn transfer(dev: &Shared, d: &Descriptor) {
    let q = abi::DIRECT_QUEUE;
    dev.log.counters.descriptors.fetch_add(1, Ordering::Relaxed);
    dev.log.record(|| Event::Fetch {
        queue: q,
        index: d.tag,
        opcode: d.opcode,
        flags: d.flags,
        tag: d.tag,
        len: d.len,
    });
    if dev.is_fatal() {
        // A halted device starts nothing: BUSY stays until a device reset.
        return;
    }
    let plan = FaultPlan::for_descriptor(dev, q, d.tag, d);
    if plan.fetch.fatal {
        dev.set_error(ErrorBits::new().with_fatal(true));
        return;
    }
    if plan.fetch.stall {
        return;
    }
    let start = Duration::from_millis(u64::from(plan.execute.delay_ms));
    if !sleep_unless(start, || dev.direct.reset_requested.load(Ordering::SeqCst)) {
        return;
    }
    let view = dev.mem.view();
    let ctx = Ctx {
        view: &view,
        internal: &dev.internal,
        log: &dev.log,
        queue: q,
    };
    let mut out = match plan.execute.status {
        Some(status) => Outcome {
            status,
            bytes: 0,
            result: 0,
            violation: false,
        },
        None => engine::execute(&ctx, d, plan.execute.tweak),
    };
    if out.status != abi::CS_OK {
        dev.log.record(|| Event::Error {
            queue: Some(q),
            tag: Some(d.tag),
            status: Some(out.status),
            what: format!("direct transfer {} refused", d.tag),
        });
    }
    if out.violation {
        dev.set_error(ErrorBits::new().with_dma_violation(true));
    }
    if let Some((offset, len)) = plan.result.outside {
        dev.dma_outside(&view, q, d, offset, len);
    }
    drop(view);
    if plan.result.unreported_short {
        out.bytes = d.len;
    }
    if plan.complete.drop {
        return;
    }
    let delay = Duration::from_millis(u64::from(plan.complete.delay_ms));
    if !sleep_unless(delay, || dev.direct.reset_requested.load(Ordering::SeqCst)) {
        return;
    }
    if let Some(o) = dev.oracle.get() {
        o.close_request(q, 0, d.tag);
    }
    {
        let mut r = dev.direct.regs.lock().unwrap();
        r.result = out.result;
        r.bytes = out.bytes;
        // Release: the data are in memory before the guest can see DONE.
        std::sync::atomic::fence(Ordering::Release);
        r.status = DmaStatus::new().with_done(true).with_code(out.status);
    }
    let counters = &dev.log.counters;
    counters.completions.fetch_add(1, Ordering::Relaxed);
    if out.status == abi::CS_OK {
        &counters.completions_ok
    } else {
        &counters.completions_err
    }
    .fetch_add(1, Ordering::Relaxed);
    dev.log.record(|| Event::Complete {
        queue: q,
        index: d.tag,
        tag: d.tag,
        status: out.status,
        bytes: out.bytes,
        result: out.result,
    });
}
