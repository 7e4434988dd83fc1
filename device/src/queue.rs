//! One queue pair: its registers and the worker thread that drains its submission ring.
//!
//! The MMIO path only updates registers and sends the worker a message; the worker fetches
//! descriptors, runs them through the engine, posts completions and raises the queue's vector.
//! A queue reset is a message too, and the MMIO path waits for the worker to acknowledge it,
//! so once a reset register write has been handled no DMA of that queue happens any more.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use dmalab_abi::{self as abi, Completion};

use crate::device::Shared;
use crate::engine::{self, Ctx};
use crate::eventlog::Event;
use crate::interrupts::Coalescer;
use crate::memory::MemView;
use crate::registers::{ErrorBits, IrqCoalesce, QueueStatus};
use crate::wire;

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

    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// The worker of queue `index`.
pub(crate) struct Worker {
    pub index: u16,
    pub dev: Arc<Shared>,
    pub rx: Receiver<Msg>,
    coalescer: Coalescer,
    view: Option<(u64, Arc<MemView>)>,
}

impl Worker {
    pub(crate) fn new(index: u16, dev: Arc<Shared>, rx: Receiver<Msg>) -> Self {
        Self {
            index,
            dev,
            rx,
            coalescer: Coalescer::default(),
            view: None,
        }
    }

    /// The current DMA mappings; refetched only when the map table changed.
    fn view(&mut self) -> Arc<MemView> {
        let generation = self.dev.mem.generation();
        match &self.view {
            Some((g, v)) if *g == generation => v.clone(),
            _ => {
                let v = self.dev.mem.view();
                self.view = Some((generation, v.clone()));
                v
            }
        }
    }

    fn queue(&self) -> &QueueShared {
        &self.dev.queues[self.index as usize]
    }

    pub(crate) fn run(mut self) {
        loop {
            let msg = match self.coalescer.deadline() {
                Some(d) => self.rx.recv_deadline(d),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Kick) => self.drain(),
                Ok(Msg::Reset(reply)) => {
                    let discarded = self.discard();
                    self.coalescer.clear();
                    let _ = reply.send(discarded);
                }
                Err(RecvTimeoutError::Timeout) => self.raise(),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.dev.log.flush();
    }

    fn discard(&self) -> u32 {
        let r = self.queue().regs.lock().unwrap();
        if r.size == 0 {
            return 0;
        }
        r.sq_tail.wrapping_sub(r.sq_head) % r.size
    }

    fn raise(&mut self) {
        self.coalescer.clear();
        self.dev.raise_queue_irq(self.index);
    }

    fn coalesce_cfg(&self) -> IrqCoalesce {
        IrqCoalesce::from_bits(self.dev.coalesce.load(Ordering::Relaxed))
    }

    /// Runs descriptors until the submission ring is empty, the completion ring is full, the
    /// queue halts, or a reset is requested.
    fn drain(&mut self) {
        let q = self.index;
        while !self.queue().reset_requested.load(Ordering::SeqCst) && !self.dev.is_fatal() {
            let r = *self.queue().regs.lock().unwrap();
            if !r.enabled
                || r.error
                || r.sq_head == r.sq_tail
                || (r.cq_tail + 1) % r.size == r.cq_head
            {
                break;
            }
            let view = self.view();
            let mut raw = [0u8; abi::DESC_SIZE];
            let slot = r.sq_base + u64::from(r.sq_head) * abi::DESC_SIZE as u64;
            if let Err(e) = view.read(slot, &mut raw) {
                self.halt(
                    ErrorBits::new().with_ring_fetch(true),
                    format!("queue {q}: descriptor fetch: {e}"),
                );
                break;
            }
            let d = wire::decode_descriptor(&raw);
            self.dev
                .log
                .counters
                .descriptors
                .fetch_add(1, Ordering::Relaxed);
            self.dev.log.record(|| Event::Fetch {
                queue: q,
                index: r.sq_head,
                opcode: d.opcode,
                flags: d.flags,
                tag: d.tag,
                len: d.len,
            });
            let ctx = Ctx {
                view: &view,
                internal: &self.dev.internal,
                log: &self.dev.log,
                queue: q,
            };
            let out = engine::execute(&ctx, &d);
            if out.status != abi::CS_OK {
                self.dev.log.record(|| Event::Error {
                    queue: Some(q),
                    tag: Some(d.tag),
                    status: Some(out.status),
                    what: format!("descriptor {} refused", r.sq_head),
                });
            }
            if out.violation {
                self.dev
                    .set_error(ErrorBits::new().with_dma_violation(true));
            }
            let c = Completion {
                result: out.result,
                bytes: out.bytes,
                tag: d.tag,
                status: out.status,
                phase: r.phase as u16,
            };
            let cslot = r.cq_base + u64::from(r.cq_tail) * abi::COMPLETION_SIZE as u64;
            let (head, last) = wire::encode_completion(&c);
            if let Err(e) = view
                .write(cslot, &head)
                .and_then(|_| view.store_u32_release(cslot + 12, last))
            {
                self.halt(
                    ErrorBits::new().with_cq_write(true),
                    format!("queue {q}: completion write: {e}"),
                );
                break;
            }
            {
                let mut regs = self.queue().regs.lock().unwrap();
                regs.sq_head = (regs.sq_head + 1) % regs.size;
                regs.cq_tail = (regs.cq_tail + 1) % regs.size;
                if regs.cq_tail == 0 {
                    regs.phase = !regs.phase;
                }
            }
            self.queue().done.fetch_add(1, Ordering::Relaxed);
            let counters = &self.dev.log.counters;
            counters.completions.fetch_add(1, Ordering::Relaxed);
            if out.status == abi::CS_OK {
                &counters.completions_ok
            } else {
                &counters.completions_err
            }
            .fetch_add(1, Ordering::Relaxed);
            self.dev.log.record(|| Event::Complete {
                queue: q,
                index: r.sq_head,
                tag: d.tag,
                status: c.status,
                bytes: c.bytes,
                result: c.result,
            });
            if d.flags & abi::DESC_NO_IRQ == 0
                && self
                    .coalescer
                    .completion(self.coalesce_cfg(), Instant::now())
            {
                self.raise();
            }
        }
        if self.coalescer.idle(self.coalesce_cfg()) {
            self.raise();
        }
        self.dev.log.flush();
    }

    fn halt(&mut self, bits: ErrorBits, what: String) {
        self.queue().regs.lock().unwrap().error = true;
        self.dev
            .log
            .counters
            .ring_errors
            .fetch_add(1, Ordering::Relaxed);
        self.dev.log.record(|| Event::Error {
            queue: Some(self.index),
            tag: None,
            status: None,
            what,
        });
        self.dev.set_error(bits);
    }
}
