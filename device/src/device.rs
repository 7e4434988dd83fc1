//! The device: BAR0 register semantics, queue workers, resets and error reporting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use dmalab_abi as abi;
use log::{debug, warn};

use crate::direct;
use crate::direct_regs::{self, DirectShared};
use crate::engine::InternalMemory;
use crate::eventlog::{Event, EventLog};
use crate::faults::{Injector, RuleSet};
use crate::interrupts::InterruptSink;
use crate::memory::{Dir, DmaMemory};
use crate::queue::{QueueRegs, QueueShared};
use crate::registers::{DevCtrl, DevStatus, ErrorBits, QueueCtrl};
use crate::shared::Shared;
use crate::worker::Worker;

/// How an instance is built.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Queue pairs, 1..=`MAX_QUEUES`.
    pub queues: usize,
    /// Internal memory in bytes.
    pub internal_mem: usize,
    /// Fault rules in force from the start.
    pub faults: RuleSet,
    /// Address bits the device drives, `abi::MIN_DMA_BITS..=64` (`CAP_DMA_BITS`): any DMA to
    /// or beyond 2^bits is refused ([`DmaMemory::set_reach`]).
    pub dma_bits: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            queues: 4,
            internal_mem: 64 << 20,
            faults: RuleSet::default(),
            dma_bits: 64,
        }
    }
}

/// The offset of a BAR0 access as usize, if it is 32- or 64-bit wide, 4-byte aligned and lies
/// inside BAR0 (so no arithmetic on it can overflow).
fn bar_offset(offset: u64, len: usize) -> Option<usize> {
    let end = offset.checked_add(len as u64)?;
    (offset.is_multiple_of(4) && (len == 4 || len == 8) && end <= abi::BAR0_SIZE as u64)
        .then_some(offset as usize)
}

/// A dmalab device instance with its worker threads.
pub struct Device {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Device {
    /// Builds the device and starts one worker thread per queue.
    pub fn new(
        cfg: &DeviceConfig,
        mem: Arc<dyn DmaMemory>,
        irq: Arc<dyn InterruptSink>,
        log: Arc<EventLog>,
    ) -> std::io::Result<Self> {
        if !(1..=abi::MAX_QUEUES).contains(&cfg.queues) {
            return Err(std::io::Error::other(format!(
                "queue count {} is not in 1..={}",
                cfg.queues,
                abi::MAX_QUEUES
            )));
        }
        if !(abi::MIN_DMA_BITS..=64).contains(&cfg.dma_bits) {
            return Err(std::io::Error::other(format!(
                "DMA address width {} is not in {}..=64 bits",
                cfg.dma_bits,
                abi::MIN_DMA_BITS
            )));
        }
        mem.set_reach(cfg.dma_bits);
        let internal = InternalMemory::new(cfg.internal_mem)?;
        let (queues, receivers): (Vec<_>, Vec<_>) =
            (0..cfg.queues).map(|_| QueueShared::new()).unzip();
        let (direct, direct_rx) = DirectShared::new();
        let shared = Arc::new(Shared {
            mem,
            irq,
            log,
            internal,
            faults: Injector::try_new(&cfg.faults, cfg.queues)
                .map_err(|e| std::io::Error::other(format!("fault rules: {e}")))?,
            queues,
            direct,
            error: AtomicU32::new(0),
            status: AtomicU32::new(DevStatus::new().with_ready(true).into_bits()),
            coalesce: AtomicU32::new(0),
            irq_cause: AtomicU32::new(0),
            fault_epoch: AtomicU32::new(0),
            oracle: std::sync::OnceLock::new(),
            bus_master: std::sync::atomic::AtomicBool::new(true),
            dma_bits: cfg.dma_bits,
        });
        let mut workers = receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                let w = Worker::new(i as u16, shared.clone(), rx);
                std::thread::Builder::new()
                    .name(format!("dmalab-q{i}"))
                    .spawn(move || w.run())
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let s = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name("dmalab-direct".into())
                .spawn(move || direct::run(s, direct_rx))?,
        );
        Ok(Self { shared, workers })
    }

    /// The state the workers share (counters, internal memory).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Number of queue pairs.
    pub fn queues(&self) -> usize {
        self.shared.queues.len()
    }

    /// Number of interrupt vectors (queues + error vector).
    pub fn vectors(&self) -> u16 {
        self.shared.nqueues() + 1
    }

    /// Publishes ownership windows to `table` from now on (the oracle is on): every posted
    /// descriptor's windows open when its doorbell is handled and close when its completion is
    /// written or a reset discards it. Returns false if a table was attached already.
    pub fn attach_oracle(&self, table: Arc<dmalab_ownership::Publisher>) -> bool {
        self.shared.oracle.set(table).is_ok()
    }

    /// Tells the oracle where the guest put BAR0 (its plugin recognises register stores by
    /// guest-physical address).
    pub fn set_oracle_bar0(&self, base: u64) {
        if let Some(o) = self.shared.oracle.get() {
            o.set_bar0(base);
        }
    }

    /// Closes every ownership window (the client and its guest are gone).
    pub fn release_windows(&self) {
        if let Some(o) = self.shared.oracle.get() {
            o.close_all();
        }
    }

    /// The queues that are enabled and have a ring overlapping guest range `[iova, iova + size)`.
    ///
    /// A driver that unmaps such a range is freeing memory the device may still fetch
    /// descriptors from or write completions to: it must reset or disable the queue first.
    /// `size` 0 overlaps nothing; a range running past the end of the address space is clipped.
    pub fn enabled_rings_in(&self, iova: u64, size: u64) -> Vec<u16> {
        let end = iova.saturating_add(size);
        let overlaps = |base: u64, len: u64| base < end && iova < base.saturating_add(len);
        let mut found = Vec::new();
        for (qi, q) in self.shared.queues.iter().enumerate() {
            let r = *q.regs.lock().unwrap();
            let n = u64::from(r.size);
            if r.enabled
                && (overlaps(r.sq_base, n * abi::DESC_SIZE as u64)
                    || overlaps(r.cq_base, n * abi::COMPLETION_SIZE as u64))
            {
                found.push(qi as u16);
            }
        }
        found
    }

    /// A BAR0 read. Registers are 32 bits wide; 64-bit reads return two registers.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.shared
            .log
            .counters
            .bar_reads
            .fetch_add(1, Ordering::Relaxed);
        self.shared.log.record(|| Event::BarRead { offset });
        let Some(off) = bar_offset(offset, data.len()) else {
            warn!(
                "BAR0 read of {} bytes at {offset:#x} is not a 32/64-bit aligned access inside BAR0",
                data.len()
            );
            data.fill(0xff);
            return;
        };
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&self.read32(off + 4 * i).to_le_bytes());
        }
    }

    /// A BAR0 write. Registers are 32 bits wide; 64-bit writes set two registers.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        self.mmio_write_inner(offset, data);
        // Counted after everything the write did (a doorbell's windows are published): the
        // oracle holds the guest's vCPU until this count catches up with the stores it saw.
        if let Some(o) = self.shared.oracle.get() {
            o.mmio_write_done();
        }
    }

    fn mmio_write_inner(&self, offset: u64, data: &[u8]) {
        let Some(off) = bar_offset(offset, data.len()) else {
            warn!(
                "BAR0 write of {} bytes at {offset:#x} ignored: not a 32/64-bit aligned access inside BAR0",
                data.len()
            );
            return;
        };
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            self.write32(off + 4 * i, u32::from_le_bytes(chunk.try_into().unwrap()));
        }
    }

    fn read32(&self, off: usize) -> u32 {
        let s = &self.shared;
        match off {
            abi::REG_ID => abi::DEVICE_MAGIC,
            abi::REG_VERSION => abi::VERSION,
            abi::REG_CAP_QUEUES => s.queues.len() as u32,
            abi::REG_CAP_RING => abi::MAX_RING_ENTRIES,
            abi::REG_CAP_SG => abi::MAX_SG_SEGMENTS,
            abi::REG_CAP_OPCODES => abi::SUPPORTED_OPCODES,
            abi::REG_MEM_SIZE_LO => s.internal.size() as u32,
            abi::REG_MEM_SIZE_HI => (s.internal.size() >> 32) as u32,
            abi::REG_DEV_CTRL => 0,
            abi::REG_DEV_STATUS => s.status.load(Ordering::SeqCst),
            abi::REG_ERROR => s.error.load(Ordering::SeqCst),
            abi::REG_IRQ_COALESCE => s.coalesce.load(Ordering::SeqCst),
            abi::REG_IRQ_CAUSE => s.irq_cause.load(Ordering::SeqCst),
            abi::REG_CAP_MAX_XFER => abi::MAX_TRANSFER,
            abi::REG_CAP_DMA_BITS => s.dma_bits,
            abi::REG_DMA_SRC_LO..=abi::REG_DMA_BYTES => s.direct.read(off),
            abi::REG_FAULT_EPOCH => s.fault_epoch.load(Ordering::SeqCst),
            o if (abi::QUEUE_BASE..abi::QUEUE_BASE + abi::QUEUE_STRIDE * s.queues.len())
                .contains(&o) =>
            {
                let q = &s.queues[(o - abi::QUEUE_BASE) / abi::QUEUE_STRIDE];
                let r = *q.regs.lock().unwrap();
                match (o - abi::QUEUE_BASE) % abi::QUEUE_STRIDE {
                    abi::Q_SQ_BASE_LO => r.sq_base as u32,
                    abi::Q_SQ_BASE_HI => (r.sq_base >> 32) as u32,
                    abi::Q_CQ_BASE_LO => r.cq_base as u32,
                    abi::Q_CQ_BASE_HI => (r.cq_base >> 32) as u32,
                    abi::Q_SIZE => r.size,
                    abi::Q_STATUS => r.status(),
                    abi::Q_SQ_HEAD => r.sq_head,
                    abi::Q_CQ_TAIL => r.cq_tail,
                    abi::Q_DONE => q.done.load(Ordering::Relaxed),
                    _ => 0,
                }
            }
            o if (abi::MSIX_PBA_OFFSET as usize..abi::MSIX_PBA_OFFSET as usize + 8)
                .contains(&o) =>
            {
                0
            }
            o => {
                debug!("read of unassigned BAR0 offset {o:#x}");
                0
            }
        }
    }

    fn write32(&self, off: usize, v: u32) {
        let s = &self.shared;
        match off {
            abi::REG_DEV_CTRL => {
                if DevCtrl::from_bits(v).reset() {
                    self.reset();
                }
            }
            abi::REG_ERROR => {
                s.error.fetch_and(!v, Ordering::SeqCst);
            }
            abi::REG_IRQ_COALESCE => s.coalesce.store(v, Ordering::SeqCst),
            abi::REG_DMA_SRC_LO..=abi::REG_DMA_BYTES => self.write_direct(off, v),
            abi::REG_FAULT_EPOCH => {
                s.fault_epoch.store(v, Ordering::SeqCst);
                s.faults.begin_epoch(u64::from(v));
                s.log.record(|| Event::Epoch { epoch: v });
            }
            abi::REG_IRQ_CAUSE => {
                s.irq_cause.fetch_and(!v, Ordering::SeqCst);
            }
            o if (abi::QUEUE_BASE..abi::QUEUE_BASE + abi::QUEUE_STRIDE * s.queues.len())
                .contains(&o) =>
            {
                let qi = (o - abi::QUEUE_BASE) / abi::QUEUE_STRIDE;
                self.write_queue(qi, (o - abi::QUEUE_BASE) % abi::QUEUE_STRIDE, v);
            }
            o => debug!("write of {v:#x} to read-only or unassigned BAR0 offset {o:#x} ignored"),
        }
    }

    fn bad_doorbell(&self, what: String) {
        warn!("{what}");
        self.shared.log.record(|| Event::Error {
            queue: None,
            tag: None,
            status: None,
            what,
        });
        self.shared
            .set_error(ErrorBits::new().with_bad_doorbell(true));
    }

    fn write_direct(&self, reg: usize, v: u32) {
        let s = &self.shared;
        if matches!(
            reg,
            abi::REG_DMA_STATUS | abi::REG_DMA_RESULT | abi::REG_DMA_BYTES
        ) {
            return debug!("direct block: write to read-only register {reg:#x} ignored");
        }
        match s.direct.write(reg, v) {
            Err(direct_regs::Busy) => self.bad_doorbell(format!(
                "direct transfer: register {reg:#x} written while a transfer runs"
            )),
            Ok(Some(d)) => {
                if let Some(o) = s.oracle.get() {
                    // Published before the MMIO write completes (see mmio_write): the guest
                    // cannot touch the buffers before the oracle knows the device owns them.
                    let view = s.mem.view();
                    o.open(&crate::ownership::windows_of_descriptor(
                        &view,
                        abi::DIRECT_QUEUE,
                        0,
                        &d,
                        None,
                    ));
                }
            }
            Ok(None) => {}
        }
    }

    fn write_queue(&self, qi: usize, reg: usize, v: u32) {
        let q = &self.shared.queues[qi];
        if reg == abi::Q_CTRL {
            let ctrl = QueueCtrl::from_bits(v);
            if ctrl.reset() {
                let discarded = q.reset();
                if let Some(o) = self.shared.oracle.get() {
                    o.close_queue(qi as u16);
                }
                self.shared.faults.on_reset();
                self.shared
                    .log
                    .counters
                    .resets
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.log.record(|| Event::Reset {
                    queue: Some(qi as u16),
                    discarded,
                });
                return;
            }
            let mut r = q.regs.lock().unwrap();
            if ctrl.enable() && !r.enabled {
                if !r.valid_geometry() {
                    let r = *r;
                    return self.bad_doorbell(format!(
                        "queue {qi}: enable refused: ring size {} / SQ base {:#x} / CQ base {:#x} invalid",
                        r.size, r.sq_base, r.cq_base
                    ));
                }
                if let Err(e) = self.rings_mapped(&r) {
                    drop(r);
                    return self.bad_doorbell(format!("queue {qi}: enable refused: {e}"));
                }
                r.enabled = true;
            } else if !ctrl.enable() {
                // Disabling stops fetching after the descriptor in flight; the ring indices stay.
                r.enabled = false;
            }
            drop(r);
            q.kick();
            return;
        }
        let mut r = q.regs.lock().unwrap();
        let geometry = matches!(
            reg,
            abi::Q_SQ_BASE_LO
                | abi::Q_SQ_BASE_HI
                | abi::Q_CQ_BASE_LO
                | abi::Q_CQ_BASE_HI
                | abi::Q_SIZE
        );
        if geometry && r.enabled {
            drop(r);
            return self.bad_doorbell(format!(
                "queue {qi}: ring register {reg:#x} written while enabled"
            ));
        }
        if geometry {
            // New geometry, new rings: indices from a previous geometry could point past the
            // end of the new rings, so they start over (as after a queue reset).
            (r.sq_head, r.sq_tail, r.cq_head, r.cq_tail) = (0, 0, 0, 0);
            r.phase = true;
        }
        let lo = |x: u64| (x & !0xffff_ffff) | u64::from(v);
        let hi = |x: u64| (x & 0xffff_ffff) | (u64::from(v) << 32);
        match reg {
            abi::Q_SQ_BASE_LO => r.sq_base = lo(r.sq_base),
            abi::Q_SQ_BASE_HI => r.sq_base = hi(r.sq_base),
            abi::Q_CQ_BASE_LO => r.cq_base = lo(r.cq_base),
            abi::Q_CQ_BASE_HI => r.cq_base = hi(r.cq_base),
            abi::Q_SIZE => r.size = v,
            abi::Q_SQ_TAIL | abi::Q_CQ_HEAD => {
                if !r.enabled || v >= r.size {
                    let size = r.size;
                    drop(r);
                    return self.bad_doorbell(format!(
                        "queue {qi}: doorbell {reg:#x} = {v} refused (ring size {size}, enabled or not)"
                    ));
                }
                if reg == abi::Q_SQ_TAIL {
                    if let Some(o) = self.shared.oracle.get() {
                        // Before the worker can see the new tail: windows open before any
                        // completion can close them.
                        self.open_windows(o, qi, &r, v);
                    }
                    r.sq_tail = v;
                } else {
                    // The driver may return only slots the device has written: from its last
                    // CQ_HEAD up to CQ_TAIL (taken before a completion becomes visible).
                    let dist = |from: u32, to: u32| (to + r.size - from) % r.size;
                    if dist(r.cq_head, v) > dist(r.cq_head, r.cq_tail) {
                        let (head, tail) = (r.cq_head, r.cq_tail);
                        drop(r);
                        return self.bad_doorbell(format!(
                            "queue {qi}: CQ_HEAD = {v} refused: the device has written completions up to slot {tail} (CQ_TAIL) and the driver had returned up to {head}, so the driver took a slot the device never wrote: an old completion taken for a new one (after the completion ring wraps, new completions carry the other phase bit)"
                        ));
                    }
                    r.cq_head = v;
                }
                drop(r);
                q.kick();
            }
            _ => debug!("queue {qi}: write to read-only register {reg:#x} ignored"),
        }
    }

    /// Opens the ownership windows of the descriptors the doorbell `new_tail` posts on queue
    /// `qi` (from the current tail up to it).
    fn open_windows(
        &self,
        table: &dmalab_ownership::Publisher,
        qi: usize,
        r: &QueueRegs,
        new_tail: u32,
    ) {
        let view = self.shared.mem.view();
        let mut windows = Vec::new();
        let mut slot = r.sq_tail;
        while slot != new_tail && r.size != 0 {
            let addr = r
                .sq_base
                .wrapping_add(u64::from(slot) * abi::DESC_SIZE as u64);
            windows.extend(crate::ownership::windows_of(&view, qi as u16, slot, addr));
            slot = (slot + 1) % r.size;
        }
        table.open(&windows);
    }

    /// Both rings of `r` lie in DMA-mapped memory within the device's reach (the completion
    /// ring in writable memory); the error names the ring.
    fn rings_mapped(&self, r: &QueueRegs) -> Result<(), String> {
        let view = self.shared.mem.view();
        let n = u64::from(r.size);
        view.slices(r.sq_base, n * abi::DESC_SIZE as u64, Dir::FromGuest)
            .map_err(|e| format!("the submission ring (SQ_BASE_LO/HI) {e}"))?;
        view.slices(r.cq_base, n * abi::COMPLETION_SIZE as u64, Dir::ToGuest)
            .map_err(|e| format!("the completion ring (CQ_BASE_LO/HI) {e}"))?;
        Ok(())
    }

    /// Bus Master Enable, as the PCI command register says (the vfio-user server calls this on
    /// every configuration write). Off, the device touches no guest memory: a doorbell fetches
    /// nothing (the descriptors wait), a direct transfer completes with `DMA_FAULT`, a
    /// descriptor already fetched fails with `DMA_FAULT` and its completion is not written,
    /// each with an `error` event that names the cause. Turned on, the queues look at their
    /// rings again.
    pub fn set_bus_master(&self, on: bool) {
        let was = self
            .shared
            .bus_master
            .swap(on, std::sync::atomic::Ordering::SeqCst);
        if on && !was {
            for q in &self.shared.queues {
                q.kick();
            }
        }
    }

    /// Device reset: every queue is reset (DMA in flight finishes first, nothing after),
    /// errors, coalescing and internal memory are cleared.
    pub fn reset(&self) {
        let s = &self.shared;
        let mut discarded = 0;
        for q in &s.queues {
            discarded += q.reset();
        }
        s.direct.reset();
        if let Some(o) = s.oracle.get() {
            o.close_all();
        }
        s.error.store(0, Ordering::SeqCst);
        s.coalesce.store(0, Ordering::SeqCst);
        s.irq_cause.store(0, Ordering::SeqCst);
        s.internal.clear();
        s.status.store(
            DevStatus::new().with_ready(true).into_bits(),
            Ordering::SeqCst,
        );
        s.faults.on_reset();
        s.log.counters.resets.fetch_add(1, Ordering::Relaxed);
        s.log.record(|| Event::Reset {
            queue: None,
            discarded,
        });
        s.log.flush();
    }

    /// Stops the workers (after the descriptor each is executing) and writes the final counters.
    pub fn shutdown(&mut self) {
        for q in &self.shared.queues {
            q.stop();
        }
        self.shared.direct.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.shared.log.finish();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.shutdown();
        }
    }
}
