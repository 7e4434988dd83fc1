// SPDX-License-Identifier: GPL-2.0

//! The conformance suite of the kernel's Rust DMA abstraction (docs/conformance.md): binds the
//! dmalab device and, API by API, allocates or maps memory with `kernel::dma` and
//! `kernel::scatterlist`, has the device DMA into and out of it, and checks every byte on the
//! CPU side through the abstraction's own accessors. Each test prints one result line
//! (`dmalab-conformance: {json}`) that the harness turns into a table of API × condition.
//!
//! Each API's tests are one file, compiled only with `--cfg api_<name>` (see Kbuild): a tree
//! whose API differs fails to build those tests alone, and the report says so.

use kernel::{device::Core, dma::Device as _, io::Io, pci, prelude::*};

// The binding itself moves between kernel series (`pci_device_table!`'s arguments, `probe`'s
// id argument): scripts/build-conformance.sh passes `--cfg series_7_2` for a 7.2 tree. This
// is the suite's base, not an API under test.

/// The device's registers, constants and structures (docs/datasheet.md), shared verbatim with
/// the device model, the driver and the agent.
#[macro_use]
pub mod abi {
    include!("../../abi/regs.rs");
}

mod device;
mod report;

#[cfg(api_attrs)]
mod api_attrs;
#[cfg(api_coherent)]
mod api_coherent;
#[cfg(api_coherent_box)]
mod api_coherent_box;
#[cfg(api_coherent_handle)]
mod api_coherent_handle;
#[cfg(api_dma_mask)]
mod api_dma_mask;
#[cfg(api_sgtable)]
mod api_sgtable;
#[cfg(api_streaming)]
mod api_streaming;

/// BAR0 as the suite sees it.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

struct Conformance;

/// What a bound device keeps: the BAR (the tests ran in probe and released everything else).
struct Bound<'bound> {
    _bar: Bar0<'bound>,
}

#[cfg(not(series_7_2))]
kernel::pci_device_table!(
    PCI_TABLE,
    <Conformance as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT, abi::PCI_DEVICE_ID as u32),
        ()
    )]
);
#[cfg(series_7_2)]
kernel::pci_device_table!(
    PCI_TABLE,
    MODULE_PCI_TABLE,
    <Conformance as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT, abi::PCI_DEVICE_ID as u32),
        ()
    )]
);

fn probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<Bound<'bound>> {
    pdev.enable_device_mem()?;
    pdev.set_master();
    let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab-conformance")?;
    if bar.read32(abi::REG_ID) != abi::DEVICE_MAGIC {
        dev_err!(pdev, "not a dmalab device\n");
        return Err(ENODEV);
    }
    let dma_bits = bar.read32(abi::REG_CAP_DMA_BITS) & 0xff;
    // SAFETY: no DMA allocation or mapping exists for this device yet.
    unsafe { pdev.dma_set_mask_and_coherent(kernel::dma::DmaMask::try_new(dma_bits)?)? };
    let dev = device::Dma::new(&bar, pdev.as_ref(), dma_bits);
    // (used by every API's tests; a tree that builds none still loads and reports)
    let _ = &dev;
    report::start(dma_bits);
    #[cfg(api_coherent)]
    api_coherent::run(&dev);
    #[cfg(api_coherent_box)]
    api_coherent_box::run(&dev);
    #[cfg(api_coherent_handle)]
    api_coherent_handle::run(&dev);
    #[cfg(api_attrs)]
    api_attrs::run(&dev);
    #[cfg(api_sgtable)]
    api_sgtable::run(&dev);
    #[cfg(api_streaming)]
    api_streaming::run(&dev);
    // last: it changes the device's mask and sets it back
    #[cfg(api_dma_mask)]
    api_dma_mask::run(&dev, pdev);
    report::done();
    Ok(Bound { _bar: bar })
}

impl pci::Driver for Conformance {
    type IdInfo = ();
    type Data<'bound> = Bound<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    #[cfg(not(series_7_2))]
    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        probe(pdev)
    }

    #[cfg(series_7_2)]
    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: &'bound Self::IdInfo,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        probe(pdev)
    }
}

// Named `dmalab` like the driver it stands in for: the test agent loads, unloads and reads
// DMA-API debug for a module of that name.
kernel::module_pci_driver! {
    type: Conformance,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab: conformance suite of the kernel's Rust DMA abstraction",
    license: "GPL v2",
}
