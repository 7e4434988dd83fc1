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
//!   at probe and reused; nothing is allocated per request: user data is copied straight into
//!   the pool's pages.
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
    sync::{atomic::Atomic, Arc},
};
use pin_init::pin_init_array_from_fn;

/// Device and ioctl ABI, shared verbatim with the device model and the guest agent.
#[macro_use]
pub mod abi {
    include!("../../abi/regs.rs");
}
use abi::{
    Batch, Completion, Descriptor, DeviceInfo, QueueStats, Request, SelfTest, SgEntry, Stats,
};

// SAFETY: the ABI types below are `#[repr(C)]`, made only of integers (every bit pattern is
// valid) and have no padding: their sizes (64, 16, 16, 56, 80, 16 and 64 * MAX_QUEUES + 48 bytes,
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
unsafe impl kernel::transmute::FromBytes for Batch {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Batch {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Stats {}
// SAFETY: see above (24 bytes).
unsafe impl kernel::transmute::FromBytes for SelfTest {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for SelfTest {}

mod bugs;
mod file;
mod guards;
mod interrupts;
mod pool;
mod queue;
mod regs;
mod ring;
mod selftest;
mod state;
mod streaming;
mod zerocopy;

use file::MiscHolder;
use guards::{DeviceHalt, MiscSlot};
use interrupts::{IrqHandler, QueueIrq, SharedIrq};
use pool::{FreeMap, Pool};
use ring::{program_queue, RingState, Rings, Slot, SlotState};
use state::{DevState, Queue};

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

struct DmalabDriver;

/// Everything a binding owns, as guards. Field order is drop order, the reverse of the order
/// probe acquires them: the misc device goes first (no new opens), then the device is halted,
/// its DMA memory freed and its interrupt handlers freed, then the vectors they borrowed, and
/// last the device number.
struct DmalabData<'bound> {
    _misc: Pin<KBox<MiscHolder>>,
    _halt: DeviceHalt<'bound>,
    _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
    _slot: MiscSlot,
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

/// The steps of probe, in order. For the error-path test, `probe_fail_step=N` makes step N fail
/// as if its resource could not be had: every step's undo path then runs for real.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
enum ProbeStep {
    /// Enable memory decoding and bus mastering, set the DMA mask.
    Enable = 1,
    /// Map BAR0, check identity and version, reset the device.
    MapBar,
    /// Allocate the interrupt vectors.
    Vectors,
    /// Allocate the DMA memory of the queues (fails after the first queue's).
    QueueMemory,
    /// Claim a `/dev/dmalabN` number.
    MiscSlot,
    /// Build the shared state.
    State,
    /// Register the interrupt handlers.
    Handlers,
    /// Program the rings into the device (fails after queue 0 is enabled).
    ProgramQueues,
    /// Register the misc device.
    MiscDevice,
}

impl ProbeStep {
    /// Fails if the `probe_fail_step` module parameter names this step.
    fn check(self, pdev: &pci::Device<Core<'_>>) -> Result {
        if module_parameters::probe_fail_step.value() != self as u32 {
            return Ok(());
        }
        dev_warn!(
            pdev,
            "probe: failing step {} ({:?}) as probe_fail_step asks\n",
            self as u32,
            self
        );
        Err(ECANCELED)
    }
}

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
            done_cv <- pin_init_array_from_fn(|_| new_condvar!()),
            pool <- new_mutex!(pool),
            pool_cv <- new_condvar!(),
        }),
        GFP_KERNEL,
    )
}

impl DmalabDriver {
    /// Binds one device. Every `?` below drops the guards made so far, in reverse order; the
    /// device is never told a ring address before `DeviceHalt` is there to reset it.
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
        // SAFETY: as above. A scatter-gather entry's length is 32 bits wide (datasheet); one
        // segment never needs to exceed the largest request. (The default, 64 KiB, would make
        // the DMA API split zero-copy mappings of contiguous memory and DMA-API debug warn.)
        unsafe { pdev.dma_set_max_seg_size(abi::MAX_REQUEST) };
        ProbeStep::Enable.check(pdev)?;

        let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab")?;
        let magic = bar.read(regs::ID).magic().get();
        let version = bar.read(regs::VERSION);
        if magic != abi::DEVICE_MAGIC {
            dev_err!(
                pdev,
                "not a dmalab device: ID register reads {:#x}\n",
                magic
            );
            return Err(ENODEV);
        }
        if !version.supported() {
            dev_err!(
                pdev,
                "device interface v{}.{} is not supported (driver: v{}.x)\n",
                version.major().get(),
                version.minor().get(),
                abi::VERSION_MAJOR
            );
            return Err(ENODEV);
        }
        // Start from a known state (an earlier driver may have left queues running).
        bar.write_reg(regs::DEV_CTRL::zeroed().with_reset(true));
        let status = bar.read(regs::DEV_STATUS);
        if !status.ready() {
            dev_err!(
                pdev,
                "device not ready after reset (status {:#x})\n",
                status.into_raw()
            );
            return Err(EIO);
        }
        let nq = (bar.read(regs::CAP_QUEUES).count().get() as usize).min(abi::MAX_QUEUES);
        if nq == 0
            || bar.read(regs::CAP_RING).entries().get() < RING as u32
            || bar.read(regs::CAP_SG).entries().get() < SG_MAX as u32
        {
            dev_err!(pdev, "device capabilities too small for this driver\n");
            return Err(ENODEV);
        }
        let mem_size = regs::mem_size(&bar);
        ProbeStep::MapBar.check(pdev)?;

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
        // the box. It is declared before `irqs` here, and `irqs` moves into `DeviceHalt`, which
        // `DmalabData` stores before `_vectors`, so on every path each `irq::Registration`
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
        ProbeStep::Vectors.check(pdev)?;

        // The device knows none of this memory yet: dropping it on failure needs no reset.
        let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
        for i in 0..nq {
            queues.push(alloc_queue(pdev, i as u16)?, GFP_KERNEL)?;
            ProbeStep::QueueMemory.check(pdev)?;
        }

        let slot = MiscSlot::claim()?;
        ProbeStep::MiscSlot.check(pdev)?;

        let info = DeviceInfo {
            magic,
            version: version.into_raw(),
            queues: nq as u32,
            vectors: nvec as u32,
            irq_mode,
            ring_size: RING as u32,
            max_request: abi::MAX_REQUEST,
            dma_mask_bits: mask_bits,
            mem_size,
            bdf: u32::from(pdev.dev_id()),
            pool_bytes: (BLOCKS * BLOCK) as u32,
            dma_mode: zerocopy::mode(),
            zero_copy_min: zerocopy::threshold(),
        };
        let bar = bar.into_devres()?;
        let dev = Arc::pin_init(
            try_pin_init!(DevState {
                bar,
                queues,
                info,
                dead: Atomic::new(false),
                gone: Atomic::new(false),
                ctrl <- new_mutex!(()),
                needs_reset: Atomic::new(false),
                error_irqs: Atomic::new(0),
                error_bits: Atomic::new(0u32),
                device_resets: Atomic::new(0),
                map_gate <- zerocopy::MapGate::new(),
                zero_copy: Atomic::new(0),
                bounced: Atomic::new(0),
                zero_copy_fallbacks: Atomic::new(0),
            }),
            GFP_KERNEL,
        )?;
        ProbeStep::State.check(pdev)?;

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
            // SAFETY: the registration is stored in `irqs` and then `DmalabData`, and dropped,
            // never forgotten.
            let reg = KBox::pin_init(
                unsafe { irq::Registration::new(req, flags, c"dmalab", Ok::<_, Error>(handler)) },
                GFP_KERNEL,
            )?;
            irqs.push(reg, GFP_KERNEL)?;
        }
        ProbeStep::Handlers.check(pdev)?;

        // From here the device may DMA into the rings: `halt` resets it before the queues'
        // memory is freed and the handlers are released, on every path.
        let halt = DeviceHalt::new(dev.clone(), irqs);
        {
            let bar = dev.bar.try_access().ok_or(ENODEV)?;
            for q in dev.queues.iter() {
                let st = q.ring.lock();
                if let Some(rings) = st.rings.as_ref() {
                    program_queue(&bar, q.index as usize, rings)?;
                }
                drop(st);
                ProbeStep::ProgramQueues.check(pdev)?;
            }
        }

        ProbeStep::MiscDevice.check(pdev)?;
        let for_misc = dev.clone();
        let name = slot.name();
        let misc = KBox::pin_init(
            try_pin_init!(MiscHolder {
                dev: for_misc,
                reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            }),
            GFP_KERNEL,
        )?;
        dev_info!(
            pdev,
            "dmalab v{}.{} id={:#x}: {} queues x {} entries, {} {} vector(s), {}-bit DMA, {} KiB internal memory, /dev/{}\n",
            version.major().get(),
            version.minor().get(),
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
            name.to_str().unwrap_or("?")
        );
        Ok(DmalabData {
            _misc: misc,
            _halt: halt,
            _vectors: vectors,
            _slot: slot,
            dev,
            pdev,
        })
    }
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
    /// Reports what the binding did; the fields then undo the binding, in declaration order.
    fn drop(&mut self) {
        let s = self.dev.stats();
        let (sub, done, to) = s.queue.iter().fold((0, 0, 0), |a, q| {
            (a.0 + q.submitted, a.1 + q.completed, a.2 + q.timeouts)
        });
        dev_info!(
            self.pdev,
            "dmalab unbound: {} submitted, {} completed, {} timed out; halting the device, then freeing its DMA memory\n",
            sub,
            done,
            to
        );
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "Driver for the dmalab DMA test device",
    license: "GPL v2",
    params: {
        probe_fail_step: u32 {
            default: 0,
            description: "Testing only: make probe step N (1..=9) fail, to exercise its undo path",
        },
        dma_mode: u32 {
            default: 0,
            description: "How requests reach user memory: 0 = auto (zero-copy from zero_copy_min bytes up), 1 = bounce pool, 2 = zero-copy where the memory allows",
        },
        zero_copy_min: u32 {
            default: 32768,
            description: "Auto mode: smallest request mapped zero-copy (smaller ones are copied; docs/performance.md)",
        },
        dma_bug: u32 {
            default: 0,
            description: "Testing only: commit bug N (1..=11, see bugs.rs) for the oracle and dmalab check tests",
        },
    },
}
