// SPDX-License-Identifier: GPL-2.0

//! `IOC_DMA_SELFTEST`: streaming DMA of the caller's own pages. One mapping of the caller's
//! buffer is kept across several device operations and handed between the CPU and the device
//! with syncs: the DMA API's whole cycle (map, device, sync for the CPU, CPU, sync for the
//! device, ..., unmap). Drivers run such a test at probe to catch a broken DMA setup (ioatdma
//! does); here the checker runs it with every mapping bounced (swiotlb) and under the ownership
//! oracle, where a missing or misdirected sync shows as wrong bytes.

use kernel::{prelude::*, uaccess::UserPtr};

use crate::abi::{self, Opcode, SelfTest, Status};
use crate::streaming::{Bidirectional, Mapping, Owner, UserPages};
use crate::DevState;

/// The longest segment a mapping may have: the device's maximum segment size, which this
/// driver leaves at the PCI default (64 KiB); DMA-API debug warns about longer segments.
const MAX_SEGMENT: u32 = 64 * 1024;

/// Round `round`'s data: a byte pattern no other round repeats.
fn pattern(buf: &mut [u8], round: u32) {
    let mut x = round.wrapping_mul(2_654_435_761) | 1;
    for b in buf.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
}

/// The device segments (bus address, length) of `len` bytes at `offset` of `m`.
fn segments_of<S: Owner>(
    m: &Mapping<Bidirectional, S>,
    offset: usize,
    len: usize,
) -> Result<KVec<(u64, u32)>> {
    let mut v = KVec::new();
    for s in m.segments_in(offset, len) {
        v.push((s.addr, s.len), GFP_KERNEL)?;
    }
    Ok(v)
}

/// Runs the self-test `t` asks for; `t.verified` counts the rounds whose result the CPU read
/// back and found right.
pub(crate) fn run(dev: &DevState, t: &mut SelfTest) -> Result {
    let len = t.len as usize;
    if len == 0
        || len % 128 != 0
        || t.len > abi::MAX_REQUEST
        || t.buf % 64 != 0
        || !(1..=64).contains(&t.rounds)
    {
        return Err(EINVAL);
    }
    let q = dev.queues.get(t.queue as usize).ok_or(EINVAL)?;
    // The queue's buffers, held for the whole test: teardown waits for them before it resets
    // the device, so the device stays bound while the caller's pages are mapped for it.
    let bufs = q.bufs.lock();
    let Some(bufs) = &*bufs else {
        return Err(ENODEV);
    };
    if dev.dead.load(kernel::sync::atomic::Acquire) {
        return Err(ENODEV);
    }
    // SAFETY: teardown marks the device dead before it waits for this queue's buffers, which
    // this function holds from the check above until it returns; so the device is bound until
    // then, and `bound` does not outlive this function.
    let bound = unsafe { dev.device().as_bound() };
    let half = len / 2;
    let mut want = KVVec::from_elem(0u8, half, GFP_KERNEL)?;
    let mut got = KVVec::from_elem(0u8, half, GFP_KERNEL)?;
    t.verified = 0;

    // TODO(step 9): Each round the device COPYs the buffer's first half onto its second half,
    // and the CPU checks the copy. (1) Pin the caller's `len` bytes at t.buf
    // (UserPages::<Bidirectional>::pin): the device reads one half and writes the other.
    // (2) While the pages are only pinned they are the CPU's: write round 0's pattern
    // (pattern(&mut want, 0)) into the first half (pages.write). (3) Map them for the
    // device (pages.map(bound, MAX_SEGMENT)): from here the device owns them. (4) Each
    // round: q.run_on(dev, bufs, Opcode::Copy, half, &segments_of(&mapped, 0, half)?,
    // &segments_of(&mapped, half, half)?) gives the completion and, if the device is done,
    // its evidence (None: return ENODEV and let the mapping drop: it leaks, never unmaps).
    // Take the memory back with sync_for_cpu(&done); if the status is OK, read the second
    // half (cpu.read(half, &mut got)) and count the round when got == want. After the last
    // round (or a failed one) unmap the CPU-owned mapping and return the run's result;
    // else write the next round's pattern into the first half and give the memory back to
    // the device (sync_for_device) before the next run_on.
    let _ = (bound, q, bufs, half, &mut want, &mut got, UserPtr::from_addr(0));
    let _ = (pattern, segments_of::<crate::streaming::CpuOwned>, MAX_SEGMENT);
    let _ = (Opcode::Copy, Status::Ok, UserPages::<Bidirectional>::len);
    Err(ENOSYS)
}
