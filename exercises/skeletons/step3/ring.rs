// SPDX-License-Identifier: GPL-2.0

//! Queue 0's two rings in coherent memory: the driver writes descriptors into the submission
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

    /// Tells the device where the rings are and enables queue 0. The rings must stay allocated
    /// until the device is reset: from here on it may read and write them at any time.
    pub(crate) fn program(&self, bar: &Bar0<'_>) -> Result {
        // TODO(step 3): Write queue 0's SQ_BASE_LO/HI and CQ_BASE_LO/HI with the rings' DMA
        // addresses and SIZE with RING, then set ENABLE in CTRL (regs::queue(0)? locates a
        // queue register; split_address() splits an address into its two halves).
        let _ = (bar, split_address);
        Ok(())
    }

    /// Writes `d` into the next submission slot and makes the device see it. Returns the value
    /// for the SQ_TAIL doorbell, which the caller writes (under BAR access).
    pub(crate) fn post(&mut self, d: &Descriptor) -> Result<u32> {
        // TODO(step 3): Write every field of `d` into self.sq at slot self.sq_tail with io_write!
        // (volatile: the device reads this memory), advance sq_tail modulo RING, and put a
        // write barrier (dma_mb(Write)) before returning the new tail: the descriptor must be
        // in memory before the doorbell tells the device to fetch it.
        let _ = d;
        Ok(self.sq_tail)
    }

    /// The completion at `cq_head` if the device has written it (its phase is the expected
    /// one), advancing `cq_head`; the caller then returns the slot with the CQ_HEAD doorbell.
    pub(crate) fn take(&mut self) -> Result<Option<Completion>> {
        // TODO(step 3): Read the phase of self.cq[self.cq_head] with io_read!; if it is not
        // self.phase, nothing new: Ok(None). Otherwise put a read barrier (dma_mb(Read)),
        // since the device writes the phase word last, then read the other fields, advance
        // cq_head modulo RING (flip self.phase when it wraps to 0) and return the completion.
        Ok(None)
    }

    /// Rings `tail` into queue 0's submission doorbell.
    pub(crate) fn ring_doorbell(bar: &Bar0<'_>, tail: u32) -> Result {
        bar.try_write(queue(0)?, Q_SQ_TAIL::zeroed().with_index(tail))
    }

    /// Tells the device which completion slots it may use again.
    pub(crate) fn return_completions(&self, bar: &Bar0<'_>) -> Result {
        bar.try_write(queue(0)?, Q_CQ_HEAD::zeroed().with_index(self.cq_head))
    }

    /// Resets queue 0 in the device (it drops what it has not completed) and starts the rings
    /// over; the caller reprograms them with [`Rings::program`].
    pub(crate) fn reset(&mut self, bar: &Bar0<'_>) -> Result {
        bar.try_write(queue(0)?, Q_CTRL::zeroed().with_reset(true))?;
        // not posted: when it returns the reset is done
        let _ = bar.try_read(queue::<Q_CTRL>(0)?)?;
        (self.sq_tail, self.cq_head, self.phase) = (0, 0, true);
        for i in 0..RING as usize {
            io_write!(self.cq, [try: i].phase, 0);
        }
        Ok(())
    }
}
