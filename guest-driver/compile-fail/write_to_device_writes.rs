// SPDX-License-Identifier: GPL-2.0
// expect: E0599
//! The CPU may write only memory the device reads (`CpuWrites`: `ToDevice`, `Bidirectional`):
//! a `FromDevice` buffer the CPU wrote would be invalidated under it on a non-coherent machine
//! at the unmap.

use crate::streaming::{CpuOwned, FromDevice, Mapping};
use kernel::prelude::*;

pub(crate) fn misuse(m: &mut Mapping<FromDevice, CpuOwned>) -> Result {
    m.write(0, &[0u8; 64])
}
