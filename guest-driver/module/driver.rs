// SPDX-License-Identifier: GPL-2.0

//! The PCI driver: the device table, probe in steps (each acquiring one resource as a guard
//! that undoes itself), and what a binding owns until it is unbound.

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::{Device as _, DmaMask},
    io::Io,
    irq,
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    pci,
    prelude::*,
    sync::Arc,
};

use crate::abi::{self, DeviceInfo};
use crate::bugs::DmaBug;
use crate::file::MiscHolder;
use crate::guards::{DeviceHalt, MiscSlot};
use crate::interrupts::{IrqHandler, QueueIrq, SharedIrq};
use crate::module_parameters;
use crate::pool::{BLOCK, BLOCKS};
use crate::queue::Queue;
use crate::regs::{self, Bar0};
use crate::ring::{program_queue, RING, SG_MAX};
use crate::state::DevState;
use crate::zerocopy;

/// The PCI driver of the dmalab device.
pub(crate) struct DmalabDriver;

/// Everything a binding owns, as guards. Field order is drop order, the reverse of the order
/// probe acquires them: the misc device goes first (no new opens), then the device is halted,
/// its DMA memory freed and its interrupt handlers freed, then the vectors they borrowed, and
/// last the device number.
pub(crate) struct DmalabData<'bound> {
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

impl DmalabDriver {
    /// Binds one device. Every `?` below drops the guards made so far, in reverse order; the
    /// device is never told a ring address before `DeviceHalt` is there to reset it.
    fn do_probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
        if pdev.vendor_id() != pci::Vendor::REDHAT || pdev.device_id() != abi::PCI_DEVICE_ID {
            return Err(ENODEV);
        }
        enable(pdev)?;
        ProbeStep::Enable.check(pdev)?;

        let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab")?;
        let Identity {
            magic,
            version,
            queues: nq,
            mem_size,
            dma_bits,
        } = identify(pdev, &bar)?;
        ProbeStep::MapBar.check(pdev)?;
        let mask_bits = set_dma_mask(pdev, dma_bits)?;

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

        let queues = alloc_queues(pdev, nq)?;

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
        let dev = Arc::pin_init(DevState::new(bar.into_devres()?, queues, info), GFP_KERNEL)?;
        ProbeStep::State.check(pdev)?;

        let irqs = request_handlers(&dev, vref, nq, per_queue)?;
        ProbeStep::Handlers.check(pdev)?;

        // From here the device may DMA into the rings: `halt` resets it before the queues'
        // memory is freed and the handlers are released, on every path.
        let halt = DeviceHalt::new(dev.clone(), irqs);
        program_queues(pdev, &dev)?;

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
        announce(pdev, &dev.info, name);
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

/// Probe step 1: memory decoding and bus mastering (the device obeys both bits of the
/// command register: without bus mastering it moves nothing).
fn enable(pdev: &pci::Device<Core<'_>>) -> Result {
    pdev.enable_device_mem()?;
    if DmaBug::active() != DmaBug::NoBusMaster {
        pdev.set_master();
    }
    Ok(())
}

/// Probe step 3: the DMA mask the device can drive (CAP_DMA_BITS), or 32 bits where the
/// platform refuses it. Returns the mask's width. A wider mask than the device's would let the
/// kernel hand out addresses the device cannot reach, on any machine with memory (or IOVAs)
/// above them.
fn set_dma_mask(pdev: &pci::Device<Core<'_>>, device_bits: u32) -> Result<u32> {
    let bits = if DmaBug::active() == DmaBug::WideMask {
        64
    } else {
        device_bits
    };
    // SAFETY: no DMA allocations or mappings exist for this device yet.
    let mask_bits = match unsafe { pdev.dma_set_mask_and_coherent(DmaMask::try_new(bits)?) } {
        Ok(()) => bits,
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
    Ok(mask_bits)
}

/// What probe reads from the device before it trusts it.
struct Identity {
    magic: u32,
    version: regs::VERSION,
    /// Queue pairs the driver uses (the device's, at most `MAX_QUEUES`).
    queues: usize,
    mem_size: u64,
    /// Address bits the device drives (CAP_DMA_BITS).
    dma_bits: u32,
}

/// Probe step 2: BAR0 is a dmalab device of an interface version this driver speaks, reset to
/// a known state (an earlier driver may have left queues running), with room for our rings.
fn identify(pdev: &pci::Device<Core<'_>>, bar: &Bar0<'_>) -> Result<Identity> {
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
    let mem_size = regs::mem_size(bar);
    let dma_bits = bar.read(regs::CAP_DMA_BITS).bits().get();
    if !(abi::MIN_DMA_BITS..=64).contains(&dma_bits) {
        dev_err!(
            pdev,
            "device reports {} DMA address bits (CAP_DMA_BITS), not {}..=64\n",
            dma_bits,
            abi::MIN_DMA_BITS
        );
        return Err(ENODEV);
    }
    Ok(Identity {
        magic,
        version,
        queues: nq,
        mem_size,
        dma_bits,
    })
}

/// Probe step 7: one handler per vector: with a vector per queue (MSI-X) each queue's own,
/// otherwise shared handlers that look at every queue.
fn request_handlers<'bound>(
    dev: &Arc<DevState>,
    vectors: &'bound pci::IrqVectorRegistration<'bound>,
    nq: usize,
    per_queue: bool,
) -> Result<KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>> {
    let nvec = vectors.len();
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
        let req: irq::IrqRequest<'bound> = vectors.index(k)?.into();
        let number = req.irq();
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
        if per_queue && k < nq {
            spread_affinity(number, k);
        }
        irqs.push(reg, GFP_KERNEL)?;
    }
    Ok(irqs)
}

/// Points queue `queue`'s vector at one CPU, the queues spread round-robin over the CPUs (what
/// blk-mq's managed affinity does), so that a load that picks its queue by CPU, as blk-mq
/// does, has its completions handled on the CPU that submitted them. A CPU that is not online
/// keeps the kernel's default affinity: the vector still works, only less locally.
fn spread_affinity(irq: u32, queue: usize) {
    let Some(cpu) = (queue as u32)
        .checked_rem(kernel::cpu::nr_cpu_ids())
        .and_then(kernel::cpu::CpuId::from_u32)
    else {
        return;
    };
    let Ok(mut mask) = kernel::cpumask::CpumaskVar::new_zero(GFP_KERNEL) else {
        return;
    };
    mask.set(cpu);
    // SAFETY: `irq` is a vector this driver has requested and not freed; the kernel copies the
    // mask, which only has to live for the call.
    let _ = unsafe { kernel::bindings::irq_set_affinity(irq, mask.as_raw()) };
}

/// Probe step 8: every queue's rings into the device, each queue enabled. `DeviceHalt` must
/// exist: from here the device may DMA into the rings.
fn program_queues(pdev: &pci::Device<Core<'_>>, dev: &DevState) -> Result {
    let bar = dev.bar.try_access().ok_or(ENODEV)?;
    for q in dev.queues.iter() {
        let st = q.ring.lock();
        if let Some(rings) = st.rings.as_ref() {
            program_queue(&bar, q.index as usize, rings)?;
        }
        drop(st);
        ProbeStep::ProgramQueues.check(pdev)?;
    }
    Ok(())
}

/// The line the kernel log gets for a bound device.
fn announce(pdev: &pci::Device<Core<'_>>, info: &DeviceInfo, name: &CStr) {
    dev_info!(
        pdev,
        "dmalab v{}.{} id={:#x}: {} queues x {} entries, {} {} vector(s), {}-bit DMA, {} KiB internal memory, /dev/{}\n",
        info.version >> 16,
        info.version & 0xffff,
        info.magic,
        info.queues,
        RING,
        info.vectors,
        match info.irq_mode {
            abi::IRQ_MODE_MSIX => "MSI-X",
            abi::IRQ_MODE_MSI => "MSI",
            _ => "INTx",
        },
        info.dma_mask_bits,
        info.mem_size / 1024,
        name.to_str().unwrap_or("?")
    );
}

/// Probe step 4: every queue's DMA memory. The device knows none of it yet: dropping it on
/// failure needs no reset.
fn alloc_queues(pdev: &pci::Device<Core<'_>>, nq: usize) -> Result<KVec<Pin<KBox<Queue>>>> {
    let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
    for i in 0..nq {
        queues.push(Queue::new(pdev, i as u16)?, GFP_KERNEL)?;
        ProbeStep::QueueMemory.check(pdev)?;
    }
    Ok(queues)
}
