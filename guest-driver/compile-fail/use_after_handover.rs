// SPDX-License-Identifier: GPL-2.0
// expect: E0382
//! A hand-over consumes the mapping: the old handle, with the old owner in its type, is gone.

use crate::streaming::{CpuOwned, DeviceOwned, FromDevice, Mapping};
use kernel::prelude::*;

pub(crate) fn misuse(m: Mapping<FromDevice, CpuOwned>, out: &mut [u8]) -> Result {
    let lent: Mapping<FromDevice, DeviceOwned> = m.sync_for_device();
    let r = m.read(0, out);
    drop(lent);
    r
}
