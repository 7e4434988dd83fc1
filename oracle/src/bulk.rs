//! Copy and fill helpers (`memcpy`, `memset`, the user-copy routines) checked once per call.
//!
//! Instrumenting every load and store of a 1 MiB `memcpy` costs a callback per 8 bytes, and a
//! helper's callbacks must read registers (to name its caller), which makes each one dearer
//! still. These helpers' arguments name every byte they touch, so the plugin instead reads the
//! arguments at the helper's first instruction and checks the two ranges there, page by page.
//! What changes is when: the whole call is judged against the windows open at its start. A
//! window that closes during the call (the device completed) was open when the copy began, so
//! the call raced the device: a violation either way. A window another vCPU opens during the
//! call (it posts memory this one is still copying into) is the one case the per-access check
//! would have seen and this one does not.

use std::cell::Cell;

use dmalab_ownership::helpers::Kind;

use crate::checker::Checker;
use crate::guest;

/// One call as the checks saw it: stack pointer, destination, source, length, and the
/// ownership generation it was checked against.
type Seen = (Option<u64>, u64, Option<u64>, u64, (u64, u64));

thread_local! {
    /// The last call this vCPU checked.
    static LAST: Cell<Option<Seen>> = const { Cell::new(None) };
}

/// A call of `kind` entered at `pc`, with stack pointer `sp` and arguments `args` (rdi, rsi,
/// rdx, rcx): checks the memory it will read and write against what the device owns.
pub(crate) fn check(c: &Checker, kind: Kind, pc: u64, sp: Option<u64>, args: &[u64; 4]) {
    if c.idle() {
        return;
    }
    let (dst, src, len) = kind.ranges(args);
    if len == 0 {
        return;
    }
    // `memcpy` jumps to `memcpy_orig` with its arguments untouched: one call, checked once
    let seen = (sp, dst, src, len, c.generation());
    if LAST.with(|l| l.replace(Some(seen))) == Some(seen) {
        return;
    }
    // the helper has pushed nothing yet: its return address is at the top of the stack
    let caller = || sp.and_then(guest::read_u64);
    if let Some(src) = src {
        range(c, src, len, false, pc, &caller);
    }
    range(c, dst, len, true, pc, &caller);
}

/// Checks `len` bytes from guest-virtual `vaddr` as accesses by `pc`, page by page (the pages
/// of a virtual range are anywhere physically). A page that is not mapped yet is skipped: the
/// helper will fault it in, and a page the device owns is pinned, hence mapped.
fn range(
    c: &Checker,
    vaddr: u64,
    len: u64,
    store: bool,
    pc: u64,
    caller: &dyn Fn() -> Option<u64>,
) {
    const PAGE: u64 = 4096;
    let mut off = 0u64;
    while off < len {
        let va = vaddr.wrapping_add(off);
        let n = (PAGE - va % PAGE).min(len - off);
        if let Some(gpa) = guest::translate(va) {
            c.access(gpa, n, store, pc, caller);
        }
        off += n;
    }
}
