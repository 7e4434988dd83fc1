//! One descriptor's way through the device, the same for a queue's worker and for the direct
//! block: record the fetch → ask the fault plan → fatal, stall or spurious interrupt → delayed
//! start → execute (or complete with the injected status) → error event, DMA violation, DMA
//! outside the descriptor, unreported short transfer; then, before the result is published,
//! a dropped or late completion.
//!
//! How a descriptor arrives (fetched from a ring slot, latched from the `DMA_*` registers) and
//! how its result is published (a completion in the ring, `DONE` in `DMA_STATUS`) belong to the
//! caller, which describes itself through [`Origin`]. A fault kind is applied here once, so
//! both kinds of caller get it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dmalab_abi::{self as abi, Completion, Descriptor};

use crate::engine::{self, Ctx, Outcome};
use crate::eventlog::Event;
use crate::fault_plan::FaultPlan;
use crate::memory::MemView;
use crate::registers::ErrorBits;
use crate::shared::{sleep_unless, Shared, BUS_MASTER_OFF};

/// Where a descriptor comes from: a queue's worker or the direct block.
pub(crate) trait Origin {
    /// The queue number in events and fault rules ([`abi::DIRECT_QUEUE`] for the block).
    fn queue(&self) -> u16;

    /// Whether a reset asked this queue (or the block) to stop. Injected delays are cut short
    /// when it turns true, and the descriptor is then abandoned.
    fn cancelled(&self) -> bool;

    /// The DMA mappings in force now. Called again after every wait, so that what the driver
    /// unmapped meanwhile is gone for the device too.
    fn view(&mut self) -> Arc<MemView>;

    /// An injected stall: take no more descriptors until a reset. The current one never
    /// completes.
    fn stall(&mut self);

    /// An injected spurious interrupt: raise this origin's vector with nothing new. An origin
    /// without a vector (the direct block is polled) does nothing.
    fn spurious_irq(&mut self);
}

/// A descriptor that ran (or was refused by an injected status): what the caller publishes.
pub(crate) struct Executed {
    pub out: Outcome,
    pub plan: FaultPlan,
    /// The mappings the descriptor ran against, for the caller's completion write.
    pub view: Arc<MemView>,
}

/// What the caller does with an executed descriptor's result.
pub(crate) enum Publish {
    /// Publish it, through these mappings (translated afresh after a late completion).
    Now(Arc<MemView>),
    /// An injected dropped completion: the result is never published.
    Dropped,
    /// A reset came while the completion was held back: abandon it.
    Cancelled,
}

/// Runs descriptor `d`, fetched as number `index` (its ring slot, or the block's transfer
/// number), up to its result. `None` when it stops short of one: the device halted (an
/// injected fatal error), the origin stalled, or a reset cut an injected delay short.
pub(crate) fn execute(
    dev: &Shared,
    origin: &mut impl Origin,
    index: u32,
    d: &Descriptor,
) -> Option<Executed> {
    let q = origin.queue();
    dev.log.counters.descriptors.fetch_add(1, Ordering::Relaxed);
    dev.log.record(|| Event::Fetch {
        queue: q,
        index,
        opcode: d.opcode,
        flags: d.flags,
        tag: d.tag,
        len: d.len,
    });
    if dev.is_fatal() {
        // A halted device starts nothing: the descriptor waits for a device reset.
        return None;
    }
    let plan = FaultPlan::for_descriptor(dev, q, index, d);
    if plan.fetch.spurious_irq {
        origin.spurious_irq();
    }
    if plan.fetch.fatal {
        dev.set_error(ErrorBits::new().with_fatal(true));
        return None;
    }
    if plan.fetch.stall {
        origin.stall();
        return None;
    }
    if plan.execute.delay_ms > 0 {
        // No view is held while waiting (an unmap must not wait for a fault's delay); the
        // memory is translated afresh afterwards.
        let delay = Duration::from_millis(u64::from(plan.execute.delay_ms));
        if !sleep_unless(delay, || origin.cancelled()) {
            return None;
        }
    }
    let view = origin.view();
    // Without bus mastering the device may not touch guest memory: the descriptor fails as
    // under an injected status, and its refusal names the cause.
    let master = dev.bus_master();
    let mut out = match plan.execute.status {
        _ if !master => Outcome::failed(abi::CS_DMA_FAULT),
        Some(status) => Outcome::failed(status),
        None => {
            let ctx = Ctx {
                view: &view,
                internal: &dev.internal,
                log: &dev.log,
                queue: q,
            };
            engine::execute(&ctx, d, plan.execute.tweak)
        }
    };
    if out.status != abi::CS_OK {
        let who = if q == abi::DIRECT_QUEUE {
            "direct transfer"
        } else {
            "descriptor"
        };
        let direct = q == abi::DIRECT_QUEUE;
        let cause = if !master {
            Some(BUS_MASTER_OFF.to_string())
        } else {
            out.access.map(|a| a.describe(direct)).or_else(|| {
                // the status by name, and why where the status alone does not say
                let name = abi::Status::from_raw(out.status).map(|s| s.name());
                match (name, out.why) {
                    (Some(n), Some(why)) => Some(format!("{n}: {why}")),
                    (Some(n), None) => Some(n.to_string()),
                    (None, _) => None,
                }
            })
        };
        dev.log.record(|| Event::Error {
            queue: Some(q),
            tag: Some(d.tag),
            status: Some(out.status),
            what: match cause {
                Some(cause) => format!("{who} {index} refused: {cause}"),
                None => format!("{who} {index} refused"),
            },
        });
    }
    if !master {
        return Some(Executed { out, plan, view });
    }
    if out.violation {
        dev.set_error(ErrorBits::new().with_dma_violation(true));
    }
    if let Some((offset, len)) = plan.result.outside {
        dev.dma_outside(&view, q, d, offset, len);
    }
    if plan.result.unreported_short {
        out.bytes = d.len;
    }
    Some(Executed { out, plan, view })
}

/// Applies the completion's injected faults (dropped, late) to an executed descriptor and
/// says whether and through which mappings the caller publishes its result.
pub(crate) fn publish(origin: &mut impl Origin, plan: &FaultPlan, view: Arc<MemView>) -> Publish {
    if plan.complete.drop {
        return Publish::Dropped;
    }
    if plan.complete.delay_ms == 0 {
        return Publish::Now(view);
    }
    // As for a late start: no view is held while waiting, and a reset cuts the wait short.
    drop(view);
    let delay = Duration::from_millis(u64::from(plan.complete.delay_ms));
    if !sleep_unless(delay, || origin.cancelled()) {
        return Publish::Cancelled;
    }
    Publish::Now(origin.view())
}

/// Counts a published completion and records its `complete` event: `index` is the completion
/// ring slot (the block's transfer number).
pub(crate) fn completed(dev: &Shared, queue: u16, index: u32, c: &Completion) {
    let counters = &dev.log.counters;
    counters.completions.fetch_add(1, Ordering::Relaxed);
    if c.status == abi::CS_OK {
        &counters.completions_ok
    } else {
        &counters.completions_err
    }
    .fetch_add(1, Ordering::Relaxed);
    dev.log.record(|| Event::Complete {
        queue,
        index,
        tag: c.tag,
        status: c.status,
        bytes: c.bytes,
        result: c.result,
        phase: c.phase & 1 != 0,
    });
}
