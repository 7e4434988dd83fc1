// SPDX-License-Identifier: GPL-2.0

//! Deliberate bugs, each one classic mistake of a DMA driver, for the tests that prove the
//! ownership oracle (`docs/oracle.md`, bugs 1-5) and `dmalab check` (`docs/contract.md`)
//! catch them. Off unless the module parameter `dma_bug` names one; never use them for
//! anything else.

use kernel::{
    dma::Coherent,
    io::{io_read, io_write},
    prelude::*,
};

use crate::abi::Descriptor;
use crate::pool::{PAGE, PAGES_PER_BLOCK};
use crate::streaming::{Direction, Mapping, Owner};

/// The bug the `dma_bug` module parameter asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DmaBug {
    /// The correct driver.
    None,
    /// Writes into the source buffer after posting it.
    WriteAfterPost,
    /// Reads the destination buffer before the completion says the data is there.
    ReadBeforeCompletion,
    /// On a timeout, gives the buffers back without resetting the queue, while the device
    /// still owns them.
    FreeOnTimeout,
    /// Rewrites a descriptor the device has already been handed.
    RewriteDescriptor,
    /// Gives the buffers back as soon as the request is posted, so the next request reuses
    /// them while the device still works on the first.
    ReuseBuffer,
    /// Ignores the completion's status: an error completion looks like success.
    IgnoreStatus,
    /// Matches a completion to the oldest request in flight instead of by its tag.
    MatchByPosition,
    /// Leaks the rings and bounce buffers at unbind.
    LeakOnUnbind,
    /// Waits for a completion without a timeout: a request the device never completes hangs
    /// its caller (until a signal or an unbind).
    NoTimeout,
    /// Keeps a failed request's bounce pages (the bounce-buffer counterpart of a missing
    /// `dma_unmap` on an error path): each error shrinks the queue's pool until it runs dry.
    LeakOnError,
    /// Reads the device's result from a streaming mapping without syncing it for the CPU
    /// first (`IOC_DMA_SELFTEST`): right by luck on a DMA-coherent machine, stale data behind
    /// bounce buffers or non-coherent caches.
    SyncForgotten,
    /// Never enables bus mastering (a common first-driver mistake): a device that obeys the
    /// PCI command register moves nothing.
    NoBusMaster,
    /// Sets a 64-bit DMA mask whatever the device's CAP_DMA_BITS says: on a machine with
    /// memory above the device's reach the kernel hands it addresses it cannot drive.
    WideMask,
    /// Writes a descriptor's destination address through a `u32` (a lost high half): right
    /// while every DMA address is below 4 GiB, another address above it.
    TruncatedAddress,
    /// Does not clear a bounce buffer before the device writes it: a device that moves fewer
    /// bytes than it reports hands the caller what an earlier request left there.
    StaleBytes,
    /// Zero-copy: unmaps the caller's pages before posting the request, and gives the device
    /// their bus addresses anyway. Without an IOMMU nothing notices, behind a lazy one the
    /// stale translation usually still works; a strict IOMMU refuses the device's access.
    UnmapBeforeSubmit,
    /// Rings the doorbell before recording the request as in flight, and polls briefly for its
    /// completion in between, trusting disabled interrupts to keep the completion handler away
    /// meanwhile. On one CPU they do; on several the handler runs on another CPU, finds no
    /// request for the completion's tag and drops it as stray: the request times out.
    IrqsOffAsLock,
}

impl DmaBug {
    /// The bug the module was loaded with.
    pub(crate) fn active() -> DmaBug {
        match crate::module_parameters::dma_bug.value() {
            1 => DmaBug::WriteAfterPost,
            2 => DmaBug::ReadBeforeCompletion,
            3 => DmaBug::FreeOnTimeout,
            4 => DmaBug::RewriteDescriptor,
            5 => DmaBug::ReuseBuffer,
            6 => DmaBug::IgnoreStatus,
            7 => DmaBug::MatchByPosition,
            8 => DmaBug::LeakOnUnbind,
            9 => DmaBug::NoTimeout,
            10 => DmaBug::LeakOnError,
            11 => DmaBug::SyncForgotten,
            12 => DmaBug::NoBusMaster,
            13 => DmaBug::WideMask,
            14 => DmaBug::TruncatedAddress,
            15 => DmaBug::StaleBytes,
            16 => DmaBug::UnmapBeforeSubmit,
            17 => DmaBug::IrqsOffAsLock,
            _ => DmaBug::None,
        }
    }
}

/// The byte at the start of pool page `page`, as (block, offset).
fn locate(page: u16) -> (usize, usize) {
    let p = usize::from(page);
    (p / PAGES_PER_BLOCK, (p % PAGES_PER_BLOCK) * PAGE)
}

/// Bug: the CPU writes a source page the device is reading.
#[inline(never)]
pub(crate) fn write_after_post(blocks: &KVec<Coherent<[u8]>>, page: u16) {
    let (b, off) = locate(page);
    if let Some(block) = blocks.get(b) {
        let _ = (|| -> Result {
            io_write!(block, [try: off], 0xa5u8);
            Ok(())
        })();
    }
}

/// Bug: the CPU reads a destination page the device is writing.
#[inline(never)]
pub(crate) fn read_before_completion(blocks: &KVec<Coherent<[u8]>>, page: u16) -> u8 {
    let (b, off) = locate(page);
    blocks
        .get(b)
        .and_then(|block| (|| -> Result<u8> { Ok(io_read!(block, [try: off])) })().ok())
        .unwrap_or(0)
}

/// Bug: the CPU rewrites the tag of a posted descriptor.
#[inline(never)]
pub(crate) fn rewrite_descriptor(sq: &Coherent<[Descriptor]>, index: usize, tag: u32) {
    let _ = (|| -> Result {
        io_write!(sq, [try: index].tag, tag);
        Ok(())
    })();
}

/// Bug: the CPU reads the device's result, `buf.len()` bytes at `offset`, straight from the
/// pages of a mapping the device still owns (no sync for the CPU first). On a DMA-coherent
/// machine without bounce buffering the bytes are right by luck; behind swiotlb they are the
/// pages' old contents, the device's data still sitting in the bounce buffer.
#[inline(never)]
pub(crate) fn read_without_sync_into<D: Direction, S: Owner>(
    m: &Mapping<D, S>,
    offset: usize,
    buf: &mut [u8],
) {
    let mut done = 0;
    while done < buf.len() {
        let Some((page, in_page)) = m.page_at(offset + done) else {
            return;
        };
        let n = (buf.len() - done).min(kernel::page::PAGE_SIZE - in_page);
        // SAFETY: memory-safe: the page is pinned while `m` lives, `kmap_local_page` maps it,
        // `in_page + n` stays inside it, `done + n <= buf.len()`, and it is unmapped right
        // after. What it breaks is the DMA API's rule that the device owns the memory until it
        // is synced for the CPU: that is the bug. (Byte by byte, not a memcpy: the access is
        // this function's own, as the oracle names it.)
        unsafe {
            let va = kernel::bindings::kmap_local_page(page).cast::<u8>();
            for (k, b) in buf[done..done + n].iter_mut().enumerate() {
                *b = core::ptr::read_volatile(va.add(in_page + k));
            }
            kernel::bindings::kunmap_local(va.cast());
        }
        done += n;
    }
}

/// Bug, with [`DmaBug::IrqsOffAsLock`]: polls `done` (the queue's completion count) until it
/// moves past `before`, at most 25 reads (about 2 ms of register reads under TCG), with the
/// request not yet recorded as in flight.
#[inline(never)]
pub(crate) fn poll_for_a_completion(done: impl Fn() -> u32, before: u32) {
    for _ in 0..25 {
        if done() != before {
            return;
        }
        core::hint::spin_loop();
    }
}
