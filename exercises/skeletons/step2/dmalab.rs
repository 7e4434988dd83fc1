// SPDX-License-Identifier: GPL-2.0

//! dmalab tutorial, step 2: one DMA transfer at a time through the direct-transfer registers,
//! with two coherent buffers, started by a register write and polled for (QEMU `edu` style).
//! The chapter is docs/tutorial/02-direct-dma.md; `make check-step STEP=2` grades your copy
//! in work/step2/ (`make exercise STEP=2` makes it; docs/tutorial/README.md).

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::Coherent,
    io::{io_project, poll::read_poll_timeout, Io},
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    new_mutex, pci,
    prelude::*,
    sync::{Arc, Mutex},
    time::Delta,
    uaccess::{UserPtr, UserSlice},
};

/// The device's registers, constants and ioctl structures (docs/datasheet.md), shared verbatim
/// with the device model and the test agent.
#[macro_use]
pub mod abi {
    include!("../../../abi/regs.rs");
}
use abi::{DeviceInfo, Opcode, Request, Status};

// SAFETY: `Request` and `DeviceInfo` are `#[repr(C)]`, made only of integers (any bit pattern
// is valid) and have no padding (their sizes are asserted at the end of `abi/regs.rs`).
unsafe impl kernel::transmute::FromBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for DeviceInfo {}

mod file;
mod regs;

use file::MiscHolder;

/// BAR0 as the driver sees it: a mapped I/O region of exactly the datasheet's size.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

/// Bytes of each coherent buffer: the largest request this step's driver takes.
const BUF: usize = 64 * 1024;
/// How long a transfer may take when the request does not say (milliseconds).
const DEFAULT_TIMEOUT_MS: u32 = 5000;

/// The device's view of a transfer: a source and a destination buffer in coherent memory, which
/// the CPU and the device may both access at any time without cache maintenance.
struct Buffers {
    src: Coherent<[u8]>,
    dst: Coherent<[u8]>,
}

/// What the driver, the open files and unbind share.
#[pin_data]
pub(crate) struct DevState {
    /// BAR0, revoked when the device is unbound (an open file may outlive the binding).
    bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    info: DeviceInfo,
    /// The buffers, `None` once unbind has freed them. The lock also makes transfers one at a
    /// time: the device has a single set of direct-transfer registers.
    #[pin]
    bufs: Mutex<Option<Buffers>>,
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

/// Runs `f` on BAR0 if the device is still bound, else fails with `ENODEV`. The access lasts
/// only while `f` runs: it is an RCU read-side section (unbind revokes the BAR and waits for
/// such sections), so nothing in `f` may sleep or touch user memory.
fn with_bar<R>(dev: &DevState, f: impl FnOnce(&Bar0<'_>) -> R) -> Result<R> {
    let bar = dev.bar.try_access().ok_or(ENODEV)?;
    Ok(f(&bar))
}

/// Resets the device and waits until it is done (the read is not posted): afterwards the device
/// does no DMA until it is told to again.
fn reset(bar: &Bar0<'_>) {
    bar.write_reg(regs::DEV_CTRL::zeroed().with_reset(true));
    let _ = bar.read(regs::DEV_STATUS);
}

/// Runs one request through the direct-transfer registers: copy the caller's data into the
/// source buffer, program the registers, start, poll for DONE, copy the result out.
pub(crate) fn transfer(dev: &DevState, req: &mut Request) -> Result {
    let op = Opcode::from_raw(req.opcode).ok_or(EINVAL)?;
    let len = req.len as usize;
    if len == 0 || len > BUF || req.queue != 0 || req.nseg > 1 {
        return Err(EINVAL);
    }
    let timeout_ms = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT_MS,
        ms => ms,
    };
    let guard = dev.bufs.lock();
    let bufs = guard.as_ref().ok_or(ENODEV)?;

    // TODO(step 2): Move the request through the device. (1) If the opcode reads guest memory
    // (op.src_in_guest()), copy the caller's `len` bytes at req.src into bufs.src. (2) Program
    // DMA_SRC/DMA_DST with the buffers' DMA addresses (or req.dev_offset for the internal
    // side, 0 where the opcode has none), DMA_LEN and DMA_PATTERN, then write the opcode to
    // DMA_CMD. (3) Poll DMA_STATUS until DONE with read_poll_timeout; on a timeout reset the
    // device before returning ETIMEDOUT (it may still be using the buffers). (4) Put the
    // status code, DMA_RESULT and DMA_BYTES into req; if the opcode writes guest memory and
    // the status is OK, copy bufs.dst out to req.dst. Touch BAR0 only inside with_bar, and
    // neither sleep nor copy from or to user memory in there.
    let _ = (op, len, timeout_ms, bufs);
    Err(ENOSYS)
}

struct DmalabDriver;

/// What one bound device owns. Field order is drop order: the misc device goes first (no new
/// opens), then the driver's reference to the shared state.
struct DmalabData<'bound> {
    _misc: Pin<KBox<MiscHolder>>,
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

/// Binds one device: step 1's checks, then the buffers and `/dev/dmalab0`.
fn probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
    pdev.enable_device_mem()?;
    pdev.set_master();
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

    // TODO(step 2): Allocate the two coherent buffers of BUF bytes each for this device
    // (Coherent::<u8>::zeroed_slice with pdev.as_ref()).
    let bufs: Option<Buffers> = None;

    let info = DeviceInfo {
        magic,
        version: version.into_raw(),
        queues: 1,
        irq_mode: abi::IRQ_MODE_INTX,
        max_request: BUF as u32,
        // The PCI core's default: this step never asks for more.
        dma_mask_bits: 32,
        mem_size: regs::mem_size(&bar),
        bdf: u32::from(pdev.dev_id()),
        ..DeviceInfo::default()
    };
    let state = Arc::pin_init(
        try_pin_init!(DevState {
            bar: bar.into_devres()?,
            info,
            bufs <- new_mutex!(bufs),
        }),
        GFP_KERNEL,
    )?;
    let for_misc = state.clone();
    let misc = KBox::pin_init(
        try_pin_init!(MiscHolder {
            dev: for_misc,
            reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"dmalab0" }),
        }),
        GFP_KERNEL,
    )?;
    dev_info!(
        pdev,
        "dmalab device v{}.{} bound, /dev/dmalab0\n",
        version.major().get(),
        version.minor().get()
    );
    Ok(DmalabData {
        _misc: misc,
        dev: state,
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
    /// Unbind: wait for the transfer in progress (it holds the lock), stop the device, and only
    /// then free the buffers, so the device never writes memory that is no longer ours.
    fn drop(&mut self) {
        let mut bufs = self.dev.bufs.lock();
        let _ = with_bar(&self.dev, reset);
        *bufs = None;
        dev_info!(self.pdev, "dmalab device unbound\n");
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab tutorial, step 2: one polled DMA transfer at a time",
    license: "GPL v2",
}
