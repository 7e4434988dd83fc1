// SPDX-License-Identifier: GPL-2.0

//! dmalab tutorial, step 5: requests up to 1 MiB, their data spread over blocks of coherent
//! memory that the device reaches through scatter-gather lists; and a 64-bit DMA mask, so the
//! memory may lie anywhere.
//! The chapter is docs/tutorial/05-sg.md; `make check-step STEP=5` grades your copy
//! in work/step5/ (`make exercise STEP=5` makes it; docs/tutorial/README.md).

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
        atomic::{Atomic, Release},
        Arc,
    },
};

/// The device's registers, constants and ioctl structures (docs/datasheet.md), shared verbatim
/// with the device model and the test agent.
#[macro_use]
pub mod abi {
    include!("../../../abi/regs.rs");
}
use abi::{Completion, Descriptor, DeviceInfo, Request, SgEntry, Status};

// SAFETY: these ABI types are `#[repr(C)]`, made only of integers (any bit pattern is valid)
// and have no padding (their sizes are asserted at the end of `abi/regs.rs`).
unsafe impl kernel::transmute::FromBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for DeviceInfo {}
// SAFETY: see above.
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

mod file;
mod interrupts;
mod queue;
mod regs;
mod ring;
mod sg;

use file::MiscHolder;
use interrupts::IrqHandler;
use queue::{Buffers, Queue, RingState};
use ring::Rings;

/// BAR0 as the driver sees it: a mapped I/O region of exactly the datasheet's size.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

/// How long a transfer may take when the request does not say (milliseconds).
const DEFAULT_TIMEOUT_MS: u32 = 5000;
/// Queues this driver uses at most.
const MAX_QUEUES: usize = 4;

/// What the driver, the interrupt handlers, the open files and unbind share.
#[pin_data]
pub(crate) struct DevState {
    /// BAR0, revoked when the device is unbound (an open file may outlive the binding).
    bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    info: DeviceInfo,
    queues: KVec<Pin<KBox<Queue>>>,
    /// Set at unbind: requests that start after it fail with `ENODEV`.
    dead: Atomic<bool>,
}

/// Runs `f` on BAR0 if the device is still bound, else fails with `ENODEV`. The access lasts
/// only while `f` runs: it is an RCU read-side section (unbind revokes the BAR and waits for
/// such sections), so nothing in `f` may sleep or touch user memory.
pub(crate) fn with_bar<R>(dev: &DevState, f: impl FnOnce(&Bar0<'_>) -> R) -> Result<R> {
    let bar = dev.bar.try_access().ok_or(ENODEV)?;
    Ok(f(&bar))
}

/// A completion status as an errno (docs/driver.md#errors).
pub(crate) fn status_to_result(status: u32) -> Result {
    match u16::try_from(status).ok().and_then(Status::from_raw) {
        Some(Status::Ok) => Ok(()),
        Some(Status::InternalRange | Status::AddrOverflow) => Err(ERANGE),
        Some(
            Status::BadOpcode
            | Status::BadLength
            | Status::TooManySegments
            | Status::Overlap
            | Status::BadDescriptor,
        ) => Err(EINVAL),
        Some(Status::DmaFault | Status::AddrWidth | Status::DeviceError) | None => Err(EIO),
    }
}

/// Runs one request on the queue it names.
pub(crate) fn transfer(dev: &DevState, req: &mut Request) -> Result {
    let q = dev.queues.get(usize::from(req.queue)).ok_or(EINVAL)?;
    q.transfer(dev, req)
}

/// Resets the device and waits until it is done (the read is not posted): afterwards the device
/// does no DMA until it is told to again.
fn reset(bar: &Bar0<'_>) {
    bar.write_reg(regs::DEV_CTRL::zeroed().with_reset(true));
    let _ = bar.read(regs::DEV_STATUS);
}

/// Queue `index`'s rings and buffers (not yet known to the device).
fn new_queue(pdev: &pci::Device<Core<'_>>, index: usize) -> Result<Pin<KBox<Queue>>> {
    let dev = pdev.as_ref();
    let rings = Rings::new(dev)?;
    let bufs = Buffers {
        src: sg::Blocks::new(dev)?,
        dst: sg::Blocks::new(dev)?,
        sg: Coherent::<SgEntry>::zeroed_slice(dev, 2 * sg::SG_MAX, GFP_KERNEL)?,
    };
    KBox::pin_init(
        pin_init!(Queue {
            index,
            bufs <- new_mutex!(Some(bufs)),
            ring <- new_spinlock_irq!(RingState {
                rings: Some(rings),
                waiting: None,
                done: None,
            }),
            done_cv <- new_condvar!(),
            next_tag: Atomic::new(0),
        }),
        GFP_KERNEL,
    )
}

struct DmalabDriver;

/// What one bound device owns. Field order is drop order: the misc device goes first (no new
/// opens), then the interrupt handlers (freed before the vectors they use), then the vectors.
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

/// Binds one device: step 1's checks, the queues, their vectors and handlers, `/dev/dmalab0`.
fn probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
    pdev.enable_device_mem()?;
    pdev.set_master();
    // ANCHOR: mask
    // EXERCISE: Tell the DMA API the device reaches all 64 bits of address space
    // (dma_set_mask_and_coherent with DmaMask::new::<64>()), falling back to 32 bits if the
    // platform refuses; remember which in mask_bits.
    // STUB: let mask_bits = 32;
    // SAFETY: no DMA allocations or mappings exist for this device yet.
    let mask_bits = match unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>()) } {
        Ok(()) => 64,
        Err(_) => {
            // SAFETY: as above.
            unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<32>())? };
            32
        }
    };
    // END EXERCISE
    // ANCHOR_END: mask
    let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab")?;
    let magic = bar.read(regs::ID).magic().get();
    let version = bar.read(regs::VERSION);
    if magic != abi::DEVICE_MAGIC || version.major().get() != u32::from(abi::VERSION_MAJOR) {
        dev_err!(
            pdev,
            "not a dmalab v{}.x device (ID {:#x}, version {:#x})\n",
            abi::VERSION_MAJOR,
            magic,
            version.into_raw()
        );
        return Err(ENODEV);
    }
    reset(&bar);
    let nq = (bar.read(regs::CAP_QUEUES).count().get() as usize).clamp(1, MAX_QUEUES);

    let vectors = KBox::new(
        pdev.alloc_irq_vectors(
            (nq + 1) as u32,
            (nq + 1) as u32,
            pci::IrqTypes::default().with(pci::IrqType::MsiX),
        )?,
        GFP_KERNEL,
    )?;
    // SAFETY: the registration lives in its own heap allocation that is never moved out of
    // the box, and `DmalabData` drops `_irqs` (every `irq::Registration` borrowing it) before
    // `_vectors`; on an early return below, `irqs` is declared after `vectors` and so dropped
    // first too.
    let vref: &'bound pci::IrqVectorRegistration<'bound> =
        unsafe { &*core::ptr::from_ref::<pci::IrqVectorRegistration<'bound>>(&*vectors) };

    let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
    for i in 0..nq {
        queues.push(new_queue(pdev, i)?, GFP_KERNEL)?;
    }
    let info = DeviceInfo {
        magic,
        version: version.into_raw(),
        queues: nq as u32,
        vectors: (nq + 1) as u32,
        irq_mode: abi::IRQ_MODE_MSIX,
        ring_size: ring::RING,
        max_request: abi::MAX_REQUEST,
        dma_mask_bits: mask_bits,
        pool_bytes: 2 * abi::MAX_REQUEST,
        mem_size: regs::mem_size(&bar),
        bdf: u32::from(pdev.dev_id()),
        // every request goes through the bounce pool
        dma_mode: abi::DMA_MODE_BOUNCE,
        zero_copy_min: 0,
    };
    let dev = Arc::pin_init(
        try_pin_init!(DevState {
            bar: bar.into_devres()?,
            info,
            queues,
            dead: Atomic::new(false),
        }),
        GFP_KERNEL,
    )?;
    // From here the device may use the queues' memory: until probe has succeeded, an early
    // return resets it before that memory is freed.
    let halt = Halt(&dev);
    with_bar(&dev, |bar| -> Result {
        for q in dev.queues.iter() {
            if let Some(rings) = q.ring.lock().rings.as_ref() {
                rings.program(bar, q.index)?;
            }
        }
        Ok(())
    })??;

    let mut irqs = KVec::with_capacity(nq + 1, GFP_KERNEL)?;
    for k in 0..=nq {
        let handler = if k < nq {
            IrqHandler::Queue(dev.clone(), k)
        } else {
            IrqHandler::Error(dev.clone())
        };
        let request: irq::IrqRequest<'bound> = vref.index(k)?.into();
        // SAFETY: the registration is kept in `irqs`, then in `DmalabData`, and dropped there,
        // never forgotten.
        let registration = KBox::pin_init(
            unsafe {
                irq::Registration::new(
                    request,
                    irq::Flags::TRIGGER_NONE,
                    c"dmalab",
                    Ok::<_, Error>(handler),
                )
            },
            GFP_KERNEL,
        )?;
        irqs.push(registration, GFP_KERNEL)?;
    }

    let for_misc = dev.clone();
    let misc = KBox::pin_init(
        try_pin_init!(MiscHolder {
            dev: for_misc,
            reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"dmalab0" }),
        }),
        GFP_KERNEL,
    )?;
    // Probe succeeded: from now on unbind halts the device (`DmalabData::drop`).
    core::mem::forget(halt);
    dev_info!(
        pdev,
        "dmalab device v{}.{} bound: {} queues with MSI-X, {}-bit DMA, /dev/dmalab0\n",
        version.major().get(),
        version.minor().get(),
        nq,
        mask_bits
    );
    Ok(DmalabData {
        _misc: misc,
        _irqs: irqs,
        _vectors: vectors,
        dev,
        pdev,
    })
}

/// On a probe that fails after the queues were programmed: resets the device before their
/// memory is freed. Probe forgets it once it has succeeded; unbind does the same work then.
struct Halt<'a>(&'a Arc<DevState>);

impl Drop for Halt<'_> {
    fn drop(&mut self) {
        let _ = with_bar(self.0, reset);
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
        probe(pdev)
    }
}

impl Drop for DmalabData<'_> {
    /// Unbind: no new requests; wait for each queue's request in progress (it holds the
    /// queue's buffer lock); stop the device; only then free the rings and buffers, so the
    /// device never touches memory that is no longer ours. The handlers are freed after this,
    /// as the fields drop.
    fn drop(&mut self) {
        self.dev.dead.store(true, Release);
        for q in self.dev.queues.iter() {
            drop(q.bufs.lock());
        }
        let _ = with_bar(&self.dev, reset);
        for q in self.dev.queues.iter() {
            *q.bufs.lock() = None;
            // Taken out under the spinlock, freed after it: freeing coherent memory may sleep,
            // and a spinlock that excludes the interrupt handler has interrupts off.
            let rings = q.ring.lock().rings.take();
            drop(rings);
        }
        dev_info!(self.pdev, "dmalab device unbound\n");
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab tutorial, step 5: scatter-gather and a 64-bit DMA mask",
    license: "GPL v2",
}
