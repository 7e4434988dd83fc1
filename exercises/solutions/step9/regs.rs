// SPDX-License-Identifier: GPL-2.0

//! BAR0 registers, one type each, made by the kernel's `register!` macro from the table in the
//! shared ABI file (`abi/regs.rs`, `bar0_registers!`): `bar.read(regs::ID).magic()` instead of
//! `bar.read32(0x000)`, so an offset or a bit position is written down exactly once.

use kernel::{
    io::{
        register,
        register::{Array, RegisterArray, RegisterArrayLoc},
    },
    prelude::*,
};

use crate::abi::{MAX_QUEUES, QUEUE_STRIDE};

bar0_registers!(register);

/// The size of the device's internal memory in bytes (two 32-bit registers).
pub(crate) fn mem_size(bar: &crate::Bar0<'_>) -> u64 {
    use kernel::io::Io;
    let lo = bar.read(MEM_SIZE_LO).bytes().get();
    let hi = bar.read(MEM_SIZE_HI).bytes().get();
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The low and high 32 bits of a DMA address, for a `*_LO`/`*_HI` register pair.
pub(crate) fn split_address(addr: u64) -> (u32, u32) {
    (addr as u32, (addr >> 32) as u32)
}

/// The location of queue `q`'s instance of the per-queue register `R`.
pub(crate) fn queue<R: RegisterArray + Array>(q: usize) -> Result<RegisterArrayLoc<R>> {
    R::try_at(q).ok_or(EINVAL)
}
