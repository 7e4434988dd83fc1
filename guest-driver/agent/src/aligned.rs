//! The agent's allocator: every buffer of 64 bytes or more starts on a cache line, every one of
//! a page or more on a page, and owns its last cache line whole.
//!
//! The driver maps a request's memory for the device in place (zero-copy) only when the
//! destination starts and ends on a cache line (docs/streaming-dma.md), and pins fewer pages
//! when a buffer starts on one. With glibc's 16-byte alignment most test buffers would fall back
//! to the bounce pool, and the zero-copy path would go untested; with this one the agent's
//! ordinary `Vec<u8>`s qualify, the way a careful application's buffers would.

use std::alloc::{GlobalAlloc, Layout, System};

pub struct Aligned;

/// The layout actually asked of the system for `l`.
fn widen(l: Layout) -> Layout {
    let align = match l.size() {
        s if s >= 4096 => 4096,
        s if s >= 64 => 64,
        _ => return l,
    };
    Layout::from_size_align(l.size(), l.align().max(align))
        .map(|w| w.pad_to_align())
        .unwrap_or(l)
}

// SAFETY: every call forwards to `System` with the widened layout, the same for a block's
// allocation and its release (`widen` is a pure function of the caller's layout, and `realloc`
// allocates the new block with the widened new layout).
unsafe impl GlobalAlloc for Aligned {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: `widen` keeps the size non-zero and the alignment a power of two.
        unsafe { System.alloc(widen(l)) }
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(widen(l)) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` was allocated by `System` with `widen(l)`.
        unsafe { System.dealloc(p, widen(l)) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        let Ok(new) = Layout::from_size_align(new_size, l.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a fresh block with the new widened layout, the old contents copied, the old
        // block released with the layout it was allocated with.
        unsafe {
            let q = System.alloc(widen(new));
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p, q, l.size().min(new_size));
                System.dealloc(p, widen(l));
            }
            q
        }
    }
}
