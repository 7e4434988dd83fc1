// SPDX-License-Identifier: GPL-2.0
// expect: E0133
//! The evidence is made only where someone writes down why the device is done: in `unsafe`.

use crate::streaming::{DeviceDone, DeviceOwned, Mapping, ToDevice, UserPages};

pub(crate) fn misuse(m: Mapping<ToDevice, DeviceOwned>) -> UserPages<ToDevice> {
    m.unmap(&DeviceDone::new())
}
