// SPDX-License-Identifier: GPL-2.0

//! `IOC_DMA_SELFTEST`: one streaming mapping of the caller's buffer kept across several device
//! operations, handed between the CPU and the device with syncs: the DMA API's whole cycle
//! (map, device, sync for the CPU, CPU, sync for the device, ..., unmap), the part of the
//! streaming abstraction the request path (map, device, unmap) does not use. Drivers run such a
//! test at probe to catch a broken DMA setup (ioatdma does); here the tests run it, under the
//! oracle, which sees every hand-over (docs/streaming-dma.md).

use kernel::{prelude::*, uaccess::UserPtr};

use crate::abi::{self, Opcode, SelfTest, Status};
use crate::bugs::{self, DmaBug};
use crate::pool::Segments;
use crate::state::DevState;
use crate::streaming::{Bidirectional, Mapping, Owner, UserPages};

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

/// The device segments of `len` bytes at `offset` of `m`.
fn segments_of<S: Owner>(
    m: &Mapping<Bidirectional, S>,
    offset: usize,
    len: usize,
) -> Result<Segments> {
    let mut v = KVec::new();
    for s in m.segments_in(offset, len) {
        v.push((s.addr, s.len), GFP_KERNEL)?;
    }
    Ok(v)
}

/// Runs the self-test `t` asks for on `dev`; `t.verified` counts the rounds the CPU checked.
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
    let half = len / 2;
    let ticket = dev.map_gate.enter(dev.bar.device())?;
    let mut pages = UserPages::<Bidirectional>::pin(UserPtr::from_addr(t.buf as usize), len)?;
    let mut want = KVVec::from_elem(0u8, half, GFP_KERNEL)?;
    let mut got = KVVec::from_elem(0u8, half, GFP_KERNEL)?;
    // Pinned but not mapped: the CPU's. The first half gets round 0's data.
    pattern(&mut want, 0);
    pages.write(0, &want)?;
    let mut mapped = pages.map(ticket.bound(), abi::MAX_REQUEST)?;
    t.verified = 0;
    let mut round = 0;
    loop {
        // The device copies the first half onto the second.
        let (result, done) = q.run_on(
            dev,
            Opcode::Copy,
            half as u32,
            segments_of(&mapped, 0, half)?,
            segments_of(&mapped, half, half)?,
        );
        let forgot = DmaBug::active() == DmaBug::SyncForgotten;
        if forgot {
            // bug: takes the result before taking the memory back from the device
            bugs::read_without_sync_into(&mapped, half, &mut got);
        }
        let mut cpu = mapped.sync_for_cpu(&done);
        let ok = result.as_ref().is_ok_and(|c| c.status == Status::Ok.raw());
        if ok {
            if !forgot {
                cpu.read(half, &mut got)?;
            }
            t.verified += u32::from(got == want);
        }
        round += 1;
        if !ok || round == t.rounds {
            // the last hand-over: the CPU owns the memory, the unmap needs no evidence
            drop(cpu.unmap());
            drop(ticket);
            return result.map(|_| ());
        }
        // The next round's data, written by the CPU, then handed back to the device.
        pattern(&mut want, round);
        cpu.write(0, &want)?;
        mapped = cpu.sync_for_device();
    }
}
