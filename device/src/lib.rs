//! dmalab device model: a DMA engine with descriptor rings, MSI-X interrupts and an event log.
//!
//! The model is independent of QEMU: guest memory comes through [`memory::DmaMemory`] and
//! interrupts leave through [`interrupts::InterruptSink`], so unit tests drive it with
//! anonymous memory and a recording sink. `vfio_server` serves it to QEMU over vfio-user,
//! through our own protocol layer in `vfio_user`.
//! `docs/datasheet.md` is the programming model; [`dmalab_abi`] holds its constants.

#![warn(missing_docs)]
// `unsafe` lives in five modules only (fd passing, mmap'd guest memory, its SIGBUS recovery,
// eventfds); every other
// module is checked to have none.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod control;
pub mod device;
mod direct;
mod direct_regs;
mod engine;
pub mod eventlog;
mod fault_plan;
pub mod faults;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod interrupts;
mod lane;
#[allow(unsafe_code)]
pub mod memory;
mod ownership;
pub mod pci_config;
mod queue;
mod registers;
mod shared;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[allow(unsafe_code)]
pub mod unsealed;
#[allow(unsafe_code)]
pub mod vfio_server;
#[allow(unsafe_code)]
pub mod vfio_user;
pub mod wire;
mod worker;

pub use dmalab_abi as abi;
