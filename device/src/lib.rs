//! dmalab device model: a DMA engine with descriptor rings, MSI-X interrupts and an event log.
//!
//! The model is independent of QEMU: guest memory comes through [`memory::DmaMemory`] and
//! interrupts leave through [`interrupts::InterruptSink`], so unit tests drive it with
//! anonymous memory and a recording sink. `vfio_server` serves it to QEMU over vfio-user,
//! through our own protocol layer in `vfio_user`.
//! `docs/datasheet.md` is the programming model; [`dmalab_abi`] holds its constants.

pub mod control;
pub mod device;
pub mod engine;
pub mod eventlog;
mod fault_plan;
pub mod faults;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod interrupts;
pub mod memory;
pub mod pci_config;
pub mod queue;
pub mod registers;
pub mod shared;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vfio_server;
pub mod vfio_user;
pub mod wire;
pub mod worker;

pub use dmalab_abi as abi;
