//! The worker thread of one queue pair: fetches descriptors, applies injected faults, runs
//! them through the engine, posts completions and raises the queue's vector.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use dmalab_abi::{self as abi, Completion};

use crate::eventlog::Event;
use crate::interrupts::Coalescer;
use crate::lane::{self, Origin, Publish};
use crate::memory::MemView;
use crate::queue::{Msg, QueueRegs, QueueShared};
use crate::registers::{ErrorBits, IrqCoalesce};
use crate::shared::{Shared, BUS_MASTER_OFF};
use crate::wire;

/// The worker of queue `index`.
pub(crate) struct Worker {
    pub index: u16,
    pub dev: Arc<Shared>,
    pub rx: Receiver<Msg>,
    coalescer: Coalescer,
    view: Option<(u64, Arc<MemView>)>,
    /// An injected out-of-order completion waiting for the next one.
    /// A completion held back (out of order), its interrupt flag and its ring slot.
    held: Option<(Completion, bool, u32)>,
    /// Completion-ring base and size in force when the current descriptor was fetched.
    geometry: Option<(u64, u32)>,
}

impl Worker {
    pub(crate) fn new(index: u16, dev: Arc<Shared>, rx: Receiver<Msg>) -> Self {
        Self {
            index,
            dev,
            rx,
            coalescer: Coalescer::default(),
            view: None,
            held: None,
            geometry: None,
        }
    }

    /// The current DMA mappings; refetched only when the map table changed.
    fn view(&mut self) -> Arc<MemView> {
        self.refresh_view();
        self.view.as_ref().expect("refreshed just now").1.clone()
    }

    /// Brings the cached view up to date with the map table (no reference count is taken: a
    /// descriptor fetch borrows it).
    fn refresh_view(&mut self) {
        let generation = self.dev.mem.generation();
        if !matches!(&self.view, Some((g, _)) if *g == generation) {
            self.view = Some((generation, self.dev.mem.view()));
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
                    self.held = None;
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
    /// queue halts or stalls, or a reset is requested.
    fn drain(&mut self) {
        let q = self.index;
        let dev = Arc::clone(&self.dev);
        while !self.queue().reset_requested() && !self.dev.is_fatal() {
            let r = *self.queue().regs.lock().unwrap();
            self.geometry = Some((r.cq_base, r.size));
            if !r.enabled || r.error || r.stalled {
                break;
            }
            // Every index is checked against the size in force at every use: whatever the
            // registers say, no slot outside [base, base + size × entry) is ever touched.
            if !r.indices_valid() {
                self.halt(
                    ErrorBits::new().with_bad_doorbell(true),
                    format!(
                        "queue {q}: ring indices outside a ring of {} entries",
                        r.size
                    ),
                );
                break;
            }
            if r.sq_head == r.sq_tail || (r.cq_tail + 1) % r.size == r.cq_head {
                break;
            }
            if !self.dev.bus_master() {
                // The descriptors wait: turning bus mastering on kicks the queue again.
                self.dev.log.record(|| Event::Error {
                    queue: Some(q),
                    tag: None,
                    status: None,
                    what: format!("queue {q}: doorbell not served: {BUS_MASTER_OFF}"),
                });
                break;
            }
            let Some(raw) = self.fetch(&r) else {
                break;
            };
            let d = wire::decode_descriptor(&raw);
            let Some(done) = lane::execute(&dev, self, r.sq_head, &d) else {
                break;
            };
            let out = done.out;
            {
                let mut regs = self.queue().regs.lock().unwrap();
                // The driver may have disabled the queue and rewritten SIZE (even to 0) while
                // this descriptor ran: never divide by a guest-written value unchecked.
                match (regs.sq_head + 1).checked_rem(regs.size) {
                    Some(h) => regs.sq_head = h,
                    None => break,
                }
            }
            self.queue().done.fetch_add(1, Ordering::Relaxed);
            let c = out.completion(d.tag);
            let plan = done.plan;
            let view = match lane::publish(self, &plan, done.view) {
                Publish::Now(view) => view,
                Publish::Dropped => continue,
                Publish::Cancelled => break,
            };
            let irq = d.flags & abi::DESC_NO_IRQ == 0 && !plan.interrupt.lost;
            let posted = if plan.complete.out_of_order && self.held.is_none() {
                self.held = Some((c, irq, r.sq_head));
                true
            } else {
                let ok = self.post(&view, c, irq, r.sq_head);
                match self.held.take() {
                    Some((h, hirq, hslot)) if ok => self.post(&view, h, hirq, hslot),
                    _ => ok,
                }
            };
            if !posted {
                break;
            }
            if plan.complete.duplicate && self.has_cq_space() {
                self.post(&view, c, irq, r.sq_head);
            }
            for _ in 0..plan.interrupt.storm {
                if self.queue().reset_requested() {
                    break;
                }
                self.dev.raise_queue_irq(q);
            }
        }
        if let Some((h, hirq, hslot)) = self.held.take() {
            // Nothing came after it: out of order degenerates to late.
            let view = self.view();
            if !self.has_cq_space() || !self.post(&view, h, hirq, hslot) {
                self.held = Some((h, hirq, hslot));
            }
        }
        if self.coalescer.idle(self.coalesce_cfg()) {
            self.raise();
        }
        // An idle worker holds no view, so an unmap never waits for it.
        self.view = None;
        self.dev.log.flush();
    }

    /// Reads the descriptor at the submission head of a queue whose registers were `r`; on a
    /// ring the device cannot read, halts the queue (ring-fetch error) and returns `None`.
    fn fetch(&mut self, r: &QueueRegs) -> Option<[u8; abi::DESC_SIZE]> {
        self.refresh_view();
        let view = &self.view.as_ref().expect("refreshed just now").1;
        let mut raw = [0u8; abi::DESC_SIZE];
        let slot = r
            .sq_base
            .wrapping_add(u64::from(r.sq_head) * abi::DESC_SIZE as u64);
        match view.read(slot, &mut raw) {
            Ok(()) => Some(raw),
            Err(e) => {
                self.halt(
                    ErrorBits::new().with_ring_fetch(true),
                    format!("queue {}: descriptor fetch: {e}", self.index),
                );
                None
            }
        }
    }

    fn has_cq_space(&self) -> bool {
        let r = self.queue().regs.lock().unwrap();
        r.size != 0 && (r.cq_tail + 1) % r.size != r.cq_head
    }

    /// Writes one completion (of the descriptor fetched from ring slot `slot`) at the
    /// completion tail and accounts for its interrupt.
    fn post(&mut self, view: &MemView, mut c: Completion, irq: bool, slot: u32) -> bool {
        let q = self.index;
        // The device is done with the request's memory: its windows close before the guest can
        // see the completion.
        if let Some(o) = self.dev.oracle.get() {
            o.close_request(q, slot, c.tag);
        }
        if !self.dev.bus_master() {
            // Writing the completion is a DMA too: dropped, like one for a reprogrammed ring.
            self.dev.log.record(|| Event::Error {
                queue: Some(q),
                tag: Some(c.tag),
                status: Some(c.status),
                what: format!("queue {q}: completion not written: {BUS_MASTER_OFF}"),
            });
            return true;
        }
        let (cq_base, cq_tail, phase) = {
            let mut r = self.queue().regs.lock().unwrap();
            if Some((r.cq_base, r.size)) != self.geometry {
                // The driver reprogrammed the completion ring (queue disabled) while this
                // descriptor ran: its completion has no valid slot any more; drop it.
                drop(r);
                self.dev.log.record(|| Event::Error {
                    queue: Some(q),
                    tag: Some(c.tag),
                    status: Some(c.status),
                    what: "completion dropped: the completion ring was reprogrammed".into(),
                });
                return true;
            }
            // The slot is taken now, before the completion is visible: a driver that sees it
            // and returns it at once finds CQ_TAIL already past it (the CQ_HEAD check counts on
            // that).
            let taken = (r.cq_base, r.cq_tail, r.phase);
            let Some(t) = (r.cq_tail + 1).checked_rem(r.size) else {
                return false;
            };
            r.cq_tail = t;
            if r.cq_tail == 0 {
                r.phase = !r.phase;
            }
            taken
        };
        c.phase = u16::from(phase);
        // wrapping: a base rewritten while the queue was disabled may be anything; the view
        // refuses an address that wrapped, like any unmapped one
        let cslot = cq_base.wrapping_add(u64::from(cq_tail) * abi::COMPLETION_SIZE as u64);
        let (head, last) = wire::encode_completion(&c);
        if let Err(e) = view
            .write(cslot, &head)
            .and_then(|_| view.store_u32_release(cslot.wrapping_add(12), last))
        {
            self.halt(
                ErrorBits::new().with_cq_write(true),
                format!("queue {q}: completion write: {e}"),
            );
            return false;
        }
        lane::completed(&self.dev, q, cq_tail, &c);
        if irq && self.coalescer.completion(self.coalesce_cfg(), Instant::now) {
            self.raise();
        }
        true
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

/// A queue's worker as a descriptor's origin: stopped by a queue reset, stalled through its
/// registers, with the queue's vector for spurious interrupts.
impl Origin for Worker {
    fn queue(&self) -> u16 {
        self.index
    }

    fn cancelled(&self) -> bool {
        self.queue().reset_requested()
    }

    fn view(&mut self) -> Arc<MemView> {
        Worker::view(self)
    }

    /// The descriptor stays fetched-but-unfinished: only a reset gets the queue going.
    fn stall(&mut self) {
        self.queue().regs.lock().unwrap().stalled = true;
    }

    fn spurious_irq(&mut self) {
        self.dev.raise_queue_irq(self.index);
    }
}
