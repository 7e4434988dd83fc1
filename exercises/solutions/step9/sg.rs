// SPDX-License-Identifier: GPL-2.0

//! A queue's data memory as blocks of coherent memory, and the scatter-gather lists that let
//! the device see a request's bytes spread over several of them as one transfer
//! (docs/datasheet.md#scatter-gather-entry-16-bytes).
//!
//! Each side (source, destination) of a request starts at offset 0 of its side's blocks: byte
//! `i` of the request is at offset `i % BLOCK` of block `i / BLOCK`. A block is contiguous for
//! the device, the blocks are not: the device reaches them through a list of (address, length)
//! segments.

use kernel::{
    dma::{Coherent, DmaAddress},
    io::{io_project, io_write, Io},
    prelude::*,
    uaccess::UserSliceWriter,
};

use crate::abi::{self, SgEntry};

/// Bytes per block.
pub(crate) const BLOCK: usize = 64 * 1024;
/// Blocks per side: room for the largest request.
pub(crate) const BLOCKS: usize = abi::MAX_REQUEST as usize / BLOCK;
/// Entries of one side's scatter-gather list.
pub(crate) const SG_MAX: usize = abi::MAX_SG_SEGMENTS as usize;

/// One side's data memory.
pub(crate) struct Blocks(pub(crate) KVec<Coherent<[u8]>>);

impl Blocks {
    /// [`BLOCKS`] zeroed blocks for `dev`.
    pub(crate) fn new(dev: &kernel::device::Device<kernel::device::Bound>) -> Result<Self> {
        let mut v = KVec::with_capacity(BLOCKS, GFP_KERNEL)?;
        for _ in 0..BLOCKS {
            v.push(
                Coherent::<u8>::zeroed_slice(dev, BLOCK, GFP_KERNEL)?,
                GFP_KERNEL,
            )?;
        }
        Ok(Self(v))
    }

    /// Copies `data` in, from offset 0.
    pub(crate) fn fill(&self, data: &[u8]) -> Result {
        for (block, chunk) in self.0.iter().zip(data.chunks(BLOCK)) {
            io_project!(block, [try: 0..chunk.len()]).copy_from_slice(chunk);
        }
        Ok(())
    }

    /// Copies the first `len` bytes out to user memory.
    pub(crate) fn copy_out(&self, w: &mut UserSliceWriter, len: usize) -> Result {
        let mut left = len;
        for block in self.0.iter() {
            if left == 0 {
                break;
            }
            let n = left.min(BLOCK);
            w.write_dma(block, 0, n)?;
            left -= n;
        }
        Ok(())
    }
}

/// Writes the scatter-gather list of the first `len` bytes of `blocks` into `table` from entry
/// `at`: at least `want` segments (the caller's `nseg`), and never one that crosses a block
/// boundary. Returns the number of entries, or `EINVAL` if that takes more than [`SG_MAX`].
pub(crate) fn build_list(
    blocks: &Blocks,
    len: usize,
    want: usize,
    table: &Coherent<[SgEntry]>,
    at: usize,
) -> Result<usize> {
    let want = want.clamp(1, len);
    let mut n = 0;
    let mut start = 0;
    let mut k = 1;
    while start < len {
        // the next cut: the next even cut or the next block boundary, whichever comes first
        while k < want && k * len / want <= start {
            k += 1;
        }
        let even = if k < want { k * len / want } else { len };
        let end = even.min((start / BLOCK + 1) * BLOCK);
        if n == SG_MAX {
            return Err(EINVAL);
        }
        let block = blocks.0.get(start / BLOCK).ok_or(EINVAL)?;
        let addr: DmaAddress = block.dma_address() + (start % BLOCK) as DmaAddress;
        io_write!(table, [try: at + n].addr, addr);
        io_write!(table, [try: at + n].len, (end - start) as u32);
        io_write!(table, [try: at + n].rsvd, 0);
        n += 1;
        start = end;
    }
    Ok(n)
}
