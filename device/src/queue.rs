//! One queue pair's state: its registers and the channel to its worker (`worker.rs`).
//!
//! The MMIO path only updates registers and sends the worker a message; the worker fetches
//! descriptors, runs them through the engine, posts completions and raises the queue's vector.
//! A queue reset is a message too, and the MMIO path waits for the worker to acknowledge it,
//! so once a reset register write has been handled no DMA of that queue happens any more.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use dmalab_abi as abi;

use crate::registers::QueueStatus;

/// Ring registers of one queue pair.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueRegs {
    pub sq_base: u64,
    pub cq_base: u64,
    pub size: u32,
    pub enabled: bool,
    pub error: bool,
    pub sq_tail: u32,
    pub sq_head: u32,
    pub cq_head: u32,
    pub cq_tail: u32,
    /// Phase the device writes on this pass over the completion ring.
    pub phase: bool,
    /// Stopped by an injected stall until a reset.
    pub stalled: bool,
}

impl QueueRegs {
    fn reset_value() -> Self {
        Self {
            phase: true,
            ..Self::default()
        }
    }

    /// `Q_STATUS`.
    pub fn status(&self) -> u32 {
        QueueStatus::new()
            .with_enabled(self.enabled)
            .with_error(self.error)
            .into_bits()
    }

    /// Every index lies inside a ring of `size` entries (and `size` is not 0).
    pub fn indices_valid(&self) -> bool {
        [self.sq_head, self.sq_tail, self.cq_head, self.cq_tail]
            .iter()
            .all(|&i| i < self.size)
    }

    /// Ring geometry is valid for enabling.
    pub fn valid_geometry(&self) -> bool {
        self.size.is_power_of_two()
            && (2..=abi::MAX_RING_ENTRIES).contains(&self.size)
            && self.sq_base.is_multiple_of(abi::DESC_SIZE as u64)
            && self.cq_base.is_multiple_of(abi::COMPLETION_SIZE as u64)
            && self
                .sq_base
                .checked_add(u64::from(self.size) * abi::DESC_SIZE as u64)
                .is_some()
            && self
                .cq_base
                .checked_add(u64::from(self.size) * abi::COMPLETION_SIZE as u64)
                .is_some()
    }
}

/// Messages to a queue worker.
pub enum Msg {
    /// The submission tail or completion head moved: look for work.
    Kick,
    /// Reset the queue; the sender waits for the reply.
    Reset(Sender<u32>),
    /// Leave the thread.
    Stop,
}

/// The part of a queue the MMIO path and the worker share.
pub struct QueueShared {
    pub regs: Mutex<QueueRegs>,
    pub done: AtomicU32,
    reset_requested: AtomicBool,
    tx: Sender<Msg>,
}

impl QueueShared {
    pub(crate) fn new() -> (Self, Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let q = Self {
            regs: Mutex::new(QueueRegs::reset_value()),
            done: AtomicU32::new(0),
            reset_requested: AtomicBool::new(false),
            tx,
        };
        (q, rx)
    }

    /// A reset is waiting for the worker: it stops at the next step.
    pub(crate) fn reset_requested(&self) -> bool {
        self.reset_requested.load(Ordering::SeqCst)
    }

    /// Wakes the worker.
    pub fn kick(&self) {
        let _ = self.tx.send(Msg::Kick);
    }

    /// Resets the queue and returns once its worker has stopped all DMA for it; returns how many
    /// submitted descriptors were discarded.
    pub fn reset(&self) -> u32 {
        self.reset_requested.store(true, Ordering::SeqCst);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let discarded = if self.tx.send(Msg::Reset(tx)).is_ok() {
            // The worker finishes at most the descriptor it is executing (bounded by
            // MAX_TRANSFER), so this wait is short; the timeout only guards a dead worker.
            rx.recv_timeout(Duration::from_secs(30)).unwrap_or(0)
        } else {
            0
        };
        *self.regs.lock().unwrap() = QueueRegs::reset_value();
        self.done.store(0, Ordering::SeqCst);
        self.reset_requested.store(false, Ordering::SeqCst);
        discarded
    }

    /// Stops the worker for good (the device shuts down: the client left). Like a reset, it cuts
    /// an injected delay, stall or storm short: nothing the client could still see is pending,
    /// and the server must not outlive its client by a fault's delay.
    pub(crate) fn stop(&self) {
        self.reset_requested.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
    }
}
