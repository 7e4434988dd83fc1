// SPDX-License-Identifier: GPL-2.0

//! The rings of one queue: request slots and tags, the DMA-visible submission, completion
//! and scatter-gather memory, and programming them into the device.

use kernel::{
    dma::Coherent,
    io::{io_read, io_write, Io},
    prelude::*,
    sync::barrier::{dma_mb, Read},
    time::{Instant, Monotonic},
};

use crate::abi::{Completion, Descriptor, QueueStats, SgEntry};
use crate::regs::Bar0;
use crate::regs::{
    queue, split_address, Q_CQ_BASE_HI, Q_CQ_BASE_LO, Q_CTRL, Q_SIZE, Q_SQ_BASE_HI, Q_SQ_BASE_LO,
};

/// Ring entries per queue; at most `RING - 1` requests are in flight per queue.
pub(crate) const RING: usize = 64;
/// Request slots per queue (tags index them).
pub(crate) const SLOTS: usize = RING - 1;
/// Most scatter-gather entries per side of one request (each slot has a table per side).
pub(crate) const SG_MAX: usize = crate::abi::MAX_SG_SEGMENTS as usize;

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

/// A request's tag: what the driver writes into a descriptor and the device copies, untouched,
/// into the request's completion, so that completions are matched to requests whatever order
/// they come in.
///
/// Layout (32 bits): bits 0..8 the request slot (`< SLOTS`), bits 8..16 written as zero and
/// ignored when read back, bits 16..32 the slot's generation. The generation changes with every use of the slot, so a completion left
/// over from an earlier use (one that came after its request timed out, or a duplicate) does
/// not match the slot's current request: it is counted as stray.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Tag {
    pub(crate) slot: usize,
    pub(crate) generation: u16,
}

impl Tag {
    const SLOT_BITS: u32 = 0xff;
    const GENERATION_SHIFT: u32 = 16;

    /// The tag as written into a descriptor.
    pub(crate) fn encode(self) -> u32 {
        self.slot as u32 | (u32::from(self.generation) << Self::GENERATION_SHIFT)
    }

    /// The tag a completion carries; `None` when it names a slot the ring does not have (the
    /// device is confused or hostile).
    pub(crate) fn decode(raw: u32) -> Option<Self> {
        let slot = (raw & Self::SLOT_BITS) as usize;
        (slot < SLOTS).then_some(Self {
            slot,
            generation: (raw >> Self::GENERATION_SHIFT) as u16,
        })
    }
}

impl RingState {
    /// Producer: writes descriptor `d` at the submission tail and advances it. The device sees
    /// it once the doorbell carries the new tail. Returns the ring index written.
    pub(crate) fn push(&mut self, d: &Descriptor) -> Result<usize> {
        let rings = self.rings.as_ref().ok_or(ENODEV)?;
        let i = self.sq_tail as usize;
        io_write!(rings.sq, [try: i].opcode, d.opcode);
        io_write!(rings.sq, [try: i].flags, d.flags);
        io_write!(rings.sq, [try: i].src_nseg, d.src_nseg);
        io_write!(rings.sq, [try: i].dst_nseg, d.dst_nseg);
        io_write!(rings.sq, [try: i].rsvd0, 0);
        io_write!(rings.sq, [try: i].tag, d.tag);
        io_write!(rings.sq, [try: i].len, d.len);
        io_write!(rings.sq, [try: i].src, d.src);
        io_write!(rings.sq, [try: i].dst, d.dst);
        io_write!(rings.sq, [try: i].pattern, d.pattern);
        io_write!(rings.sq, [try: i].rsvd1, 0);
        for k in 0..3 {
            io_write!(rings.sq, [try: i].rsvd2[try: k], 0);
        }
        self.sq_tail = (self.sq_tail + 1) % RING as u32;
        Ok(i)
    }

    /// Consumer: the completion at the head if the device has written it (its phase matches
    /// ours), with the head advanced (and our phase flipped when it wraps). The caller writes
    /// the new head to `CQ_HEAD` once it has taken what it wants.
    pub(crate) fn pop(&mut self) -> Result<Option<Completion>> {
        let Some(rings) = self.rings.as_ref() else {
            return Ok(None);
        };
        // `cq_head < RING`, the ring's length: `try` indexing cannot fail, and would stop the
        // reaping rather than panic in the interrupt handler if it ever did.
        let i = self.cq_head as usize;
        let phase = io_read!(rings.cq, [try: i].phase);
        if (phase & 1 != 0) != self.phase {
            return Ok(None);
        }
        // The phase word is written last by the device: read the rest only after it.
        dma_mb(Read);
        let c = Completion {
            result: io_read!(rings.cq, [try: i].result),
            bytes: io_read!(rings.cq, [try: i].bytes),
            tag: io_read!(rings.cq, [try: i].tag),
            status: io_read!(rings.cq, [try: i].status),
            phase,
        };
        self.cq_head = (self.cq_head + 1) % RING as u32;
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        Ok(Some(c))
    }

    /// Back to the state of a freshly programmed ring: both indices at 0, our phase 1, and
    /// every completion entry's phase cleared so that none reads as new. The device's queue
    /// must have been reset.
    pub(crate) fn rewind(&mut self) {
        self.outstanding = 0;
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        if let Some(rings) = self.rings.as_ref() {
            for i in 0..RING {
                // PANIC: `i < RING`, the completion ring's length (`Queue::new`).
                io_write!(rings.cq, [panic: i].phase, 0);
            }
        }
    }
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
