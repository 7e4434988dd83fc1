// SPDX-License-Identifier: GPL-2.0

//! `IOC_SUBMIT_BATCH`: many requests over any queues, posted in waves with one doorbell per
//! queue per wave, each with its own outcome.

use kernel::prelude::*;

use crate::abi::Request;
use crate::bugs::DmaBug;
use crate::queue::{status_to_result, Handover, Owner, Prepared};
use crate::streaming::DeviceDone;

/// Runs a batch of requests (`IOC_SUBMIT_BATCH`) with as many in flight at once as the rings
/// and pools allow: the requests are prepared and posted in order, each queue's doorbell is
/// rung once per wave, then the wave's requests are waited for and finished in order. A request
/// that would have to wait for bounce pages or a ring slot ends the wave first: what it waits
/// for may be held by its own batch's earlier requests (or, for slots, by another batch's that
/// it has not rung either). Each request's outcome goes in its `error` field;
/// returns how many succeeded.
pub(crate) fn submit_batch(dev: &impl Owner, reqs: &mut [Request]) -> Result<u32> {
    // (request index, slot, prepared): reserved up front, so a push never allocates
    let mut wave = KVec::with_capacity(reqs.len(), GFP_KERNEL)?;
    let mut done = 0;
    for i in 0..reqs.len() {
        let Some(q) = dev.queue(usize::from(reqs[i].queue)) else {
            reqs[i].error = errno(EINVAL);
            continue;
        };
        let prepared = loop {
            match q.prepare(dev, &mut reqs[i], wave.is_empty()) {
                Err(e) if e.to_errno() == EAGAIN.to_errno() && !wave.is_empty() => {
                    done += drain(dev, reqs, &mut wave);
                }
                other => break other,
            }
        };
        let p = match prepared {
            Err(e) => {
                reqs[i].error = errno(e);
                continue;
            }
            Ok(p) => p,
        };
        // likewise for a ring slot: several batches on one queue must not hold every slot
        // with requests none of them has rung
        let posted = loop {
            let may_wait = wave.is_empty();
            match q.post(dev, &mut reqs[i], &p, Handover::Batched { may_wait }) {
                Err(e) if e.to_errno() == EAGAIN.to_errno() && !may_wait => {
                    done += drain(dev, reqs, &mut wave);
                }
                other => break other,
            }
        };
        match posted {
            Ok(slot) => wave.push((i, slot, p), GFP_KERNEL)?,
            Err(e) => {
                // SAFETY: not posted: the device never saw the request's memory.
                let done = unsafe { DeviceDone::new() };
                let r = q.finish(&mut reqs[i], p, Err(e), &done);
                reqs[i].error = outcome(&reqs[i], r);
            }
        }
    }
    done += drain(dev, reqs, &mut wave);
    Ok(done)
}

/// Rings the doorbell of every queue the wave posted to, then waits for and finishes its
/// requests in order; returns how many succeeded.
fn drain<'a>(
    dev: &'a impl Owner,
    reqs: &mut [Request],
    wave: &mut KVec<(usize, usize, Prepared<'a>)>,
) -> u32 {
    let mut rung = 0u32;
    for &(i, _, _) in wave.iter() {
        let q = usize::from(reqs[i].queue);
        if rung & (1 << q) == 0 {
            rung |= 1 << q;
            // A device that is gone fails the waits below (teardown releases them).
            if let Some(queue) = dev.queue(q) {
                let _ = queue.ring_doorbell(dev);
            }
        }
    }
    let mut ok = 0;
    for (i, slot, p) in wave.drain_all() {
        // Every request of the wave was posted to a queue `submit_batch` found: this cannot
        // fail (and would leave the request's memory held, never freed, if it did).
        let Some(q) = dev.queue(usize::from(reqs[i].queue)) else {
            continue;
        };
        let (result, done) = q.wait(dev, slot, p.timeout_ms());
        let r = q.finish(&mut reqs[i], p, result, &done);
        reqs[i].error = outcome(&reqs[i], r);
        ok += u32::from(reqs[i].error == 0);
    }
    ok
}

/// An errno as `Request::error` (positive).
fn errno(e: Error) -> u32 {
    e.to_errno().unsigned_abs()
}

/// A finished request's outcome as `Request::error`: its failure's errno, or its status's
/// (as `IOC_SUBMIT` would return it), 0 when it succeeded.
fn outcome(req: &Request, r: Result) -> u32 {
    let r = r.and_then(|()| match DmaBug::active() {
        DmaBug::IgnoreStatus => Ok(()),
        _ => status_to_result(req.status),
    });
    r.err().map_or(0, errno)
}
