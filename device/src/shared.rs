//! The state the MMIO path and the queue workers share: memory, interrupts, the event log,
//! internal memory, fault rules, the queues' registers and the device-level registers.
//! Both `device` (register semantics) and `worker` (descriptor execution) build on it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use dmalab_abi as abi;

use crate::engine::InternalMemory;
use crate::eventlog::{Event, EventLog};
use crate::faults::Injector;
use crate::interrupts::InterruptSink;
use crate::memory::DmaMemory;
use crate::queue::QueueShared;
use crate::registers::{DevStatus, ErrorBits};

/// State shared by the MMIO path and the queue workers.
pub struct Shared {
    pub(crate) mem: Arc<dyn DmaMemory>,
    pub(crate) irq: Arc<dyn InterruptSink>,
    pub log: Arc<EventLog>,
    pub internal: InternalMemory,
    /// Fault rules and their counters.
    pub faults: Injector,
    pub(crate) queues: Vec<QueueShared>,
    pub(crate) error: AtomicU32,
    pub(crate) status: AtomicU32,
    pub(crate) coalesce: AtomicU32,
    pub(crate) irq_cause: AtomicU32,
    /// The ownership table of the oracle, when one is attached.
    pub(crate) oracle: OnceLock<Arc<dmalab_ownership::Publisher>>,
}

impl Shared {
    pub(crate) fn nqueues(&self) -> u16 {
        self.queues.len() as u16
    }

    pub(crate) fn is_fatal(&self) -> bool {
        DevStatus::from_bits(self.status.load(Ordering::SeqCst)).fatal()
    }

    fn raise(&self, vector: u16, cause: u32) {
        self.irq_cause.fetch_or(cause, Ordering::SeqCst);
        let delivered = self.irq.raise(vector);
        self.log.counters.irqs.fetch_add(1, Ordering::Relaxed);
        self.log.record(|| Event::Irq { vector, delivered });
    }

    pub(crate) fn raise_queue_irq(&self, q: u16) {
        self.raise(q, abi::irq_cause_queue(usize::from(q)));
    }

    /// Sets sticky error bits and raises the error vector.
    pub(crate) fn set_error(&self, bits: ErrorBits) {
        self.error.fetch_or(bits.into_bits(), Ordering::SeqCst);
        if bits.fatal() {
            self.status.fetch_or(
                DevStatus::new().with_fatal(true).into_bits(),
                Ordering::SeqCst,
            );
        }
        self.raise(self.nqueues(), abi::IRQ_CAUSE_ERROR);
    }
}
