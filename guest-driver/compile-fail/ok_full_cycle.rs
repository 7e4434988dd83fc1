// SPDX-License-Identifier: GPL-2.0
// expect: ok
//! The control: the same calls in the order the rules ask for compile (so each failure above is
//! its misuse's, not the harness's).

use crate::streaming::{Bidirectional, DeviceDone, DeviceOwned, Mapping, UserPages};
use kernel::prelude::*;

pub(crate) fn cycle(
    m: Mapping<Bidirectional, DeviceOwned>,
    done: &DeviceDone,
    out: &mut [u8],
) -> Result<UserPages<Bidirectional>> {
    let mut cpu = m.sync_for_cpu(done);
    cpu.read(0, out)?;
    cpu.write(0, out)?;
    let lent = cpu.sync_for_device();
    Ok(lent.unmap(done))
}
