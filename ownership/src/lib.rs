//! The ownership table: which guest-physical memory the device owns right now, shared between
//! the device server (the only writer) and the oracle TCG plugin inside QEMU (a reader that
//! checks every guest CPU access against it), through one small memory-mapped file.
//!
//! A window opens when the driver's doorbell makes a descriptor visible and closes when the
//! device has written that descriptor's completion (or a reset threw it away). Windows are in
//! guest-physical terms: with a vIOMMU the device translates the descriptor's IOVAs through
//! the mappings it was given.
//!
//! The race between the guest and the server: a posted doorbell store retires in the guest
//! before the server has read the message. So the device also counts the BAR0 writes it has
//! finished handling ([`Reader::mmio_writes`]); the plugin counts the BAR0 stores it saw and
//! holds the storing vCPU until the device has caught up. No guest instruction after a
//! doorbell runs before the doorbell's windows are in the table.
//!
//! Layout (little-endian 64-bit words, every word accessed atomically; readers use the
//! sequence word as a seqlock):
//!
//! | word | meaning |
//! |---|---|
//! | 0 | [`MAGIC`] |
//! | 1 | sequence: odd while the writer changes the table |
//! | 2 | BAR0 writes the device has finished handling |
//! | 3 | live windows |
//! | 4 | capacity (entries) |
//! | 5 | windows not published because the table was full |
//! | 6 | guest-physical base of the device's BAR0 (0: not programmed yet) |
//! | 7 | reserved |
//! | 8 + 4·i ... | entry i: start, length, `tag | queue << 32 | kind << 48`, ring slot |

#![deny(unsafe_code)]

pub mod counting;
pub mod dma_api;
pub mod findings;
pub mod helpers;
mod seqlock {
    //! The table's seqlock, written once for the real table (std atomics) and for the loom
    //! model in `tests/loom_seqlock.rs` (loom's atomics), which includes the same file.
    use super::{Kind, Window, ENTRY_WORDS, HEADER_WORDS, W_COUNT, W_OVERFLOW, W_SEQ};
    use std::sync::atomic::{fence, AtomicU64, Ordering};
    include!("seqlock_impl.rs");

    fn spin() {
        std::hint::spin_loop();
    }
}

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Word 0 of the file: "DMALOWN1".
pub const MAGIC: u64 = u64::from_le_bytes(*b"DMALOWN1");
/// Windows the table holds at most.
pub const CAPACITY: usize = 16384;
const HEADER_WORDS: usize = 8;
const ENTRY_WORDS: usize = 4;
/// Size of the table file in bytes.
pub const FILE_SIZE: usize = (HEADER_WORDS + ENTRY_WORDS * CAPACITY) * 8;

const W_MAGIC: usize = 0;
const W_SEQ: usize = 1;
const W_MMIO: usize = 2;
const W_COUNT: usize = 3;
const W_CAPACITY: usize = 4;
const W_OVERFLOW: usize = 5;
const W_BAR0: usize = 6;

/// What the device does with a window, and so what the CPU may not do there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A buffer the device reads: the CPU must not write it.
    ReadOwned = 1,
    /// A buffer the device writes: the CPU must neither read nor write it.
    WriteOwned = 2,
    /// A posted descriptor (or a scatter-gather list it names): the CPU must not write it.
    Descriptor = 3,
}

impl Kind {
    /// The kind stored in an entry's meta word (`None`: not a kind; the entry is skipped).
    pub fn from_raw(raw: u8) -> Option<Kind> {
        match raw {
            1 => Some(Kind::ReadOwned),
            2 => Some(Kind::WriteOwned),
            3 => Some(Kind::Descriptor),
            _ => None,
        }
    }

    /// Whether a CPU access of this direction to a window of this kind breaks the ownership.
    pub fn forbids(self, store: bool) -> bool {
        match self {
            Kind::ReadOwned | Kind::Descriptor => store,
            Kind::WriteOwned => true,
        }
    }
}

/// One live window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First guest-physical byte.
    pub start: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// The queue pair of the request.
    pub queue: u16,
    /// The request's descriptor tag.
    pub tag: u32,
    /// The submission-ring slot of the descriptor.
    pub slot: u32,
    /// What the device does there.
    pub kind: Kind,
}

/// A range of guest-physical memory, for [`SpanIndex`].
pub trait Span {
    /// Its first byte.
    fn start(&self) -> u64;
    /// Its length in bytes.
    fn len(&self) -> u64;
    /// Whether it is empty (it then overlaps nothing).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether `[addr, addr + size)` overlaps it.
    fn overlaps(&self, addr: u64, size: u64) -> bool {
        addr < self.start().saturating_add(self.len()) && self.start() < addr.saturating_add(size)
    }
}

impl Span for Window {
    fn start(&self) -> u64 {
        self.start
    }
    fn len(&self) -> u64 {
        self.len
    }
}

impl Span for dma_api::Range {
    fn start(&self) -> u64 {
        self.start
    }
    fn len(&self) -> u64 {
        self.len
    }
}

/// Ranges sorted by start, for finding those an access overlaps without looking at them all:
/// at queue depth 32 the oracle holds thousands of windows (or DMA API ranges) of 1 MiB
/// zero-copy requests, and it looks up every checked guest access.
#[derive(Debug)]
pub struct SpanIndex<T> {
    items: Vec<T>,
    /// The longest range's length: no range starting further below an address reaches it.
    longest: u64,
}

impl<T> Default for SpanIndex<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            longest: 0,
        }
    }
}

/// The windows of one table snapshot, indexed.
pub type WindowIndex = SpanIndex<Window>;

impl<T: Span> SpanIndex<T> {
    /// The ranges, for a snapshot to fill; call [`SpanIndex::sort`] after.
    pub fn items_mut(&mut self) -> &mut Vec<T> {
        &mut self.items
    }

    /// Indexes the ranges [`SpanIndex::items_mut`] holds now.
    pub fn sort(&mut self) {
        self.items.sort_unstable_by_key(|w| w.start());
        self.longest = self.items.iter().map(|w| w.len()).max().unwrap_or(0);
    }

    /// The ranges that overlap `size` bytes at `addr`.
    pub fn overlapping(&self, addr: u64, size: u64) -> impl Iterator<Item = &T> {
        let end = addr.saturating_add(size);
        // ranges starting at or past the end cannot overlap; of those below, only the ones
        // starting within `longest` of `addr` can reach it
        let upto = self.items.partition_point(|w| w.start() < end);
        let from = addr.saturating_sub(self.longest);
        let first = self.items[..upto].partition_point(|w| w.start() < from);
        self.items[first..upto]
            .iter()
            .filter(move |w| w.overlaps(addr, size))
    }
}

/// A shared mapping of the table file.
struct Map {
    ptr: *mut AtomicU64,
    words: usize,
}

// SAFETY: the mapping is only accessed through atomics, from any thread.
#[allow(unsafe_code)]
unsafe impl Send for Map {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Map {}

impl Map {
    #[allow(unsafe_code)]
    fn new(file: &File, writable: bool) -> std::io::Result<Map> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a fresh shared mapping of FILE_SIZE bytes of a file at least that long (the
        // callers check its length); nothing else in this process maps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FILE_SIZE,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Map {
            ptr: ptr.cast(),
            words: FILE_SIZE / 8,
        })
    }

    /// Word `i` of the table. Another process changes the words at any time, so every access
    /// is atomic; no plain reference to the memory is ever formed.
    #[allow(unsafe_code)]
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.words);
        // SAFETY: `i` is inside the mapping, which lives as long as `self`; the mapping is
        // page-aligned, so every word is 8-byte aligned; AtomicU64 has u64's layout and all
        // accesses (ours and the other process's) are atomic.
        unsafe { &*self.ptr.add(i) }
    }
}

impl seqlock::Words for Map {
    fn word(&self, i: usize) -> &AtomicU64 {
        Map::word(self, i)
    }
}

impl Drop for Map {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), FILE_SIZE) };
    }
}

/// The device's side: the only writer.
pub struct Publisher {
    map: Map,
    windows: Mutex<Vec<Window>>,
}

impl Publisher {
    /// Creates (or truncates) the table file at `path`, mode 0600, empty.
    pub fn create(path: &Path) -> std::io::Result<Publisher> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(FILE_SIZE as u64)?;
        let map = Map::new(&file, true)?;
        map.word(W_CAPACITY)
            .store(CAPACITY as u64, Ordering::Relaxed);
        map.word(W_MAGIC).store(MAGIC, Ordering::Release);
        Ok(Publisher {
            map,
            windows: Mutex::new(Vec::new()),
        })
    }

    /// Records where the guest programmed BAR0 (guest-physical).
    pub fn set_bar0(&self, base: u64) {
        self.map.word(W_BAR0).store(base, Ordering::Release);
    }

    /// Counts one BAR0 write as fully handled (after any window it opened is published).
    pub fn mmio_write_done(&self) {
        self.map.word(W_MMIO).fetch_add(1, Ordering::Release);
    }

    /// Opens windows (one request's descriptor and buffers).
    pub fn open(&self, new: &[Window]) {
        let mut w = self.windows.lock().unwrap();
        w.extend_from_slice(new);
        self.publish(&w);
    }

    /// Closes the windows of the request with `tag` in ring slot `slot` of `queue` (its
    /// completion is being written).
    pub fn close_request(&self, queue: u16, slot: u32, tag: u32) {
        self.close(|w| w.queue == queue && w.slot == slot && w.tag == tag);
    }

    /// Closes every window of `queue` (queue reset).
    pub fn close_queue(&self, queue: u16) {
        self.close(|w| w.queue == queue);
    }

    /// Closes every window (device reset, client gone).
    pub fn close_all(&self) {
        self.close(|_| true);
    }

    fn close(&self, mut gone: impl FnMut(&Window) -> bool) {
        let mut w = self.windows.lock().unwrap();
        let before = w.len();
        w.retain(|x| !gone(x));
        if w.len() != before {
            self.publish(&w);
        }
    }

    /// Rewrites the table under the seqlock (called with the window list locked: one writer).
    fn publish(&self, windows: &[Window]) {
        seqlock::publish(&self.map, windows, CAPACITY);
    }
}

/// The plugin's side: reads without a system call.
pub struct Reader {
    map: Map,
}

impl Reader {
    /// Maps the table file at `path` read-only; fails unless the device created it.
    pub fn open(path: &Path) -> std::io::Result<Reader> {
        let file = File::open(path)?;
        if file.metadata()?.len() < FILE_SIZE as u64 {
            return Err(std::io::Error::other("ownership table: file too short"));
        }
        let map = Map::new(&file, false)?;
        if map.word(W_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(std::io::Error::other("ownership table: bad magic"));
        }
        Ok(Reader { map })
    }

    /// The table's sequence number: unchanged means the windows are unchanged.
    pub fn seq(&self) -> u64 {
        self.map.word(W_SEQ).load(Ordering::Acquire)
    }

    /// Live windows right now (0: nothing to check).
    pub fn count(&self) -> u64 {
        self.map.word(W_COUNT).load(Ordering::Relaxed)
    }

    /// BAR0 writes the device has finished handling.
    pub fn mmio_writes(&self) -> u64 {
        self.map.word(W_MMIO).load(Ordering::Acquire)
    }

    /// The guest-physical base of the device's BAR0 (0: not programmed yet).
    pub fn bar0(&self) -> u64 {
        self.map.word(W_BAR0).load(Ordering::Acquire)
    }

    /// Windows the device could not publish (table full).
    pub fn overflow(&self) -> u64 {
        self.map.word(W_OVERFLOW).load(Ordering::Relaxed)
    }

    /// A consistent copy of the windows into `out`; returns the sequence number it belongs to.
    pub fn snapshot(&self, out: &mut Vec<Window>) -> u64 {
        seqlock::snapshot(&self.map, out, CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn win(start: u64, queue: u16, slot: u32, kind: Kind) -> Window {
        Window {
            start,
            len: 4096,
            queue,
            tag: 0x10000 | slot,
            slot,
            kind,
        }
    }

    #[test]
    fn the_index_finds_what_a_scan_finds() {
        // a small LCG: windows of 1..16 KiB, overlapping one another, at random places
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        let mut index = WindowIndex::default();
        let all: Vec<Window> = (0..500)
            .map(|i| Window {
                start: next(1 << 24),
                len: 1 + next(16 << 10),
                queue: 0,
                tag: i,
                slot: i,
                kind: Kind::ReadOwned,
            })
            .collect();
        index.items_mut().extend(all.iter().copied());
        index.sort();
        for _ in 0..5000 {
            let (addr, size) = (next(1 << 24), 1 + next(8192));
            let mut want: Vec<u32> = all
                .iter()
                .filter(|w| w.overlaps(addr, size))
                .map(|w| w.tag)
                .collect();
            let mut got: Vec<u32> = index.overlapping(addr, size).map(|w| w.tag).collect();
            want.sort_unstable();
            got.sort_unstable();
            assert_eq!(got, want, "{addr:#x}+{size:#x}");
        }
        assert_eq!(index.overlapping(u64::MAX - 1, 8).count(), 0);
    }

    #[test]
    fn windows_open_close_and_are_read_back() {
        let dir = std::env::temp_dir().join(format!("own-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("table");
        let p = Publisher::create(&path).unwrap();
        let r = Reader::open(&path).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.count(), 0);
        let s0 = r.snapshot(&mut out);
        p.open(&[
            win(0x1000, 0, 3, Kind::Descriptor),
            win(0x8000, 0, 3, Kind::ReadOwned),
            win(0x9000, 1, 0, Kind::WriteOwned),
        ]);
        let s1 = r.snapshot(&mut out);
        assert!(s1 > s0 && s1.is_multiple_of(2));
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], win(0x9000, 1, 0, Kind::WriteOwned));
        p.close_request(0, 3, 0x10003);
        r.snapshot(&mut out);
        assert_eq!(out, vec![win(0x9000, 1, 0, Kind::WriteOwned)]);
        p.close_queue(1);
        assert_eq!(r.count(), 0);
        p.mmio_write_done();
        p.mmio_write_done();
        assert_eq!(r.mmio_writes(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kinds_forbid_what_the_device_needs() {
        assert!(!Kind::ReadOwned.forbids(false) && Kind::ReadOwned.forbids(true));
        assert!(Kind::WriteOwned.forbids(false) && Kind::WriteOwned.forbids(true));
        assert!(!Kind::Descriptor.forbids(false) && Kind::Descriptor.forbids(true));
        let w = win(0x1000, 0, 0, Kind::ReadOwned);
        assert!(w.overlaps(0x1fff, 1) && w.overlaps(0xfff, 2));
        assert!(!w.overlaps(0x2000, 8) && !w.overlaps(0xff8, 8));
        assert!(w.overlaps(0, u64::MAX));
    }

    #[test]
    fn a_file_that_is_not_a_table_is_refused() {
        let dir = std::env::temp_dir().join(format!("own-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junk");
        std::fs::write(&path, vec![0u8; FILE_SIZE]).unwrap();
        assert!(Reader::open(&path).is_err());
        std::fs::write(&path, b"short").unwrap();
        assert!(Reader::open(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
