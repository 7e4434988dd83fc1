// SPDX-License-Identifier: GPL-2.0

//! The bounce-buffer pool of one queue: free-page map, DMA segments of a request, copies in.

use kernel::{
    bindings,
    dma::Coherent,
    prelude::*,
    sync::{CondVar, CondVarTimeoutResult},
    time::msecs_to_jiffies,
    uaccess::UserPtr,
};

/// Bounce-pool page size.
pub(crate) const PAGE: usize = 4096;
/// Bytes per `Coherent` pool block.
pub(crate) const BLOCK: usize = 64 * 1024;
/// Blocks per queue: 4 MiB, enough for two 1 MiB COPYs in flight.
pub(crate) const BLOCKS: usize = 64;
pub(crate) const PAGES_PER_BLOCK: usize = BLOCK / PAGE;
pub(crate) const POOL_PAGES: usize = BLOCKS * PAGES_PER_BLOCK;

/// Free pages of a pool: bit set = page free.
pub(crate) struct FreeMap(pub(crate) [u64; POOL_PAGES / 64]);

impl FreeMap {
    pub(crate) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Takes `n` pages, lowest first (so they tend to be contiguous); the caller checked
    /// `count() >= n`.
    pub(crate) fn take(&mut self, n: usize, out: &mut KVec<u16>) -> Result {
        for (w, word) in self.0.iter_mut().enumerate() {
            while *word != 0 && out.len() < n {
                let b = word.trailing_zeros() as usize;
                *word &= !(1u64 << b);
                out.push((w * 64 + b) as u16, GFP_KERNEL)?;
            }
        }
        Ok(())
    }

    pub(crate) fn give_back(&mut self, pages: &[u16]) {
        for &p in pages {
            self.0[p as usize / 64] |= 1u64 << (p % 64);
        }
    }
}

/// The bounce-buffer pool of one queue.
pub(crate) struct Pool {
    pub(crate) blocks: Option<KVec<Coherent<[u8]>>>,
    pub(crate) free: FreeMap,
}

pub(crate) fn page_dma(blocks: &KVec<Coherent<[u8]>>, p: u16) -> u64 {
    let p = p as usize;
    blocks[p / PAGES_PER_BLOCK].dma_address() + ((p % PAGES_PER_BLOCK) * PAGE) as u64
}

/// DMA segments (address, length) of one side of a request.
pub(crate) type Segments = KVec<(u64, u32)>;

/// Where a request's guest-memory side lives in the bounce pool.
pub(crate) struct Side {
    pub(crate) pages: KVec<u16>,
}

/// Segments (DMA address, length) covering `len` bytes of `pages`, adjacent pages merged, then
/// split until there are at least `want` segments.
pub(crate) fn segments(
    blocks: &KVec<Coherent<[u8]>>,
    pages: &[u16],
    len: usize,
    want: usize,
) -> Result<Segments> {
    let mut segs: Segments = KVec::new();
    let mut left = len;
    for &p in pages {
        let n = left.min(PAGE);
        let a = page_dma(blocks, p);
        match segs.last_mut() {
            Some(last) if last.0 + u64::from(last.1) == a => last.1 += n as u32,
            _ => segs.push((a, n as u32), GFP_KERNEL)?,
        }
        left -= n;
    }
    split_to(&mut segs, want)?;
    Ok(segs)
}

/// Splits the largest segment in two until there are at least `want` (or no segment can be
/// split): a caller asking for a scatter-gather list of `want` entries gets one.
pub(crate) fn split_to(segs: &mut Segments, want: usize) -> Result {
    if segs.is_empty() {
        return Ok(());
    }
    while segs.len() < want {
        // split the largest segment in two
        let (i, _) = segs
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.1)
            .ok_or(EINVAL)?;
        let (a, l) = segs[i];
        if l < 2 {
            break;
        }
        let h = l / 2;
        segs[i] = (a, h);
        segs.insert_within_capacity(i + 1, (a + u64::from(h), l - h))
            .or_else(|_| {
                segs.reserve(1, GFP_KERNEL)?;
                segs.insert_within_capacity(i + 1, (a + u64::from(h), l - h))
                    .map_err(|_| ENOMEM)
            })?;
    }
    Ok(())
}

/// Sleeps on `cv` until woken: `EBUSY` once `timeout_ms` has passed, `EINTR` on a signal.
pub(crate) fn wait_for_resources<T: ?Sized, B: kernel::sync::lock::Backend>(
    cv: &CondVar,
    guard: &mut kernel::sync::lock::Guard<'_, T, B>,
    timeout_ms: u32,
) -> Result {
    match cv.wait_interruptible_timeout(guard, msecs_to_jiffies(timeout_ms)) {
        CondVarTimeoutResult::Timeout => Err(EBUSY),
        CondVarTimeoutResult::Signal { .. } => Err(EINTR),
        CondVarTimeoutResult::Woken { .. } => Ok(()),
    }
}

/// Calls `f(start, n)` for each of a side's pool pages in turn, covering its first `len`
/// bytes: `start` is the page's first byte in its block's CPU mapping, valid for `n` bytes
/// (checked against the block's size here). The pages must be ones just taken from the free
/// map, which the device has not been told about: nothing else touches them meanwhile.
fn for_each_page(
    blocks: &KVec<Coherent<[u8]>>,
    pages: &[u16],
    len: usize,
    mut f: impl FnMut(*mut u8, usize) -> Result,
) -> Result {
    let mut left = len;
    for &p in pages {
        let n = left.min(PAGE);
        let p = p as usize;
        let block = blocks.get(p / PAGES_PER_BLOCK).ok_or(EINVAL)?;
        let off = (p % PAGES_PER_BLOCK) * PAGE;
        if off + n > block.size() {
            return Err(EINVAL);
        }
        // SAFETY: `off + n <= block.size()` (checked above): the pointer stays inside the
        // block's CPU mapping.
        f(unsafe { block.as_mut_ptr().cast::<u8>().add(off) }, n)?;
        left -= n;
    }
    Ok(())
}

/// Zeroes the first `len` bytes of the pool pages of a side, before the device is told about
/// them: what the device writes there is what the caller gets back, so a device that moves
/// fewer bytes than it reports must leave zeroes, never bytes an earlier request (perhaps
/// another process's) left in these pages. The kernel's swiotlb follows the same rule since
/// its 2022 information leak (it fills a `DMA_FROM_DEVICE` bounce buffer from the caller's
/// buffer first).
pub(crate) fn clear(blocks: &KVec<Coherent<[u8]>>, pages: &[u16], len: usize) -> Result {
    for_each_page(blocks, pages, len, |start, n| {
        // SAFETY: `start` is valid for `n` bytes and nothing else touches the page
        // (`for_each_page`); the write goes through a raw pointer, no Rust reference to the
        // DMA memory is formed.
        unsafe { core::ptr::write_bytes(start, 0, n) };
        Ok(())
    })
}

/// Copies `len` bytes from user memory at `src` straight into the pool pages of a side, page
/// by page: one copy, no staging buffer. (Staging cost a `len`-byte allocation, zeroing it, and
/// a second copy: under TCG, 60% of a 1 MiB COPY's time; docs/performance.md.)
///
/// Kernel 7.3's `UserSliceReader` has no `read_dma`, the counterpart of
/// `UserSliceWriter::write_dma` used on the way out; this is its body. Fails with `EFAULT`
/// (some bytes may have been copied: the pages are the caller's to give back).
pub(crate) fn copy_in_from_user(
    blocks: &KVec<Coherent<[u8]>>,
    pages: &[u16],
    src: UserPtr,
    len: usize,
) -> Result {
    let mut at = src;
    for_each_page(blocks, pages, len, |start, n| {
        // SAFETY: `start` is valid for `n` bytes and nothing else touches the page during the
        // copy (`for_each_page`). `copy_from_user` checks the user range itself and writes
        // through a raw pointer: no Rust reference to the DMA memory is formed.
        let uncopied = unsafe { bindings::copy_from_user(start.cast(), at.as_const_ptr(), n) };
        if uncopied != 0 {
            return Err(EFAULT);
        }
        at = at.wrapping_byte_add(n);
        Ok(())
    })
}
