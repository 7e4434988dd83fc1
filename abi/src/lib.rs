//! The dmalab ABI shared by the device model, the guest agent and the guest kernel module.
//!
//! The definitions live in `abi/regs.rs` so the kernel module can `include!` the very same file.
#![no_std]
include!("../regs.rs");
// The layout assertions are in regs.rs itself, so the kernel build compiles them too.
