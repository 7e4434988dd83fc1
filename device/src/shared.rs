//! The state the MMIO path and the queue workers share: memory, interrupts, the event log,
//! internal memory, fault rules, the queues' registers and the device-level registers.
//! Both `device` (register semantics) and `worker` (descriptor execution) build on it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Descriptor};

use crate::direct_regs::DirectShared;
use crate::engine::InternalMemory;
use crate::eventlog::{Event, EventLog};
use crate::faults::Injector;
use crate::interrupts::InterruptSink;
use crate::memory::{Dir, DmaMemory, MemView};
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
    /// The direct-transfer block (`DMA_*` registers).
    pub(crate) direct: DirectShared,
    pub(crate) error: AtomicU32,
    pub(crate) status: AtomicU32,
    pub(crate) coalesce: AtomicU32,
    pub(crate) irq_cause: AtomicU32,
    /// The last `FAULT_EPOCH` written.
    pub(crate) fault_epoch: AtomicU32,
    /// The ownership table of the oracle, when one is attached.
    pub(crate) oracle: OnceLock<Arc<dmalab_ownership::Publisher>>,
    /// Bus Master Enable of the PCI command register: without it the device reads and writes
    /// no guest memory (rings, data, completions). The model alone has no configuration space
    /// and starts enabled; the vfio-user server follows the register ([`Device::set_bus_master`]).
    ///
    /// [`Device::set_bus_master`]: crate::device::Device::set_bus_master
    pub(crate) bus_master: AtomicBool,
    /// Address bits the device drives (`CAP_DMA_BITS`).
    pub(crate) dma_bits: u32,
}

pub(crate) use crate::eventlog::BUS_MASTER_OFF;

impl Shared {
    pub(crate) fn nqueues(&self) -> u16 {
        self.queues.len() as u16
    }

    /// Whether the device may touch guest memory now (Bus Master Enable).
    pub(crate) fn bus_master(&self) -> bool {
        self.bus_master.load(Ordering::SeqCst)
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

    /// A faulty device reaching past descriptor `d` of `queue` (an injected `dma_outside`):
    /// the model refuses the access (nothing is written) and reports it as a DMA violation.
    pub(crate) fn dma_outside(
        &self,
        view: &MemView,
        queue: u16,
        d: &Descriptor,
        offset: u64,
        len: u64,
    ) {
        // just past the descriptor's guest-memory side (its destination if it writes the guest)
        let writes_guest = abi::Opcode::from_raw(d.opcode).is_some_and(abi::Opcode::dst_in_guest);
        let base = if writes_guest { d.dst } else { d.src };
        let addr = base.wrapping_add(u64::from(d.len)).wrapping_add(offset);
        let mapped = view.slices(addr, len, Dir::ToGuest).is_ok();
        let what = format!(
            "queue {queue}: refused a device DMA of {len} bytes at {addr:#x}, outside descriptor {} ({})",
            d.tag,
            if mapped { "mapped guest memory" } else { "unmapped IOVA" }
        );
        self.log.record(|| Event::Error {
            queue: Some(queue),
            tag: Some(d.tag),
            status: None,
            what,
        });
        self.set_error(ErrorBits::new().with_dma_violation(true));
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

/// Sleeps for `d` unless `stop` says so first (checked every 5 ms); true if it slept it all.
/// Injected delays wait here, so that a reset cuts them short.
pub(crate) fn sleep_unless(d: Duration, stop: impl Fn() -> bool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop() {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(5)));
    }
}
