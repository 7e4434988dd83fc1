// SPDX-License-Identifier: GPL-2.0

//! BAR0 registers, one type each, made by the kernel's `register!` macro from the table in the
//! shared ABI file (`abi/regs.rs`, `bar0_registers!`): `bar.read(regs::ID).magic()` instead of
//! `bar.read32(0x000)`, so an offset or a bit position is written down exactly once.

use kernel::io::register;

use crate::abi::{MAX_QUEUES, QUEUE_STRIDE};

bar0_registers!(register);
