// SPDX-License-Identifier: GPL-2.0

//! dmalab tutorial, step 1: bind to the device, enable it, check what it is, unbind cleanly.
//! The chapter is docs/tutorial/01-bind.md; `make check-step STEP=1` grades your copy
//! in work/step1/ (`make exercise STEP=1` makes it; docs/tutorial/README.md).

use kernel::{device::Core, io::Io, pci, prelude::*};

/// The device's registers, constants and ioctl structures (docs/datasheet.md), shared verbatim
/// with the device model and the test agent.
#[macro_use]
pub mod abi {
    include!("../../../abi/regs.rs");
}

mod regs;

/// BAR0 as the driver sees it: a mapped I/O region of exactly the datasheet's size, so every
/// register access is bounds-checked at compile time.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

struct DmalabDriver;

/// What one bound device owns. Dropping it (on unbind) undoes the binding: the BAR is unmapped
/// and its region released.
struct DmalabData<'bound> {
    _bar: Bar0<'bound>,
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

/// Binds one device: enable it, map BAR0, check the ID and VERSION registers.
fn probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
    // TODO(step 1): Enable the device (memory decoding and bus mastering), map BAR0 and read its
    // ID and VERSION registers. Refuse (ENODEV) a device whose ID is not DEVICE_MAGIC or whose
    // major version is not VERSION_MAJOR, and say why with dev_err!. On success, log the
    // version as "v<major>.<minor>" with dev_info! and keep the BAR in DmalabData.
    dev_err!(pdev, "step 1: probe() is not written yet (see its TODO)\n");
    Err(ENOSYS)
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
    /// Runs on unbind (and rmmod), before the fields drop and release the BAR.
    fn drop(&mut self) {
        dev_info!(self.pdev, "dmalab device unbound\n");
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab tutorial, step 1: bind and identify",
    license: "GPL v2",
}
