// SPDX-License-Identifier: GPL-2.0

//! dmalab: driver for the dmalab DMA test device (docs/datasheet.md).
//!
//! The crate root holds the module declaration and the ABI; each concern has its own module:
//! `driver` (the PCI driver and probe), `guards` (what a binding owns, undone in reverse order),
//! `regs` (typed registers), `ring` (the rings: producer, consumer, tags), `queue` (a queue and
//! its request path), `batch`, `pool` (bounce pages), `zerocopy` and `streaming` (the zero-copy
//! path), `device` (the device apart from its queues), `state` (the device with its queues, as
//! interrupts, files and the driver share it), `interrupts`, `file` (`/dev/dmalabN`),
//! `selftest`, and `bugs` (deliberate mistakes for the tests).
//!
//! What it shows, and which part of the kernel's Rust DMA API (Linux 7.3) it uses where:
//!
//! - Rings (submission, completion, scatter-gather tables) are `dma::Coherent` allocations made
//!   once at probe and accessed with `io_read!`/`io_write!`, i.e. volatile accesses, since the
//!   device writes them concurrently. Ordering to the device is `dma_mb(Write)` before the
//!   doorbell and `dma_mb(Read)` after seeing a completion's phase bit.
//! - Data takes one of two paths (module parameter `dma_mode`, default auto: zero-copy from
//!   `zero_copy_min` bytes up). **Bounce**: a per-queue pool of 4 KiB pages carved out of
//!   64 KiB `Coherent` blocks, allocated at probe (under a vIOMMU every allocation costs one
//!   IOMMU map per page); user data is copied straight into the pool's pages and out again.
//!   **Zero-copy** (`zerocopy.rs`): the caller's pages are pinned and mapped per request with
//!   the streaming DMA abstraction of `streaming.rs` (7.3's Rust API has none), synced and
//!   unmapped only on evidence that the device is done with them. Either way a request whose
//!   memory is not one contiguous range gets a device scatter-gather list.
//! - The hot path never reads a BAR register (each read costs ~80 us under TCG): submission is
//!   descriptor writes plus one doorbell write; completion is read from memory in the interrupt
//!   handler, with one completion-head doorbell write per batch.
//! - Teardown obeys the `Coherent` drop contract: the device is reset (and the reset read back)
//!   before any DMA memory is freed, and every waiting caller is released with an error.

/// Device and ioctl ABI, shared verbatim with the device model and the guest agent.
#[macro_use]
pub mod abi {
    include!("../../abi/regs.rs");
}

/// The ABI types the driver moves between user space, DMA memory and the device as bytes.
///
/// Each is `#[repr(C)]`, made only of integers and arrays of them (every bit pattern is a valid
/// value), and has no padding: `abi/regs.rs`, which this crate compiles, asserts in `const`
/// items that each one's size is the sum of its fields' (`DESC_SIZE`, `SG_ENTRY_SIZE`,
/// `COMPLETION_SIZE`, and 56, 80, 16, 24, 64 and `64 * MAX_QUEUES + 56` bytes for `DeviceInfo`,
/// `Request`, `Batch`, `SelfTest`, `QueueStats` and `Stats`).
macro_rules! plain_abi_data {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: see `plain_abi_data`: integers only, no padding, so any bytes are a valid
        // value and every byte of a value is initialized.
        unsafe impl kernel::transmute::FromBytes for $t {}
        // SAFETY: as above.
        unsafe impl kernel::transmute::AsBytes for $t {}
    )*};
}
plain_abi_data!(
    abi::Descriptor,
    abi::Completion,
    abi::SgEntry,
    abi::DeviceInfo,
    abi::Request,
    abi::Batch,
    abi::SelfTest,
    abi::Stats,
);

mod batch;
mod bugs;
mod device;
mod driver;
mod file;
mod guards;
mod interrupts;
mod pool;
mod queue;
mod regs;
mod ring;
mod selftest;
mod state;
/// The typed streaming-DMA abstraction (docs/streaming-dma.md): this module's copy, or the
/// kernel's own where the tree has it (kernel-patches/streaming/ is made from this file). It is
/// the whole API the patch offers: the driver uses user pages mapped whole; driver-owned pages,
/// partial syncs and single-page maps are the conformance suite's to exercise.
#[allow(dead_code)]
#[cfg(not(kernel_dma_streaming))]
mod streaming;
#[cfg(kernel_dma_streaming)]
use kernel::dma::streaming;
mod zerocopy;

kernel::module_pci_driver! {
    type: driver::DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "Driver for the dmalab DMA test device",
    license: "GPL v2",
    params: {
        probe_fail_step: u32 {
            default: 0,
            description: "Testing only: make probe step N (1..=9) fail, to exercise its undo path",
        },
        dma_mode: u32 {
            default: 0,
            description: "How requests reach user memory: 0 = auto (zero-copy from zero_copy_min bytes up), 1 = bounce pool, 2 = zero-copy where the memory allows",
        },
        zero_copy_min: u32 {
            default: 16384,
            description: "Auto mode: smallest request mapped zero-copy (smaller ones are copied; docs/performance.md)",
        },
        dma_bug: u32 {
            default: 0,
            description: "Testing only: commit bug N (1..=16, see bugs.rs) for the oracle and dmalab check tests",
        },
    },
}
