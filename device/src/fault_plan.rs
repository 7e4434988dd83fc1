//! The injected faults for one descriptor, folded from every rule that fired and grouped by
//! the worker step that applies them: fetch, execute, result, complete, interrupt. A new fault
//! kind adds one arm to [`FaultPlan::add`] and is applied at one of these hook points.

use std::sync::atomic::Ordering;

use dmalab_abi::{self as abi, Descriptor};

use crate::engine::Tweak;
use crate::eventlog::{Event, Injected};
use crate::faults::{self, FaultKind, Occurrence};
use crate::shared::Shared;

/// Right after the descriptor is fetched.
#[derive(Debug, Default)]
pub(crate) struct AtFetch {
    /// Raise the queue's vector with nothing new.
    pub spurious_irq: bool,
    /// Set FATAL and stop every queue.
    pub fatal: bool,
    /// Stop this queue until a reset; the descriptor never completes.
    pub stall: bool,
}

/// Instead of, or inside, the engine's execution.
#[derive(Debug, Default)]
pub(crate) struct AtExecute {
    /// Complete with this status, moving nothing (the first rule in order wins).
    pub status: Option<u16>,
    /// Corruption and short transfers inside the engine.
    pub tweak: Tweak,
    /// Wait this long before touching the descriptor's memory.
    pub delay_ms: u32,
}

/// On the outcome, before the completion is built.
#[derive(Debug, Default)]
pub(crate) struct AtResult {
    /// Claim the full length although a short transfer moved less.
    pub unreported_short: bool,
    /// Try to write `len` bytes `offset` past the descriptor (refused, reported).
    pub outside: Option<(u64, u64)>,
}

/// When the completion is written.
#[derive(Debug, Default)]
pub(crate) struct AtComplete {
    pub drop: bool,
    pub delay_ms: u32,
    pub duplicate: bool,
    pub out_of_order: bool,
}

/// When the completion's interrupt is raised.
#[derive(Debug, Default)]
pub(crate) struct AtInterrupt {
    /// No interrupt for this completion.
    pub lost: bool,
    /// Raise the vector this many times more.
    pub storm: u32,
}

/// Everything injected into one descriptor.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    pub fetch: AtFetch,
    pub execute: AtExecute,
    pub result: AtResult,
    pub complete: AtComplete,
    pub interrupt: AtInterrupt,
}

impl FaultPlan {
    /// Asks the injector about descriptor `d`, fetched from slot `index` of `queue` (or the
    /// direct block's transfer number `index`, with `queue` [`abi::DIRECT_QUEUE`]), logs every
    /// fault that fires and folds them into one plan.
    pub fn for_descriptor(dev: &Shared, queue: u16, index: u32, d: &Descriptor) -> Self {
        let mut plan = Self::default();
        let occ = Occurrence {
            queue,
            index,
            opcode: d.opcode,
            len: d.len,
        };
        for inj in dev.faults.on_descriptor(occ) {
            dev.log.counters.faults.fetch_add(1, Ordering::Relaxed);
            dev.log.record(|| {
                Event::Fault(Injected {
                    queue,
                    index,
                    tag: d.tag,
                    rule: inj.rule.clone(),
                    fault: inj.kind,
                })
            });
            plan.add(inj.kind);
        }
        plan
    }

    /// Folds one injected fault into the plan. Sums are capped at the per-rule limits, so many
    /// rules together cannot exceed what one may ask for.
    pub fn add(&mut self, kind: FaultKind) {
        match kind {
            // When several rules set a status, the first (in rule order) wins.
            FaultKind::DmaReadError | FaultKind::DmaWriteError => {
                self.execute.status.get_or_insert(abi::CS_DMA_FAULT);
            }
            FaultKind::ErrorStatus { status } => {
                self.execute.status.get_or_insert(status);
            }
            FaultKind::Corrupt { bits } => {
                let t = &mut self.execute.tweak;
                t.corrupt_bits = t.corrupt_bits.saturating_add(bits);
            }
            FaultKind::ShortTransfer { bytes, reported } => {
                self.execute.tweak.short = Some(bytes);
                self.result.unreported_short = !reported;
            }
            FaultKind::DropCompletion => self.complete.drop = true,
            FaultKind::DelayCompletion { ms } => {
                self.complete.delay_ms = (self.complete.delay_ms + ms).min(faults::LIMIT_DELAY_MS);
            }
            FaultKind::DelayStart { ms } => {
                self.execute.delay_ms = (self.execute.delay_ms + ms).min(faults::LIMIT_DELAY_MS);
            }
            FaultKind::DuplicateCompletion => self.complete.duplicate = true,
            FaultKind::OutOfOrder => self.complete.out_of_order = true,
            FaultKind::SpuriousIrq => self.fetch.spurious_irq = true,
            FaultKind::LostIrq => self.interrupt.lost = true,
            FaultKind::IrqStorm { count } => {
                self.interrupt.storm =
                    (self.interrupt.storm + count).min(*faults::LIMIT_STORM.end());
            }
            FaultKind::Stall => self.fetch.stall = true,
            FaultKind::Fatal => self.fetch.fatal = true,
            FaultKind::DmaOutside { offset, len } => self.result.outside = Some((offset, len)),
            FaultKind::Mark => {}
        }
    }
}
