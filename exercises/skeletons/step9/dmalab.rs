// SPDX-License-Identifier: GPL-2.0

//! dmalab tutorial, step 9: streaming DMA. `IOC_DMA_SELFTEST` maps the caller's own pages for
//! the device (no bounce buffer), keeps the mapping across several device operations and hands
//! the memory between the CPU and the device with syncs, through the typed streaming
//! abstraction in guest-driver/module/streaming.rs.
//! The chapter is docs/tutorial/09-streaming.md; `make check-step STEP=9` grades your copy
//! in work/step9/ (`make exercise STEP=9` makes it; docs/tutorial/README.md).

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
        atomic::{Acquire, Atomic, Release},
        Arc, Mutex,
    },
};

/// The device's registers, constants and ioctl structures (docs/datasheet.md), shared verbatim
/// with the device model and the test agent.
#[macro_use]
pub mod abi {
    include!("../../../abi/regs.rs");
}
use abi::{Completion, Descriptor, DeviceInfo, Request, SelfTest, SgEntry, Status};

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
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for SelfTest {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for SelfTest {}

mod file;
mod guards;
mod interrupts;
mod queue;
mod regs;
mod ring;
mod selftest;
mod sg;
/// The typed streaming-DMA abstraction (docs/streaming-dma.md): the reference driver's, used
/// as it is (the build copies it next to `abi/`); read it, do not copy it.
#[allow(dead_code)]
#[path = "../../../guest-driver/module/streaming.rs"]
mod streaming;

use file::MiscHolder;
use guards::DeviceHalt;
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
    pub(crate) queues: KVec<Pin<KBox<Queue>>>,
    /// Set at unbind: requests that start after it fail with `ENODEV`.
    pub(crate) dead: Atomic<bool>,
    /// The device reported a fatal error: it runs nothing until it is reset.
    pub(crate) needs_reset: Atomic<bool>,
    /// Serializes device resets (recovery, `IOC_RESET`) with each other and with teardown.
    #[pin]
    pub(crate) ctrl: Mutex<()>,
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

impl DevState {
    /// The device, for the DMA API (whether it is still bound is the caller's to know).
    pub(crate) fn device(&self) -> &kernel::device::Device {
        self.bar.device()
    }

    /// Frees every queue's rings and buffers. Call only once the device is reset (or never
    /// learnt their addresses): `DeviceHalt` does.
    pub(crate) fn release_dma(&self) {
        for q in self.queues.iter() {
            *q.bufs.lock() = None;
            // Taken out under the spinlock, freed after it: freeing coherent memory may sleep,
            // and a spinlock that excludes the interrupt handler has interrupts off.
            let rings = q.ring.lock().rings.take();
            drop(rings);
        }
    }
}

impl DevState {
    /// Fails the request waiting on every queue with `err`, without touching the device.
    /// Called from the error handler too: takes only spinlocks.
    pub(crate) fn fail_all(&self, err: Error) {
        for q in self.queues.iter() {
            let mut st = q.ring.lock();
            if st.waiting.is_some() && st.done.is_none() {
                st.failed = Some(err);
            }
            drop(st);
            q.done_cv.notify_all();
        }
    }

    /// Whether the device has vanished (surprise removal: its registers read all ones). If so,
    /// it is treated as unbound from now on: every request that starts fails with `ENODEV`.
    /// Takes no lock (a waiter calls it holding its ring lock).
    pub(crate) fn gone(&self) -> bool {
        let status = with_bar(self, |bar| bar.read(regs::DEV_STATUS).into_raw());
        if status.is_ok_and(|s| s != u32::MAX) {
            return false;
        }
        self.dead.store(true, Release);
        true
    }

    /// Resets the device if a fatal error asked for it and nobody has done so yet.
    pub(crate) fn recover(&self) -> Result {
        let _ctrl = self.ctrl.lock();
        if self.needs_reset.load(Acquire) {
            self.reset_locked(EIO)?;
            self.needs_reset.store(false, Release);
        }
        Ok(())
    }

    /// With `ctrl` held: fails every waiting request with `err`, resets the device and programs
    /// every queue's rings again.
    fn reset_locked(&self, err: Error) -> Result {
        if self.dead.load(Acquire) {
            // teardown owns the device now
            return Err(ENODEV);
        }
        self.fail_all(err);
        with_bar(self, reset)?;
        for q in self.queues.iter() {
            let mut st = q.ring.lock();
            let index = q.index;
            if let Some(rings) = st.rings.as_mut() {
                rings.restart()?;
                with_bar(self, |bar| rings.program(bar, index))??;
            }
        }
        Ok(())
    }
}

/// `IOC_RESET`: resets the device and its queues; a request in flight fails with `err`.
pub(crate) fn reset_device(dev: &DevState, err: Error) -> Result {
    dev.needs_reset.store(true, Release);
    let _ctrl = dev.ctrl.lock();
    dev.reset_locked(err)?;
    dev.needs_reset.store(false, Release);
    Ok(())
}

/// Runs one request on the queue it names.
pub(crate) fn transfer(dev: &DevState, req: &mut Request) -> Result {
    let q = dev.queues.get(usize::from(req.queue)).ok_or(EINVAL)?;
    q.transfer(dev, req)
}

/// Resets the device and waits until it is done (the read is not posted): afterwards the device
/// does no DMA until it is told to again.
pub(crate) fn reset(bar: &Bar0<'_>) {
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
                failed: None,
            }),
            done_cv <- new_condvar!(),
            next_tag: Atomic::new(0),
        }),
        GFP_KERNEL,
    )
}

struct DmalabDriver;

/// What one bound device owns. Field order is drop order, the reverse of the order probe makes
/// them: the misc device goes first (no new opens), then the device is halted, its DMA memory
/// and then its interrupt handlers freed (before the vectors they use), then the vectors.
struct DmalabData<'bound> {
    _misc: Pin<KBox<MiscHolder>>,
    _halt: DeviceHalt<'bound>,
    _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
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
    // the box, and `DmalabData` drops `_halt` (which holds every `irq::Registration` borrowing
    // it) before `_vectors`; on an early return below, `irqs` and `halt` are declared after
    // `vectors` and so dropped first too.
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
            needs_reset: Atomic::new(false),
            ctrl <- new_mutex!(()),
        }),
        GFP_KERNEL,
    )?;
    let mut irqs = KVec::with_capacity(nq + 1, GFP_KERNEL)?;
    for k in 0..=nq {
        let handler = if k < nq {
            IrqHandler::Queue(dev.clone(), k)
        } else {
            IrqHandler::Error(dev.clone())
        };
        let request: irq::IrqRequest<'bound> = vref.index(k)?.into();
        // SAFETY: the registration is kept in `irqs`, then in `DeviceHalt`, and dropped there,
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

    // From here the device may use the queues' memory: on every path out, `halt` stops the
    // device before that memory is freed, and frees the handlers after.
    let halt = DeviceHalt::new(dev.clone(), irqs);
    with_bar(&dev, |bar| -> Result {
        for q in dev.queues.iter() {
            if let Some(rings) = q.ring.lock().rings.as_ref() {
                rings.program(bar, q.index)?;
            }
        }
        Ok(())
    })??;

    let for_misc = dev.clone();
    let misc = KBox::pin_init(
        try_pin_init!(MiscHolder {
            dev: for_misc,
            reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"dmalab0" }),
        }),
        GFP_KERNEL,
    )?;
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
        _halt: halt,
        _vectors: vectors,
        pdev,
    })
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
    /// Runs on unbind, before the fields undo the binding in their order.
    fn drop(&mut self) {
        dev_info!(self.pdev, "dmalab device unbound\n");
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab tutorial, step 8: teardown with requests in flight",
    license: "GPL v2",
}
