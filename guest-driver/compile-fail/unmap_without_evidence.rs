// SPDX-License-Identifier: GPL-2.0
// expect: E0061
//! Taking memory back from the device needs evidence that the device is done with it.

use crate::streaming::{DeviceOwned, Mapping, ToDevice, UserPages};

pub(crate) fn misuse(m: Mapping<ToDevice, DeviceOwned>) -> UserPages<ToDevice> {
    m.unmap()
}
