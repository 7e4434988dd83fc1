// SPDX-License-Identifier: GPL-2.0

//! A queue's two rings in coherent memory: the driver writes descriptors into the submission
//! ring and rings the doorbell; the device writes completions into the completion ring, each
//! with a phase bit that flips on every pass, so the driver can tell a new entry from an old
//! one without reading a register (docs/datasheet.md#rings).

use kernel::{
    dma::Coherent,
    io::{io_read, io_write, Io},
    prelude::*,
    sync::barrier::{dma_mb, Read, Write},
};

use crate::abi::{Completion, Descriptor};
use crate::regs::{
    queue, split_address, Q_CQ_BASE_HI, Q_CQ_BASE_LO, Q_CQ_HEAD, Q_CTRL, Q_SIZE, Q_SQ_BASE_HI,
    Q_SQ_BASE_LO, Q_SQ_TAIL,
};
use crate::Bar0;

/// Entries in each ring (a power of two, datasheet: 2..=CAP_RING).
pub(crate) const RING: u32 = 16;

/// The rings and the driver's indices into them.
pub(crate) struct Rings {
    pub(crate) sq: Coherent<[Descriptor]>,
    pub(crate) cq: Coherent<[Completion]>,
    /// Next free submission slot (what SQ_TAIL was last set to).
    pub(crate) sq_tail: u32,
    /// Next completion slot to read.
    pub(crate) cq_head: u32,
    /// The phase a new completion at `cq_head` carries (1 on the first pass).
    pub(crate) phase: bool,
}

impl Rings {
    /// Zeroed rings of [`RING`] entries for `dev`, indices at their reset values.
    pub(crate) fn new(dev: &kernel::device::Device<kernel::device::Bound>) -> Result<Self> {
        Ok(Self {
            sq: Coherent::<Descriptor>::zeroed_slice(dev, RING as usize, GFP_KERNEL)?,
            cq: Coherent::<Completion>::zeroed_slice(dev, RING as usize, GFP_KERNEL)?,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        })
    }

    /// Tells the device where the rings are and enables queue `q`. The rings must stay
    /// allocated until the device is reset: from here on it may read and write them at any time.
    pub(crate) fn program(&self, bar: &Bar0<'_>, q: usize) -> Result {
        let (sq_lo, sq_hi) = split_address(self.sq.dma_address());
        let (cq_lo, cq_hi) = split_address(self.cq.dma_address());
        bar.try_write(queue(q)?, Q_SQ_BASE_LO::zeroed().with_addr(sq_lo))?;
        bar.try_write(queue(q)?, Q_SQ_BASE_HI::zeroed().with_addr(sq_hi))?;
        bar.try_write(queue(q)?, Q_CQ_BASE_LO::zeroed().with_addr(cq_lo))?;
        bar.try_write(queue(q)?, Q_CQ_BASE_HI::zeroed().with_addr(cq_hi))?;
        bar.try_write(queue(q)?, Q_SIZE::zeroed().with_entries(RING))?;
        bar.try_write(queue(q)?, Q_CTRL::zeroed().with_enable(true))?;
        Ok(())
    }

    /// Writes `d` into the next submission slot and makes the device see it. Returns the value
    /// for the SQ_TAIL doorbell, which the caller writes (under BAR access).
    pub(crate) fn post(&mut self, d: &Descriptor) -> Result<u32> {
        let i = self.sq_tail as usize;
        io_write!(self.sq, [try: i].opcode, d.opcode);
        io_write!(self.sq, [try: i].flags, d.flags);
        io_write!(self.sq, [try: i].src_nseg, d.src_nseg);
        io_write!(self.sq, [try: i].dst_nseg, d.dst_nseg);
        io_write!(self.sq, [try: i].rsvd0, 0);
        io_write!(self.sq, [try: i].tag, d.tag);
        io_write!(self.sq, [try: i].len, d.len);
        io_write!(self.sq, [try: i].src, d.src);
        io_write!(self.sq, [try: i].dst, d.dst);
        io_write!(self.sq, [try: i].pattern, d.pattern);
        io_write!(self.sq, [try: i].rsvd1, 0);
        for k in 0..3 {
            io_write!(self.sq, [try: i].rsvd2[try: k], 0);
        }
        self.sq_tail = (self.sq_tail + 1) % RING;
        dma_mb(Write);
        Ok(self.sq_tail)
    }

    /// The completion at `cq_head` if the device has written it (its phase is the expected
    /// one), advancing `cq_head`; the caller then returns the slot with the CQ_HEAD doorbell.
    pub(crate) fn take(&mut self) -> Result<Option<Completion>> {
        let i = self.cq_head as usize;
        let phase = io_read!(self.cq, [try: i].phase);
        if (phase & 1 != 0) != self.phase {
            return Ok(None);
        }
        dma_mb(Read);
        let c = Completion {
            result: io_read!(self.cq, [try: i].result),
            bytes: io_read!(self.cq, [try: i].bytes),
            tag: io_read!(self.cq, [try: i].tag),
            status: io_read!(self.cq, [try: i].status),
            phase,
        };
        self.cq_head = (self.cq_head + 1) % RING;
        if self.cq_head == 0 {
            self.phase = !self.phase;
        }
        Ok(Some(c))
    }

    /// Rings `tail` into queue `q`'s submission doorbell.
    pub(crate) fn ring_doorbell(bar: &Bar0<'_>, q: usize, tail: u32) -> Result {
        bar.try_write(queue(q)?, Q_SQ_TAIL::zeroed().with_index(tail))
    }

    /// Tells the device which completion slots it may use again.
    pub(crate) fn return_completions(&self, bar: &Bar0<'_>, q: usize) -> Result {
        bar.try_write(queue(q)?, Q_CQ_HEAD::zeroed().with_index(self.cq_head))
    }

    /// Resets queue `q` in the device (it drops what it has not completed) and starts the rings
    /// over; the caller reprograms them with [`Rings::program`].
    pub(crate) fn reset(&mut self, bar: &Bar0<'_>, q: usize) -> Result {
        bar.try_write(queue(q)?, Q_CTRL::zeroed().with_reset(true))?;
        // not posted: when it returns the reset is done
        let _ = bar.try_read(queue::<Q_CTRL>(q)?)?;
        self.restart()
    }

    /// Starts the rings over after the device forgot them (a queue or device reset): indices
    /// at their reset values, and no old completion that could pass for a new one.
    pub(crate) fn restart(&mut self) -> Result {
        (self.sq_tail, self.cq_head, self.phase) = (0, 0, true);
        for i in 0..RING as usize {
            io_write!(self.cq, [try: i].phase, 0);
        }
        Ok(())
    }
}
