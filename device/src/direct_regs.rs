//! The direct-transfer block's registers (`DMA_*`) and the channel to its thread
//! ([`crate::direct`]): what the MMIO path and [`crate::shared::Shared`] hold of the block.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dmalab_abi::{self as abi, Descriptor};

use crate::registers::DmaStatus;

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

pub(crate) enum Msg {
    /// Run this transfer (its number is its tag).
    Start(Descriptor),
    /// Stop any DMA and acknowledge.
    Reset(Sender<()>),
    Stop,
}

/// The part of the block the MMIO path and its thread share.
pub(crate) struct DirectShared {
    pub regs: Mutex<DirectRegs>,
    pub(crate) reset_requested: AtomicBool,
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

    /// Stops the thread for good (the device shuts down: the client left). Like a reset, it cuts
    /// an injected delay, stall or storm short: nothing the client could still see is pending,
    /// and the server must not outlive its client by a fault's delay.
    pub(crate) fn stop(&self) {
        self.reset_requested.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
    }
}

/// The receiving end of the block's channel, handed to [`crate::direct::run`].
pub(crate) struct DirectRx(pub(crate) Receiver<Msg>);
