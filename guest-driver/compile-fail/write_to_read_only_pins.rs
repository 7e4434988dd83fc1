// SPDX-License-Identifier: GPL-2.0
// expect: E0599
//! Pages pinned for a device that only reads (`ToDevice`) are pinned read-only: they may be the
//! shared zero page, or shared copy-on-write with another process, so the CPU may not write them
//! (`CpuWrites` is `Bidirectional` only). The conformance suite found the abstraction allowing
//! it once: a write into a fresh anonymous buffer hit the zero page and oopsed.

use crate::streaming::{CpuOwned, Mapping, ToDevice};
use kernel::prelude::*;

pub(crate) fn misuse(m: &mut Mapping<ToDevice, CpuOwned>) -> Result {
    m.write(0, &[0u8; 64])
}
