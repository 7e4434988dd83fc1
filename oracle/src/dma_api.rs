//! The DMA API's own hand-overs of streaming mappings, for the memory a request's descriptor
//! does not say (yet, or any more) the device owns.
//!
//! The device's windows (`checker.rs`) cover a request from its doorbell to its completion. The
//! DMA API's rules are wider: from `dma_map_sgtable` until `dma_sync_*_for_cpu` or the unmap
//! the memory is the device's, whether or not a descriptor names it. A driver that reads a
//! result after the completion but before the sync for the CPU is wrong on every machine whose
//! caches are not coherent with DMA, or whose DMA goes through bounce buffers, and right by
//! luck on this one. The plugin sees those calls at their entry (addresses from `System.map`,
//! arguments from the registers, the scatter-gather list from guest memory) when a module makes
//! them, and keeps the device-owned ranges here; `checker.rs` checks accesses against them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) use dmalab_ownership::dma_api::{parse_addresses, Range};
use dmalab_ownership::dma_api::{walk, DMA_TO_DEVICE, VMEMMAP_DEFAULT};
use dmalab_ownership::SpanIndex;

use crate::guest;

/// Which DMA API entry point an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// `dma_map_sgtable(dev, sgt, dir, attrs)` (or its Rust helper).
    MapTable,
    /// `dma_unmap_sgtable(dev, sgt, dir, attrs)` (the Rust helper: the C one is inline).
    UnmapTable,
    /// `dma_unmap_sg_attrs(dev, sg, nents, dir, attrs)`.
    UnmapSg,
    /// `__dma_sync_sg_for_cpu(dev, sg, nelems, dir)`.
    SyncForCpu,
    /// `__dma_sync_sg_for_device(dev, sg, nelems, dir)`.
    SyncForDevice,
}

thread_local! {
    /// This vCPU thread's copy of the ranges, and the version it belongs to.
    static RANGES: RefCell<(u64, SpanIndex<Range>)> = RefCell::new((u64::MAX, SpanIndex::default()));
}

/// The streaming mappings modules made, and who owns each.
#[derive(Default)]
pub(crate) struct Mappings {
    /// Hook addresses.
    pub(crate) hooks: Vec<(u64, Hook)>,
    /// Address of the kernel's `vmemmap_base` variable (to turn a `struct page *` into a
    /// guest-physical address), if `System.map` has it.
    pub(crate) vmemmap_symbol: Option<u64>,
    ranges: Mutex<Vec<Range>>,
    version: AtomicU64,
    /// Ranges the device owns now: accesses are checked only while this is non-zero.
    pub(crate) device_owned: AtomicU64,
    next_id: AtomicU64,
    pub(crate) calls: AtomicU64,
}

/// Arguments of a hooked call, from the registers at its first instruction.
pub(crate) struct Call {
    pub(crate) args: [u64; 4],
}

impl Mappings {
    /// Changes whenever the mappings change.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The hook at `pc`, if any.
    pub(crate) fn hook_at(&self, pc: u64) -> Option<Hook> {
        self.hooks.iter().find(|(a, _)| *a == pc).map(|&(_, h)| h)
    }

    /// A hooked call was made from a module.
    pub(crate) fn call(&self, hook: Hook, c: &Call) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let [_, a1, a2, _] = c.args;
        match hook {
            Hook::MapTable => {
                let Some(sgl) = guest::read_u64(a1) else {
                    return;
                };
                let Some(orig) = guest::read_u64(a1 + 8).map(|v| v >> 32) else {
                    return;
                };
                let vmemmap = self
                    .vmemmap_symbol
                    .and_then(guest::read_u64)
                    .unwrap_or(VMEMMAP_DEFAULT);
                let entries = walk(guest::read_u64, sgl, orig as usize, vmemmap);
                let id = self.next_id.fetch_add(1, Ordering::Relaxed) as u32;
                let mut ranges = self.lock();
                // a list mapped again (no unmap seen) starts over
                ranges.retain(|r| r.sgl != sgl);
                for (start, len) in entries {
                    ranges.push(Range {
                        sgl,
                        id,
                        start,
                        len,
                        device: true,
                        to_device: a2 & 0xffff_ffff == DMA_TO_DEVICE,
                    });
                }
                self.publish(&ranges);
            }
            Hook::UnmapTable => {
                if let Some(sgl) = guest::read_u64(a1) {
                    let mut ranges = self.lock();
                    ranges.retain(|r| r.sgl != sgl);
                    self.publish(&ranges);
                }
            }
            Hook::UnmapSg => {
                let mut ranges = self.lock();
                ranges.retain(|r| r.sgl != a1);
                self.publish(&ranges);
            }
            Hook::SyncForCpu | Hook::SyncForDevice => {
                let mut ranges = self.lock();
                for r in ranges.iter_mut().filter(|r| r.sgl == a1) {
                    r.device = hook == Hook::SyncForDevice;
                }
                self.publish(&ranges);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Range>> {
        self.ranges.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, ranges: &[Range]) {
        self.device_owned.store(
            ranges.iter().filter(|r| r.device).count() as u64,
            Ordering::Release,
        );
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The device-owned range that an access breaks, if any.
    pub(crate) fn breaks(&self, gpa: u64, size: u64, store: bool) -> Option<Range> {
        if self.device_owned.load(Ordering::Acquire) == 0 {
            return None;
        }
        RANGES.with(|cell| {
            let mut cache = cell.borrow_mut();
            let v = self.version.load(Ordering::Acquire);
            if cache.0 != v {
                let index = &mut cache.1;
                index.items_mut().clone_from(&self.lock());
                index.sort();
                cache.0 = v;
            }
            let found = cache
                .1
                .overlapping(gpa, size)
                .find(|r| r.forbids(gpa, size, store))
                .copied();
            found
        })
    }
}
