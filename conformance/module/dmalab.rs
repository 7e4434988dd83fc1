// SPDX-License-Identifier: GPL-2.0

//! The conformance suite of the kernel's Rust DMA abstraction (docs/conformance.md): binds the
//! dmalab device and, API by API, allocates or maps memory with `kernel::dma` and
//! `kernel::scatterlist`, has the device DMA into and out of it, and checks every byte on the
//! CPU side through the abstraction's own accessors. Each test prints one result line
//! (`dmalab-conformance: {json}`) that the harness turns into a table of API × condition.
//!
//! Each API's tests are one file, compiled only with `--cfg api_<name>` (see Kbuild): a tree
//! whose API differs fails to build those tests alone, and the report says so.
//!
//! The module's init binds the device (every API's tests run in probe), unbinds it, and binds
//! it once more for the lifetime tests' second round (`api_lifetime.rs`): what survives an
//! unbind is only seen after one.

use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use kernel::{device::Core, dma::Device as _, driver, io::Io, pci, prelude::*};

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
#[cfg(api_lifetime)]
mod api_lifetime;
#[cfg(api_sgtable)]
mod api_sgtable;
#[cfg(api_streaming)]
mod api_streaming;

/// BAR0 as the suite sees it.
type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

struct Conformance;

/// What a bound device keeps: what the lifetime tests leave in the driver's data (freed as the
/// driver unbinds), and the BAR. The tests ran in probe and released everything else.
struct Bound<'bound> {
    #[cfg(api_lifetime)]
    _kept: Option<api_lifetime::Kept>,
    _bar: Bar0<'bound>,
}

/// Which binding of the device this is: 0 runs the whole suite, 1 the lifetime tests' second
/// round.
static ROUND: AtomicU8 = AtomicU8::new(0);
/// The first binding's probe ran every test to its end.
static SUITE_RAN: AtomicBool = AtomicBool::new(false);

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
    if ROUND.load(Ordering::Acquire) != 0 {
        return Ok(Bound {
            #[cfg(api_lifetime)]
            _kept: api_lifetime::in_probe(&dev, api_lifetime::Round::Unmanaged),
            _bar: bar,
        });
    }
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
    // last: what it keeps outlives this probe
    #[cfg(api_lifetime)]
    let kept = api_lifetime::in_probe(&dev, api_lifetime::Round::Suite);
    SUITE_RAN.store(true, Ordering::Release);
    Ok(Bound {
        #[cfg(api_lifetime)]
        _kept: kept,
        _bar: bar,
    })
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

/// The module: its init runs the whole suite, binding and unbinding the device; nothing stays
/// registered.
struct Suite;

/// Registers the driver (the device binds, synchronously) and unregisters it (it unbinds).
fn bind_and_unbind(module: &'static ThisModule) -> Result {
    let registration = KBox::pin_init(
        driver::Registration::<pci::Adapter<Conformance>>::new(
            <Suite as kernel::ModuleMetadata>::NAME,
            module,
        ),
        GFP_KERNEL,
    )?;
    drop(registration);
    Ok(())
}

impl kernel::Module for Suite {
    fn init(module: &'static ThisModule) -> Result<Self> {
        bind_and_unbind(module)?;
        if !SUITE_RAN.load(Ordering::Acquire) {
            // no "done" line: the report says the suite did not run to its end
            return Ok(Suite);
        }
        #[cfg(api_lifetime)]
        {
            api_lifetime::after_unbind(api_lifetime::Round::Suite);
            ROUND.store(1, Ordering::Release);
            bind_and_unbind(module)?;
            api_lifetime::after_unbind(api_lifetime::Round::Unmanaged);
        }
        report::done();
        Ok(Suite)
    }
}

// Named `dmalab` like the driver it stands in for: the test agent loads, unloads and reads
// DMA-API debug for a module of that name.
kernel::prelude::module! {
    type: Suite,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "dmalab: conformance suite of the kernel's Rust DMA abstraction",
    license: "GPL v2",
}
