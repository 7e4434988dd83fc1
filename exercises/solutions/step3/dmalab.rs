// SPDX-License-Identifier: GPL-2.0

//! dmalab tutorial, step 3: transfers through a descriptor ring and a completion ring in
//! coherent memory: a descriptor and a doorbell write start one, a completion in memory says it
//! is done, found by polling memory (not a register). Still one request at a time.
//! The chapter is docs/tutorial/03-rings.md; `make check-step STEP=3` grades your copy
//! in work/step3/ (`make exercise STEP=3` makes it; docs/tutorial/README.md).

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
use abi::{Completion, Descriptor, DeviceInfo, Opcode, Request, Status};

// SAFETY: `Request` and `DeviceInfo` are `#[repr(C)]`, made only of integers (any bit pattern
// is valid) and have no padding (their sizes are asserted at the end of `abi/regs.rs`).
unsafe impl kernel::transmute::FromBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for DeviceInfo {}
// SAFETY: see above (`Descriptor` and `Completion` too).
unsafe impl kernel::transmute::FromBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for Completion {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Completion {}

mod file;
mod regs;
mod ring;

use file::MiscHolder;
use ring::Rings;

/// BAR0 as the driver sees it: a mapped I/O region of exactly the datasheet's size.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

/// Bytes of each coherent buffer: the largest request this step's driver takes.
const BUF: usize = 64 * 1024;
/// How long a transfer may take when the request does not say (milliseconds).
const DEFAULT_TIMEOUT_MS: u32 = 5000;

// ANCHOR: buffers
/// The device's view of a transfer: a source and a destination buffer in coherent memory, which
/// the CPU and the device may both access at any time without cache maintenance.
struct Buffers {
    src: Coherent<[u8]>,
    dst: Coherent<[u8]>,
}
// ANCHOR_END: buffers

/// Queue 0 as this driver uses it: its rings, the data buffers, the next tag.
struct Queue {
    rings: Rings,
    bufs: Buffers,
    next_tag: u32,
}

/// What the driver, the open files and unbind share.
#[pin_data]
pub(crate) struct DevState {
    /// BAR0, revoked when the device is unbound (an open file may outlive the binding).
    bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    info: DeviceInfo,
    /// The queue, `None` once unbind has freed its memory. The lock makes requests one at a
    /// time (step 4 lifts that).
    #[pin]
    queue: Mutex<Option<Queue>>,
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

// ANCHOR: transfer
/// Runs one request through queue 0: copy the caller's data in, post a descriptor, ring the
/// doorbell, poll the completion ring (memory, not a register) for its completion, copy out.
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
    let mut guard = dev.queue.lock();
    let Some(q) = &mut *guard else {
        return Err(ENODEV);
    };
    if op.src_in_guest() {
        let mut staged = KVVec::new();
        staged.resize(len, 0, GFP_KERNEL)?;
        UserSlice::new(UserPtr::from_addr(req.src as usize), len)
            .reader()
            .read_slice(&mut staged)?;
        io_project!(q.bufs.src, [try: 0..len]).copy_from_slice(&staged);
    }
    if op.dst_in_guest() {
        // What the device writes is what the caller gets back: clear it first, so that a
        // device that moves less than it reports never hands this caller the bytes an
        // earlier request (perhaps another process's) left in the buffer.
        let zeroes = KVVec::from_elem(0u8, len, GFP_KERNEL)?;
        io_project!(q.bufs.dst, [try: 0..len]).copy_from_slice(&zeroes);
    }
    let operand = |in_guest: bool, present: bool, buf: &Coherent<[u8]>| match (in_guest, present) {
        (true, _) => buf.dma_address(),
        (false, true) => req.dev_offset,
        (false, false) => 0,
    };
    let d = Descriptor {
        opcode: op.raw(),
        tag: q.next_tag,
        len: req.len,
        src: operand(op.src_in_guest(), op.has_src(), &q.bufs.src),
        dst: operand(op.dst_in_guest(), op.has_dst(), &q.bufs.dst),
        pattern: if op == Opcode::Fill { req.pattern } else { 0 },
        ..Descriptor::default()
    };
    q.next_tag = q.next_tag.wrapping_add(1);

    let tail = q.rings.post(&d)?;
    with_bar(dev, |bar| Rings::ring_doorbell(bar, tail))??;
    // Polling memory costs no MMIO read: the device writes the completion into our ring.
    let polled = read_poll_timeout(
        || q.rings.take(),
        Option::is_some,
        Delta::from_micros(20),
        Delta::from_millis(i64::from(timeout_ms)),
    );
    let c = match polled {
        Ok(Some(c)) => c,
        Ok(None) => return Err(EIO),
        Err(e) => {
            // The device may still own the descriptor and the buffers: reset the queue (it
            // drops the request) and start it over before the next request uses them.
            with_bar(dev, |bar| {
                q.rings.reset(bar).and_then(|()| q.rings.program(bar))
            })??;
            return Err(e);
        }
    };
    with_bar(dev, |bar| q.rings.return_completions(bar))??;
    if c.tag != d.tag {
        // One request at a time: any other tag is a completion the device should not have sent.
        return Err(EIO);
    }
    req.tag = c.tag;
    req.status = u32::from(c.status);
    req.result = c.result;
    req.bytes = c.bytes;
    req.segments = 1;
    if op.dst_in_guest() && c.status == Status::Ok.raw() {
        UserSlice::new(UserPtr::from_addr(req.dst as usize), len)
            .writer()
            .write_dma(&q.bufs.dst, 0, len)?;
    }
    Ok(())
}
// ANCHOR_END: transfer

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

    // ANCHOR: alloc
    let dev = pdev.as_ref();
    let rings = Rings::new(dev)?;
    rings.program(&bar)?;
    let queue = Some(Queue {
        rings,
        bufs: Buffers {
            src: Coherent::<u8>::zeroed_slice(dev, BUF, GFP_KERNEL)?,
            dst: Coherent::<u8>::zeroed_slice(dev, BUF, GFP_KERNEL)?,
        },
        next_tag: 0,
    });
    // ANCHOR_END: alloc

    let info = DeviceInfo {
        magic,
        version: version.into_raw(),
        queues: 1,
        irq_mode: abi::IRQ_MODE_INTX,
        ring_size: ring::RING,
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
            queue <- new_mutex!(queue),
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

// ANCHOR: unbind
impl Drop for DmalabData<'_> {
    /// Unbind: wait for the request in progress (it holds the lock), stop the device, and only
    /// then free the rings and buffers, so the device never touches memory that is no longer
    /// ours.
    fn drop(&mut self) {
        let mut queue = self.dev.queue.lock();
        let _ = with_bar(&self.dev, reset);
        *queue = None;
        dev_info!(self.pdev, "dmalab device unbound\n");
    }
}
// ANCHOR_END: unbind

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab tutorial, step 3: descriptor and completion rings, polled",
    license: "GPL v2",
}
