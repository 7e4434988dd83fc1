// SPDX-License-Identifier: GPL-2.0
// expect: E0599
//! While the device owns a mapping the CPU has no way in: `read` exists only on a `CpuOwned`
//! mapping, so reading a result takes `sync_for_cpu` (or `unmap`) first.

use crate::streaming::{DeviceOwned, FromDevice, Mapping};
use kernel::prelude::*;

pub(crate) fn misuse(m: &Mapping<FromDevice, DeviceOwned>, out: &mut [u8]) -> Result {
    m.read(0, out)
}
