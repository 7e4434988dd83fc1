// SPDX-License-Identifier: GPL-2.0

//! dmalab: driver for the dmalab DMA test device (docs/datasheet.md).
//!
//! What it shows, and which part of the kernel's Rust DMA API (Linux 7.3) it uses where:
//!
//! - Rings (submission, completion, scatter-gather tables) are `dma::Coherent` allocations made
//!   once at probe and accessed with `io_read!`/`io_write!`, i.e. volatile accesses, since the
//!   device writes them concurrently. Ordering to the device is `dma_mb(Write)` before the
//!   doorbell and `dma_mb(Read)` after seeing a completion's phase bit.
//! - Data moves through bounce buffers: a per-queue pool of 4 KiB pages carved out of 64 KiB
//!   `Coherent` blocks. User data is copied in and out. A C driver would map the user's pages
//!   with `dma_map_sg` (streaming DMA); 7.3's Rust API has no streaming map/sync calls, and its
//!   `SGTable` maps a vmalloc buffer once for the device's lifetime without CPU sync points,
//!   which suits a long-lived buffer but not per-request user data. So requests that span more
//!   than one bounce block (or ask for it) get a device scatter-gather list built from the pool's
//!   page addresses instead.
//! - Allocation under a vIOMMU costs one IOMMU map per 4 KiB page, so everything is allocated
//!   at probe and reused; nothing is allocated per request except a kernel bounce vector.
//! - The hot path never reads a BAR register (each read costs ~80 us under TCG): submission is
//!   descriptor writes plus one doorbell write; completion is read from memory in the interrupt
//!   handler, with one completion-head doorbell write per batch.
//! - Teardown obeys the `Coherent` drop contract: the device is reset (and the reset read back)
//!   before any DMA memory is freed, and every waiting caller is released with an error.

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::{Coherent, Device as _, DmaMask},
    io::Io,
    irq,
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    new_condvar, new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        Arc,
    },
};

/// Device and ioctl ABI, shared verbatim with the device model and the guest agent.
pub mod abi {
    include!("../../abi/regs.rs");
}
use abi::{Completion, Descriptor, DeviceInfo, QueueStats, Request, SgEntry, Stats};

// SAFETY: the ABI types below are `#[repr(C)]`, made only of integers (every bit pattern is
// valid) and have no padding: their sizes (64, 16, 16, 48, 72 and 64 * MAX_QUEUES + 24 bytes,
// each the sum of its fields) are asserted by `const` items at the end of `abi/regs.rs`, which
// this build compiles with the rest of that file.
unsafe impl kernel::transmute::FromBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for Completion {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Completion {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for SgEntry {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for SgEntry {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for DeviceInfo {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Stats {}

mod file;
mod interrupts;
mod pool;
mod queue;
mod ring;
mod state;

use file::MiscHolder;
use interrupts::{IrqHandler, QueueIrq, SharedIrq};
use pool::{FreeMap, Pool};
use queue::Queue;
use ring::{program_queue, RingState, Rings, Slot, SlotState};
use state::{atomic_update, DevState};

type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

/// Ring entries per queue; at most `RING - 1` requests are in flight per queue.
const RING: usize = 64;
/// Request slots per queue (tags index them).
const SLOTS: usize = RING - 1;
/// Bounce-pool page size.
const PAGE: usize = 4096;
/// Bytes per `Coherent` pool block.
const BLOCK: usize = 64 * 1024;
/// Blocks per queue: 4 MiB, enough for two 1 MiB COPYs in flight.
const BLOCKS: usize = 64;
const PAGES_PER_BLOCK: usize = BLOCK / PAGE;
const POOL_PAGES: usize = BLOCKS * PAGES_PER_BLOCK;
const SG_MAX: usize = abi::MAX_SG_SEGMENTS as usize;
const DEFAULT_TIMEOUT_MS: u32 = 5000;
/// Names of the misc devices; the index is the device's number.
const MISC_NAMES: [&CStr; 8] = [
    c"dmalab0", c"dmalab1", c"dmalab2", c"dmalab3", c"dmalab4", c"dmalab5", c"dmalab6", c"dmalab7",
];
static MISC_USED: Atomic<u32> = Atomic::new(0);

struct DmalabDriver;

/// Everything a binding owns. Field order is drop order: the misc device goes first (no new
/// opens), then the interrupt handlers, then the vectors they borrow; `Drop` has already reset
/// the device and freed the DMA memory by then.
struct DmalabData<'bound> {
    _misc: Pin<KBox<MiscHolder>>,
    _irqs: KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>,
    _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
    dev: Arc<DevState>,
    pdev: &'bound pci::Device,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <DmalabDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT, abi::PCI_DEVICE_ID as u32),
        ()
    )]
);

fn alloc_queue(pdev: &pci::Device<Core<'_>>, index: u16) -> Result<Pin<KBox<Queue>>> {
    let dev = pdev.as_ref();
    let rings = Rings {
        sq: Coherent::<Descriptor>::zeroed_slice(dev, RING, GFP_KERNEL)?,
        cq: Coherent::<Completion>::zeroed_slice(dev, RING, GFP_KERNEL)?,
        sg: Coherent::<SgEntry>::zeroed_slice(dev, SLOTS * 2 * SG_MAX, GFP_KERNEL)?,
    };
    let mut blocks = KVec::with_capacity(BLOCKS, GFP_KERNEL)?;
    for _ in 0..BLOCKS {
        blocks.push(
            Coherent::<u8>::zeroed_slice(dev, BLOCK, GFP_KERNEL)?,
            GFP_KERNEL,
        )?;
    }
    let ring = RingState {
        rings: Some(rings),
        sq_tail: 0,
        cq_head: 0,
        phase: true,
        outstanding: 0,
        slots: [Slot {
            state: SlotState::Free,
            generation: 0,
            start: None,
        }; SLOTS],
        stats: QueueStats::default(),
    };
    let pool = Pool {
        blocks: Some(blocks),
        free: FreeMap([u64::MAX; POOL_PAGES / 64]),
    };
    KBox::pin_init(
        pin_init!(Queue {
            index,
            ring <- new_spinlock_irq!(ring),
            ring_cv <- new_condvar!(),
            pool <- new_mutex!(pool),
            pool_cv <- new_condvar!(),
        }),
        GFP_KERNEL,
    )
}

impl DmalabDriver {
    fn do_probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
        if pdev.vendor_id() != pci::Vendor::REDHAT || pdev.device_id() != abi::PCI_DEVICE_ID {
            return Err(ENODEV);
        }
        pdev.enable_device_mem()?;
        pdev.set_master();
        // SAFETY: no DMA allocations or mappings exist for this device yet.
        let mask_bits = match unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>()) } {
            Ok(()) => 64,
            Err(_) => {
                // SAFETY: as above.
                unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<32>())? };
                32
            }
        };
        let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab")?;
        let magic = bar.read32(abi::REG_ID);
        let version = bar.read32(abi::REG_VERSION);
        if magic != abi::DEVICE_MAGIC {
            dev_err!(
                pdev,
                "not a dmalab device: ID register reads {:#x}\n",
                magic
            );
            return Err(ENODEV);
        }
        if (version >> 16) as u16 != abi::VERSION_MAJOR {
            dev_err!(
                pdev,
                "device interface v{}.{} is not supported (driver: v{}.x)\n",
                version >> 16,
                version & 0xffff,
                abi::VERSION_MAJOR
            );
            return Err(ENODEV);
        }
        // Start from a known state (an earlier driver may have left queues running).
        bar.write32(abi::CTRL_RESET, abi::REG_DEV_CTRL);
        let status = bar.read32(abi::REG_DEV_STATUS);
        if status & abi::STATUS_READY == 0 {
            dev_err!(
                pdev,
                "device not ready after reset (status {:#x})\n",
                status
            );
            return Err(EIO);
        }
        let nq = (bar.read32(abi::REG_CAP_QUEUES) as usize).min(abi::MAX_QUEUES);
        if nq == 0
            || bar.read32(abi::REG_CAP_RING) < RING as u32
            || bar.read32(abi::REG_CAP_SG) < SG_MAX as u32
        {
            dev_err!(pdev, "device capabilities too small for this driver\n");
            return Err(ENODEV);
        }
        let mem_size = u64::from(bar.read32(abi::REG_MEM_SIZE_LO))
            | (u64::from(bar.read32(abi::REG_MEM_SIZE_HI)) << 32);

        let vectors = KBox::new(
            pdev.alloc_irq_vectors(
                1,
                (nq + 1) as u32,
                pci::IrqTypes::default()
                    .with(pci::IrqType::MsiX)
                    .with(pci::IrqType::Msi)
                    .with(pci::IrqType::Intx),
            )?,
            GFP_KERNEL,
        )?;
        // SAFETY: the registration lives in its own heap allocation that is never moved out of
        // the box and is stored in `DmalabData` after `_irqs`, so every `irq::Registration`
        // borrowing it is dropped (free_irq) before it is (pci_free_irq_vectors).
        let vref: &'bound pci::IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref::<pci::IrqVectorRegistration<'bound>>(&*vectors) };
        let nvec = vectors.len();
        let irq_type = vref.index(0)?.irq_type();
        let per_queue = nvec == nq + 1 && matches!(irq_type, pci::IrqType::MsiX);
        let irq_mode = match irq_type {
            pci::IrqType::MsiX => abi::IRQ_MODE_MSIX,
            pci::IrqType::Msi => abi::IRQ_MODE_MSI,
            pci::IrqType::Intx => abi::IRQ_MODE_INTX,
        };

        let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
        for i in 0..nq {
            queues.push(alloc_queue(pdev, i as u16)?, GFP_KERNEL)?;
        }
        let misc_index = loop {
            let used = MISC_USED.load(Relaxed);
            let free = (!used).trailing_zeros() as usize;
            if free >= MISC_NAMES.len() {
                return Err(EBUSY);
            }
            if MISC_USED.cmpxchg(used, used | (1 << free), Relaxed).is_ok() {
                break free;
            }
        };
        let info = DeviceInfo {
            magic,
            version,
            queues: nq as u32,
            vectors: nvec as u32,
            irq_mode,
            ring_size: RING as u32,
            max_request: abi::MAX_REQUEST,
            dma_mask_bits: mask_bits,
            mem_size,
            bdf: u32::from(pdev.dev_id()),
            pool_bytes: (BLOCKS * BLOCK) as u32,
        };
        let bar = bar.into_devres()?;
        let dev = Arc::new(
            DevState {
                bar,
                queues,
                info,
                dead: Atomic::new(false),
                needs_reset: Atomic::new(false),
                error_irqs: Atomic::new(0),
                error_bits: Atomic::new(0u32),
                device_resets: Atomic::new(0),
            },
            GFP_KERNEL,
        );
        let dev = match dev {
            Ok(d) => d,
            Err(e) => {
                atomic_update(&MISC_USED, |v| v & !(1 << misc_index));
                return Err(e.into());
            }
        };

        let mut irqs = KVec::with_capacity(nvec, GFP_KERNEL)?;
        for k in 0..nvec {
            let handler = if per_queue && k < nq {
                IrqHandler::Queue(QueueIrq {
                    dev: dev.clone(),
                    queue: k,
                })
            } else {
                IrqHandler::Shared(SharedIrq {
                    dev: dev.clone(),
                    all: !per_queue,
                })
            };
            let req: irq::IrqRequest<'bound> = vref.index(k)?.into();
            let flags = if per_queue {
                irq::Flags::TRIGGER_NONE
            } else {
                irq::Flags::SHARED
            };
            // SAFETY: the registration is stored in `DmalabData` and dropped, never forgotten.
            let reg = KBox::pin_init(
                unsafe { irq::Registration::new(req, flags, c"dmalab", Ok::<_, Error>(handler)) },
                GFP_KERNEL,
            )?;
            irqs.push(reg, GFP_KERNEL)?;
        }

        if let Some(bar) = dev.bar.try_access() {
            for q in dev.queues.iter() {
                let st = q.ring.lock();
                if let Some(rings) = st.rings.as_ref() {
                    program_queue(&bar, q.index as usize, rings)?;
                }
            }
        }

        let for_misc = dev.clone();
        let misc = KBox::pin_init(
            try_pin_init!(MiscHolder {
                dev: for_misc,
                index: misc_index,
                reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name: MISC_NAMES[misc_index] }),
            }),
            GFP_KERNEL,
        );
        let misc = match misc {
            Ok(m) => m,
            Err(e) => {
                atomic_update(&MISC_USED, |v| v & !(1 << misc_index));
                halt_and_release(&dev);
                return Err(e);
            }
        };
        dev_info!(
            pdev,
            "dmalab v{}.{} id={:#x}: {} queues x {} entries, {} {} vector(s), {}-bit DMA, {} KiB internal memory, /dev/{}\n",
            version >> 16,
            version & 0xffff,
            magic,
            nq,
            RING,
            nvec,
            match irq_mode {
                abi::IRQ_MODE_MSIX => "MSI-X",
                abi::IRQ_MODE_MSI => "MSI",
                _ => "INTx",
            },
            mask_bits,
            mem_size / 1024,
            MISC_NAMES[misc_index].to_str().unwrap_or("?")
        );
        Ok(DmalabData {
            _misc: misc,
            _irqs: irqs,
            _vectors: vectors,
            dev,
            pdev,
        })
    }
}

/// Stops all device DMA (reset, read back), fails every caller, frees all DMA memory.
fn halt_and_release(dev: &DevState) {
    dev.dead.store(true, Relaxed);
    if let Some(bar) = dev.bar.try_access() {
        let _ = bar.try_write32(abi::CTRL_RESET, abi::REG_DEV_CTRL);
        // Non-posted: when this returns the device has finished the reset and does no more DMA.
        let _ = bar.try_read32(abi::REG_DEV_STATUS);
    }
    dev.release_dma();
}

impl pci::Driver for DmalabDriver {
    type IdInfo = ();
    type Data<'bound> = DmalabData<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        Self::do_probe(pdev)
    }
}

impl Drop for DmalabData<'_> {
    fn drop(&mut self) {
        halt_and_release(&self.dev);
        atomic_update(&MISC_USED, |v| v & !(1 << self._misc.index));
        let s = self.dev.stats();
        let (sub, done, to) = s.queue.iter().fold((0, 0, 0), |a, q| {
            (a.0 + q.submitted, a.1 + q.completed, a.2 + q.timeouts)
        });
        dev_info!(self.pdev, "dmalab unbound: {} submitted, {} completed, {} timed out; device halted, DMA memory freed\n",
                  sub, done, to);
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "Driver for the dmalab DMA test device",
    license: "GPL v2",
}
