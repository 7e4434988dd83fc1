//! The dmalab ABI shared by the device model, the guest agent and the guest kernel module.
//!
//! The definitions live in `abi/regs.rs` so the kernel module can `include!` the very same file.
#![no_std]
include!("../regs.rs");

const _: () = assert!(core::mem::size_of::<Descriptor>() == DESC_SIZE);
const _: () = assert!(core::mem::size_of::<SgEntry>() == SG_ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<Completion>() == COMPLETION_SIZE);
const _: () = assert!(queue_reg(MAX_QUEUES, 0) <= MSIX_TABLE_OFFSET as usize);
const _: () =
    assert!((MSIX_VECTORS as usize) * 16 <= (MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) as usize);
const _: () = assert!((MSIX_PBA_OFFSET as usize) + 8 <= BAR0_SIZE);
const _: () = assert!(core::mem::size_of::<DeviceInfo>() == 48);
const _: () = assert!(core::mem::size_of::<Request>() == 72);
const _: () = assert!(core::mem::size_of::<Stats>() == 64 * MAX_QUEUES + 24);
