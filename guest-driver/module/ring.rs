// SPDX-License-Identifier: GPL-2.0

//! The rings of one queue: request slots and tags, the DMA-visible submission, completion
//! and scatter-gather memory, and programming them into the device.

use kernel::{
    dma::Coherent,
    io::Io,
    prelude::*,
    time::{Instant, Monotonic},
};

use crate::abi::{Completion, Descriptor, QueueStats, SgEntry};
use crate::regs::{
    queue, split_address, Q_CQ_BASE_HI, Q_CQ_BASE_LO, Q_CTRL, Q_SIZE, Q_SQ_BASE_HI, Q_SQ_BASE_LO,
};
use crate::{Bar0, RING, SLOTS};

/// Per-request slot state.
#[derive(Clone, Copy)]
pub(crate) enum SlotState {
    Free,
    InFlight,
    Done(Completion),
    Failed(Error),
}

#[derive(Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) state: SlotState,
    /// Generation, part of the tag, so a stale completion for an earlier use is recognised.
    pub(crate) generation: u16,
    /// When the doorbell was rung.
    pub(crate) start: Option<Instant<Monotonic>>,
}

/// The DMA-visible rings of one queue.
pub(crate) struct Rings {
    pub(crate) sq: Coherent<[Descriptor]>,
    pub(crate) cq: Coherent<[Completion]>,
    /// Two SG tables (source, destination) of `SG_MAX` entries per slot.
    pub(crate) sg: Coherent<[SgEntry]>,
}

/// Ring state, shared with the interrupt handler.
pub(crate) struct RingState {
    pub(crate) rings: Option<Rings>,
    pub(crate) sq_tail: u32,
    pub(crate) cq_head: u32,
    pub(crate) phase: bool,
    pub(crate) outstanding: u32,
    pub(crate) slots: [Slot; SLOTS],
    pub(crate) stats: QueueStats,
}

pub(crate) fn slot_of(tag: u32) -> (usize, u16) {
    ((tag & 0xff) as usize, (tag >> 16) as u16)
}

pub(crate) fn tag_for(slot: usize, generation: u16) -> u32 {
    slot as u32 | (u32::from(generation) << 16)
}

/// Writes queue `qi`'s ring registers and enables it.
pub(crate) fn program_queue(bar: &Bar0<'_>, qi: usize, rings: &Rings) -> Result {
    let (sq_lo, sq_hi) = split_address(rings.sq.dma_address());
    let (cq_lo, cq_hi) = split_address(rings.cq.dma_address());
    bar.try_write(queue(qi)?, Q_SQ_BASE_LO::zeroed().with_addr(sq_lo))?;
    bar.try_write(queue(qi)?, Q_SQ_BASE_HI::zeroed().with_addr(sq_hi))?;
    bar.try_write(queue(qi)?, Q_CQ_BASE_LO::zeroed().with_addr(cq_lo))?;
    bar.try_write(queue(qi)?, Q_CQ_BASE_HI::zeroed().with_addr(cq_hi))?;
    bar.try_write(queue(qi)?, Q_SIZE::zeroed().with_entries(RING as u32))?;
    bar.try_write(queue(qi)?, Q_CTRL::zeroed().with_enable(true))?;
    Ok(())
}

/// Resets queue `qi` in the device: it stops fetching and forgets its ring registers.
pub(crate) fn reset_queue(bar: &Bar0<'_>, qi: usize) -> Result {
    bar.try_write(queue(qi)?, Q_CTRL::zeroed().with_reset(true))
}
