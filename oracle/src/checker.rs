//! The checks: every RAM access against the live windows, every store to the device's BAR0
//! held until the device has handled it, violations written as JSON lines.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dmalab_abi as abi;
use dmalab_ownership::{Kind, Reader, Window, WindowIndex};

use crate::dma_api::{Mappings, Range};

/// The `queue` a violation of a DMA API mapping is reported with (no request owns it; its
/// `tag` is the mapping's number).
pub(crate) const MAPPING_QUEUE: u16 = u16::MAX;

/// How long a vCPU waits for the device to handle a BAR0 store before the oracle gives up on
/// that one (and says so in its summary): generous, a slow shared machine must not trip it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Distinct violations recorded at most (each distinct (kind, request, PC) once, with a count).
const MAX_RECORDS: usize = 10_000;

/// What the plugin was told.
pub(crate) struct Config {
    pub(crate) table: PathBuf,
    pub(crate) out: PathBuf,
}

/// One distinct violation: (kind, queue, tag, pc).
type Key = (&'static str, u16, u32, u64);

struct Record {
    first_gpa: u64,
    size: u64,
    window: Window,
    count: u64,
}

/// The checker, shared by every vCPU.
pub(crate) struct Checker {
    table: Reader,
    out: Mutex<BufWriter<File>>,
    /// BAR0 stores the guest made (the device's count must catch up with it).
    bar_stores: AtomicU64,
    records: Mutex<HashMap<Key, Record>>,
    checked: AtomicU64,
    sync_waits: AtomicU64,
    sync_timeouts: AtomicU64,
    /// Instructions per request, when counting.
    counter: std::sync::OnceLock<std::sync::Arc<dmalab_ownership::counting::Counter>>,
    /// The streaming mappings modules made through the DMA API, and who owns each.
    pub(crate) mappings: Mappings,
}

thread_local! {
    /// This vCPU thread's copy of the windows, indexed, and the table sequence it belongs to.
    static WINDOWS: RefCell<(u64, WindowIndex)> = RefCell::new((u64::MAX, WindowIndex::default()));
}

/// The name of a violation of a window of `kind` by a load or store.
fn violation_kind(kind: Kind, store: bool) -> &'static str {
    match (kind, store) {
        (Kind::ReadOwned, _) => "cpu_write_to_read_owned",
        (Kind::WriteOwned, true) => "cpu_write_to_write_owned",
        (Kind::WriteOwned, false) => "cpu_read_of_write_owned",
        (Kind::Descriptor, _) => "cpu_write_to_posted_descriptor",
    }
}

impl Checker {
    pub(crate) fn new(cfg: Config) -> Result<Checker, String> {
        let table = Reader::open(&cfg.table)
            .map_err(|e| format!("ownership table {}: {e}", cfg.table.display()))?;
        let out = File::create(&cfg.out)
            .map_err(|e| format!("violations file {}: {e}", cfg.out.display()))?;
        // Start from the device's count (0 unless the device served an earlier client).
        let start = table.mmio_writes();
        Ok(Checker {
            table,
            out: Mutex::new(BufWriter::new(out)),
            bar_stores: AtomicU64::new(start),
            records: Mutex::new(HashMap::new()),
            checked: AtomicU64::new(0),
            sync_waits: AtomicU64::new(0),
            sync_timeouts: AtomicU64::new(0),
            counter: std::sync::OnceLock::new(),
            mappings: Mappings::default(),
        })
    }

    /// Whether a store to guest-physical `gpa` is a store to the device's registers (BAR0
    /// below the MSI-X table and PBA, which QEMU emulates itself). QEMU 10.2 reports MMIO
    /// accesses to plugins as RAM (`is_io` false, no region name), so the device tells the
    /// oracle where the guest put BAR0, and the address decides.
    pub(crate) fn is_register_store(&self, gpa: u64) -> bool {
        let bar0 = self.table.bar0();
        bar0 != 0 && (bar0..bar0 + u64::from(abi::MSIX_TABLE_OFFSET)).contains(&gpa)
    }

    /// Counts instructions per request with `counter` (its doorbell marks come from here).
    pub(crate) fn count_with(&self, counter: std::sync::Arc<dmalab_ownership::counting::Counter>) {
        let _ = self.counter.set(counter);
    }

    /// A store to the device's registers: hold this vCPU until the device has handled it, so
    /// the windows it opens (a doorbell) are published first.
    pub(crate) fn register_store(&self) {
        if let Some(c) = self.counter.get() {
            c.doorbell();
        }
        let mine = self.bar_stores.fetch_add(1, Ordering::AcqRel) + 1;
        if self.table.mmio_writes() >= mine {
            return;
        }
        self.sync_waits.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        while self.table.mmio_writes() < mine {
            if Instant::now() > deadline {
                self.sync_timeouts.fetch_add(1, Ordering::Relaxed);
                // start again from what the device says, or every later store would wait too
                self.bar_stores
                    .store(self.table.mmio_writes(), Ordering::Release);
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Whether nothing is owned by the device now (no window, no device-owned mapping), so no
    /// access can break ownership.
    pub(crate) fn idle(&self) -> bool {
        self.table.count() == 0 && self.mappings.device_owned.load(Ordering::Acquire) == 0
    }

    /// Changes whenever what the device owns may have changed (the window table's sequence,
    /// the DMA API mappings' version).
    pub(crate) fn generation(&self) -> (u64, u64) {
        (self.table.seq(), self.mappings.version())
    }

    /// A memory access at guest-physical `gpa` by the instruction at `pc`; `caller` finds who
    /// called the function `pc` is in (asked only when the access is a violation).
    pub(crate) fn access(
        &self,
        gpa: u64,
        size: u64,
        store: bool,
        pc: u64,
        caller: &dyn Fn() -> Option<u64>,
    ) {
        if store && self.is_register_store(gpa) {
            self.register_store();
            return;
        }
        if let Some(r) = self.mappings.breaks(gpa, size, store) {
            self.record_mapping(&r, gpa, size, store, pc, caller);
        }
        if self.table.count() == 0 {
            return;
        }
        self.checked.fetch_add(1, Ordering::Relaxed);
        WINDOWS.with(|cell| {
            let mut cache = cell.borrow_mut();
            if self.table.seq() != cache.0 {
                let (seq, index) = &mut *cache;
                *seq = self.table.snapshot(index.items_mut());
                index.sort();
            }
            for w in cache.1.overlapping(gpa, size) {
                if w.kind.forbids(store) {
                    self.record(w, gpa, size, store, pc, caller);
                }
            }
        });
    }

    /// An access to memory a DMA API mapping gives the device (no descriptor may name it).
    fn record_mapping(
        &self,
        r: &Range,
        gpa: u64,
        size: u64,
        store: bool,
        pc: u64,
        caller: &dyn Fn() -> Option<u64>,
    ) {
        let kind = if store {
            "cpu_write_to_device_owned_mapping"
        } else {
            "cpu_read_of_device_owned_mapping"
        };
        let w = Window {
            start: r.start,
            len: r.len,
            queue: MAPPING_QUEUE,
            tag: r.id,
            slot: 0,
            kind: Kind::WriteOwned,
        };
        self.record_as(kind, &w, gpa, size, pc, caller);
    }

    fn record(
        &self,
        w: &Window,
        gpa: u64,
        size: u64,
        store: bool,
        pc: u64,
        caller: &dyn Fn() -> Option<u64>,
    ) {
        self.record_as(violation_kind(w.kind, store), w, gpa, size, pc, caller);
    }

    fn record_as(
        &self,
        kind: &'static str,
        w: &Window,
        gpa: u64,
        size: u64,
        pc: u64,
        caller: &dyn Fn() -> Option<u64>,
    ) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let key = (kind, w.queue, w.tag, pc);
        if let Some(r) = records.get_mut(&key) {
            r.count += 1;
            return;
        }
        if records.len() >= MAX_RECORDS {
            return;
        }
        records.insert(
            key,
            Record {
                first_gpa: gpa,
                size,
                window: *w,
                count: 1,
            },
        );
        // written at once: a guest that crashes next still leaves the evidence
        let caller = caller().map_or("null".to_string(), |c| c.to_string());
        let line = format!(
            "{{\"event\":\"violation\",\"kind\":\"{kind}\",\"queue\":{},\"tag\":{},\"slot\":{},\"gpa\":{gpa},\"size\":{size},\"pc\":{pc},\"caller\":{caller},\"window_start\":{},\"window_len\":{}}}\n",
            w.queue, w.tag, w.slot, w.start, w.len
        );
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    /// At QEMU exit: one summary line (how much was checked, repeats per violation).
    pub(crate) fn finish(&self) {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for ((kind, queue, tag, pc), r) in records.iter() {
            let _ = writeln!(
                out,
                "{{\"event\":\"repeats\",\"kind\":\"{kind}\",\"queue\":{queue},\"tag\":{tag},\"pc\":{pc},\"count\":{},\"first_gpa\":{},\"size\":{},\"slot\":{}}}",
                r.count, r.first_gpa, r.size, r.window.slot
            );
        }
        if let Some(c) = self.counter.get() {
            let _ = writeln!(out, "{}", c.summary());
        }
        let _ = writeln!(
            out,
            "{{\"event\":\"summary\",\"checked\":{},\"violations\":{},\"bar_stores\":{},\"sync_waits\":{},\"sync_timeouts\":{},\"table_overflow\":{},\"dma_api_calls\":{}}}",
            self.checked.load(Ordering::Relaxed),
            records.len(),
            self.bar_stores.load(Ordering::Relaxed),
            self.sync_waits.load(Ordering::Relaxed),
            self.sync_timeouts.load(Ordering::Relaxed),
            self.table.overflow(),
            self.mappings.calls.load(Ordering::Relaxed)
        );
        let _ = out.flush();
    }
}
