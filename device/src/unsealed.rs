//! Guest memory on backing files that can shrink: a DMA past the end of a shrunk file is a
//! refused access, not a SIGBUS that kills the server.
//!
//! QEMU's `memory-backend-memfd` seals its file against shrinking, so a mapping of it stays
//! backed for as long as it lives. `memory-backend-file` (tmpfs, hugetlbfs) and
//! `memory-backend-memfd,seal=off` do not: the client can truncate the file at any time, and the
//! next access through the server's mmap of a page past the new end raises SIGBUS. The server
//! keeps the mmap (every access path stays a volatile slice, as fast as for a sealed file) and
//! recovers from the fault instead, the way Wayland compositors read clients' shared memory:
//!
//! - every mmap of an unsealed file is [`register`]ed (its host address range), for as long as
//!   the mmap exists;
//! - a SIGBUS handler, installed with the first registration, looks the faulting address up.
//!   Inside a registered range, it maps anonymous memory over the rest of the range from the
//!   faulting page on (`MAP_FIXED`), records where the range was [`cut`] and counts the fault
//!   on the faulting thread: the access resumes on that memory and completes;
//! - the caller compares [`faults`] before and after an access, and turns a change into a
//!   refusal; later accesses past the cut are refused up front.
//!
//! A SIGBUS anywhere else goes to the handler that was there before (the default: the process
//! dies), as if this module did not exist.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most unsealed mmaps alive at once. QEMU maps a guest's RAM in a handful of pieces; a client
/// that asks for more unsealed mappings than this is refused (`ENOSPC`).
pub const MAX_UNSEALED: usize = 4096;

/// One registered host range. `end == 0`: the slot is free. Written only under [`TAKEN`]; read
/// by the signal handler without a lock (atomics only).
struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    /// The lowest address from which the handler replaced the range with anonymous memory
    /// (`usize::MAX`: never): the file's end was below it when an access faulted.
    cut: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // the initializer of the static array below
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    cut: AtomicUsize::new(usize::MAX),
};

static SLOTS: [Slot; MAX_UNSEALED] = [FREE; MAX_UNSEALED];

/// Serializes [`register`] and [`Registration`]'s drop (finding and freeing slots).
static TAKEN: Mutex<()> = Mutex::new(());

/// The SIGBUS disposition before ours, for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

thread_local! {
    /// SIGBUS faults this thread recovered from (a const-initialized thread local without a
    /// destructor: safe to touch from a signal handler).
    static FAULTS: Cell<u64> = const { Cell::new(0) };
}

/// A registered mmap of an unsealed file: faults in it are recovered from while this lives.
/// Drop it only once nothing can access the range any more (after the mmap's last view is gone)
/// and before the range is unmapped.
#[derive(Debug)]
pub struct Registration {
    slot: usize,
}

impl Registration {
    /// The slot number, for [`cut`].
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let s = &SLOTS[self.slot];
        s.end.store(0, Ordering::Release);
        s.start.store(0, Ordering::Release);
        s.cut.store(usize::MAX, Ordering::Release);
    }
}

/// Registers the host range `[start, start + len)`, an mmap of an unsealed file, installing
/// the SIGBUS handler on first use. `None` when [`MAX_UNSEALED`] ranges are registered already
/// or the handler cannot be installed.
pub fn register(start: usize, len: usize) -> Option<Registration> {
    install().ok()?;
    let end = start.checked_add(len)?;
    let _taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let slot = SLOTS
        .iter()
        .position(|s| s.end.load(Ordering::Acquire) == 0)?;
    let s = &SLOTS[slot];
    s.cut.store(usize::MAX, Ordering::Release);
    s.start.store(start, Ordering::Release);
    // `end` last: the handler ignores a slot whose end is 0
    s.end.store(end, Ordering::Release);
    Some(Registration { slot })
}

/// How many bytes from its start the range of registered slot `slot` is still the file's:
/// `None` while no access has faulted in it. An access that ended past the cut ran into memory
/// the client took away; from then on it is refused up front.
pub fn cut(slot: usize) -> Option<usize> {
    let s = SLOTS.get(slot)?;
    match s.cut.load(Ordering::Acquire) {
        usize::MAX => None,
        cut => Some(cut.saturating_sub(s.start.load(Ordering::Acquire))),
    }
}

/// SIGBUS faults the calling thread has recovered from so far: compare before and after an
/// access to know whether it ran past a shrunk file's end.
pub fn faults() -> u64 {
    FAULTS.with(Cell::get)
}

fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let r = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction with a zeroed struct filled in below; `on_sigbus` only uses
        // async-signal-safe calls (mmap, sigaction) and atomics.
        unsafe {
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &new, &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let _ = PREVIOUS.set(old);
        }
        Ok(())
    });
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    // SAFETY: sysconf is async-signal-safe.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    for s in SLOTS.iter() {
        let end = s.end.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        if end == 0 || addr < start || addr >= end {
            continue;
        }
        let from = (addr & !(page - 1)).max(start);
        // SAFETY: `from..end` lies in a registered mmap that stays mapped while registered (the
        // registration is dropped before the munmap); replacing its pages past the file's end
        // with anonymous memory only changes what the faulting access (and later ones, which
        // are refused) reads and writes.
        let r = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                end - from,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            s.cut.fetch_min(from, Ordering::AcqRel);
            FAULTS.with(|f| f.set(f.get() + 1));
            return;
        }
        break;
    }
    // Not ours (or beyond repair): the previous disposition takes the fault when it recurs.
    if let Some(old) = PREVIOUS.get() {
        // SAFETY: sigaction is async-signal-safe; `old` is the disposition saved at install.
        unsafe { libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()) };
    }
}
