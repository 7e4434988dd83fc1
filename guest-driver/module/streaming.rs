// SPDX-License-Identifier: GPL-2.0

//! Streaming DMA of memory the driver does not own: a caller's pages, pinned, mapped for one
//! device, and handed between the CPU and the device by type (docs/streaming-dma.md).
//!
//! Written against the kernel's C calls only (`pin_user_pages_fast`,
//! `sg_alloc_table_from_pages_segment`, `sg_alloc_table`, `dma_map_sgtable`, `dma_unmap_sgtable`,
//! `__dma_sync_sg_for_cpu`/`_for_device`, `unpin_user_pages_dirty_lock`) and nothing of dmalab,
//! as a candidate for `kernel::dma`. The rules it encodes are the DMA API's
//! (`Documentation/core-api/dma-api-howto.rst`):
//!
//! - After the map, the **device** owns the memory. The CPU may touch it again only after a
//!   sync for the CPU or the unmap, and gives it back with a sync for the device. Here the owner
//!   is a type parameter ([`DeviceOwned`], [`CpuOwned`]): the CPU accessors exist only on a
//!   [`CpuOwned`] mapping, and every hand-over consumes the mapping and returns it retyped, so
//!   an old handle cannot be used after a hand-over.
//! - Taking memory back from the device needs evidence that the device is done with it
//!   ([`DeviceDone`]: its completion was seen, or its queue was reset). The evidence is made in
//!   one `unsafe` place per driver, where that argument is written down.
//! - The direction is a type parameter too ([`ToDevice`], [`FromDevice`], [`Bidirectional`]):
//!   the CPU may only read a buffer the device writes ([`CpuReads`]) and only write one the
//!   device reads and that is pinned writable ([`CpuWrites`]: [`Bidirectional`]); pages the
//!   device writes are pinned writable and marked dirty when unpinned, pages it only reads are
//!   pinned read-only (they may be the shared zero page or shared copy-on-write) and never
//!   written.
//! - Dropping a [`DeviceOwned`] mapping cannot know whether the device still uses it, so it
//!   leaks it: the pages stay pinned and mapped, which is safe (the memory is never reused while
//!   the device may write it) and reported once. Dropping a [`CpuOwned`] mapping unmaps it.
//!
//! Where the pages come from is a seam ([`PageProvider`]): a user's pages ([`UserPages`]) or
//! pages the driver owns ([`DriverPages`]). Part of a device-owned mapping can be lent to the CPU
//! while the device keeps the rest ([`Mapping::sync_range_for_cpu`], a guard that gives the
//! range back when dropped), and one page can be mapped without a scatter-gather table
//! ([`SinglePage`]).
//!
//! A driver that maps on every request can keep what a mapping needs besides the pages and
//! reuse it: the page array ([`UserPages::pin_in`], [`UserPages::unpin`]) and the
//! scatter-gather table ([`SgStore`], [`map_in`], [`Mapping::unmap_keeping`]), so that its
//! request path allocates nothing.

use core::{marker::PhantomData, mem::ManuallyDrop, ptr};
use kernel::{
    alloc::Flags,
    bindings,
    device::{Bound, Device},
    dma::DataDirection,
    error::to_result,
    page::Page,
    pr_warn_once,
    prelude::*,
    sync::aref::ARef,
    types::Opaque,
    uaccess::UserPtr,
};

const PAGE_SIZE: usize = kernel::page::PAGE_SIZE;

/// The C `struct device` of `dev` (`Device::as_raw` is private to the kernel crate).
fn raw<Ctx: kernel::device::DeviceContext>(dev: &Device<Ctx>) -> *mut bindings::device {
    // `Device` is `#[repr(transparent)]` over `Opaque<bindings::device>`.
    ptr::from_ref(dev).cast_mut().cast()
}

mod sealed {
    pub(crate) trait Sealed {}
}

/// Which way the data moves; fixed for the life of a mapping.
pub(crate) trait Direction: sealed::Sealed {
    /// The DMA API's direction.
    const DIR: DataDirection;
    /// The device writes the memory: the pages are pinned writable and dirtied when unpinned.
    const DEVICE_WRITES: bool;
}

/// The device reads the memory (`DMA_TO_DEVICE`): a request's source.
pub(crate) enum ToDevice {}
/// The device writes the memory (`DMA_FROM_DEVICE`): a request's destination.
pub(crate) enum FromDevice {}
/// The device reads and writes the memory (`DMA_BIDIRECTIONAL`).
pub(crate) enum Bidirectional {}

impl sealed::Sealed for ToDevice {}
impl sealed::Sealed for FromDevice {}
impl sealed::Sealed for Bidirectional {}

impl Direction for ToDevice {
    const DIR: DataDirection = DataDirection::ToDevice;
    const DEVICE_WRITES: bool = false;
}
impl Direction for FromDevice {
    const DIR: DataDirection = DataDirection::FromDevice;
    const DEVICE_WRITES: bool = true;
}
impl Direction for Bidirectional {
    const DIR: DataDirection = DataDirection::Bidirectional;
    const DEVICE_WRITES: bool = true;
}

/// Directions whose data the device reads: the CPU may write such memory while it owns it, when
/// the memory is writable ([`CpuWritable`]).
pub(crate) trait DeviceReads: Direction {}
impl DeviceReads for ToDevice {}
impl DeviceReads for Bidirectional {}

/// Directions whose data the CPU may read back (the device wrote it).
pub(crate) trait CpuReads: Direction {}
impl CpuReads for FromDevice {}
impl CpuReads for Bidirectional {}

/// Directions whose pages are pinned writable (the device writes them): only those may the CPU
/// write too. Pages pinned for a device that only reads are pinned read-only, and may be the
/// shared zero page or shared copy-on-write with another process: a CPU write there would
/// corrupt memory that is not the caller's.
pub(crate) trait PinnedWritable: Direction {}
impl PinnedWritable for FromDevice {}
impl PinnedWritable for Bidirectional {}

/// Directions whose data the CPU may write through a mapping (for the device to read, and
/// pinned writable): [`Bidirectional`]. A [`ToDevice`] buffer holds the caller's data, which
/// the CPU reads only.
pub(crate) trait CpuWrites: PinnedWritable {}
impl CpuWrites for Bidirectional {}

/// Who may touch a mapping's memory now.
pub(crate) trait Owner: sealed::Sealed {
    /// The device: the CPU must not touch the memory, and the mapping cannot be undone without
    /// [`DeviceDone`].
    const DEVICE: bool;
}

/// The device owns the memory (after the map, or a sync for the device).
pub(crate) enum DeviceOwned {}
/// The CPU owns the memory (after a sync for the CPU).
pub(crate) enum CpuOwned {}

impl sealed::Sealed for DeviceOwned {}
impl sealed::Sealed for CpuOwned {}
impl Owner for DeviceOwned {
    const DEVICE: bool = true;
}
impl Owner for CpuOwned {
    const DEVICE: bool = false;
}

/// Evidence that a device no longer accesses the memory of the mappings it is shown to.
///
/// Taking a mapping back from the device ([`Mapping::sync_for_cpu`], [`Mapping::unmap`]) needs
/// one. A driver makes it where it knows the device is done: after reading the completion of
/// the request that named the memory, or after a reset of the queue that held it.
pub(crate) struct DeviceDone(());

impl DeviceDone {
    /// # Safety
    ///
    /// The device does not access the memory of any mapping (or the range of one, for
    /// [`Mapping::sync_range_for_cpu`]) this value is shown to, from now until it is handed back
    /// to the device (or remapped).
    pub(crate) unsafe fn new() -> Self {
        Self(())
    }
}

/// Where a mapping's memory comes from: pages that stay where they are while it is mapped, and
/// what becomes of them afterwards (a user's pages are unpinned, a driver's freed), which is the
/// implementer's `Drop`.
///
/// # Safety
///
/// The pages [`PageProvider::pages`] returns are valid and are neither freed nor moved until
/// the value is dropped; [`PageProvider::offset`] is less than `PAGE_SIZE` and `offset() + len()`
/// bytes fit in the pages; none of the three answers ever changes.
pub(crate) unsafe trait PageProvider: Send {
    /// The pages, in order.
    fn pages(&self) -> &[*mut bindings::page];
    /// Offset of the first byte in the first page.
    fn offset(&self) -> usize;
    /// Bytes provided, from [`PageProvider::offset`] on.
    fn len(&self) -> usize;
}

/// Memory the CPU may write while it owns a mapping of it in direction `D`: a user's pages pinned
/// writable for a device that reads them ([`CpuWrites`]), or a driver's pages the device reads.
pub(crate) trait CpuWritable<D: Direction>: PageProvider {}
impl<D: CpuWrites> CpuWritable<D> for UserPages<D> {}
impl<D: DeviceReads> CpuWritable<D> for DriverPages {}

/// Copies `out.len()` bytes at `offset` out of the memory `p` provides. `EINVAL` when the range
/// is not inside.
fn read_from(p: &impl PageProvider, offset: usize, out: &mut [u8]) -> Result {
    read_pages(p.pages(), p.offset(), p.len(), offset, out)
}

/// Copies `data` into the memory `p` provides, at `offset`. `EINVAL` when the range is not
/// inside. The caller has the right to write it (the CPU owns it, and it is writable).
fn write_into(p: &impl PageProvider, offset: usize, data: &[u8]) -> Result {
    write_pages(p.pages(), p.offset(), p.len(), offset, data)
}

/// [`read_from`] on `total` bytes of `pages` starting `first` bytes into the first page.
fn read_pages(
    pages: &[*mut bindings::page],
    first: usize,
    total: usize,
    offset: usize,
    out: &mut [u8],
) -> Result {
    let mut done = 0;
    each_piece(pages, first, total, offset, out.len(), |va, n| {
        // SAFETY: `va` is valid for `n` bytes (`each_piece`); a user may write its own page
        // concurrently, so this is a byte copy through raw pointers, never a reference into it.
        unsafe { ptr::copy_nonoverlapping(va, out.as_mut_ptr().add(done), n) };
        done += n;
    })
}

/// [`write_into`] on `total` bytes of `pages` starting `first` bytes into the first page.
fn write_pages(
    pages: &[*mut bindings::page],
    first: usize,
    total: usize,
    offset: usize,
    data: &[u8],
) -> Result {
    let mut done = 0;
    each_piece(pages, first, total, offset, data.len(), |va, n| {
        // SAFETY: `va` is valid for `n` bytes (`each_piece`); a user may touch its own page
        // concurrently, so this is a byte copy through raw pointers, never a reference into it.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr().add(done), va, n) };
        done += n;
    })
}

/// A caller's memory, pinned: its pages cannot be freed, swapped out or migrated until this
/// value is dropped, whatever the caller does to its address space meanwhile.
pub(crate) struct UserPages<D: Direction> {
    pages: KVec<*mut bindings::page>,
    /// Offset of the first byte in the first page.
    offset: usize,
    len: usize,
    _dir: PhantomData<D>,
}

// SAFETY: the page pointers are owned references (pins) that any task may hold and drop.
unsafe impl<D: Direction> Send for UserPages<D> {}

impl<D: Direction> UserPages<D> {
    /// Pins the `len` bytes at user address `addr` of the current task (writable when the device
    /// writes them, `D::DEVICE_WRITES`).
    ///
    /// Fails with `EINVAL` for an empty or wrapping range and with `EFAULT` when part of the
    /// range is not mapped (or not writable when it must be); nothing stays pinned then.
    pub(crate) fn pin(addr: UserPtr, len: usize) -> Result<Self> {
        Self::pin_in(addr, len, KVec::new())
    }

    /// [`UserPages::pin`] with `pages` as the page array: nothing is allocated when it has room
    /// for the range's pages (its contents are dropped). On failure the array is freed.
    pub(crate) fn pin_in(
        addr: UserPtr,
        len: usize,
        mut pages: KVec<*mut bindings::page>,
    ) -> Result<Self> {
        let start = addr.as_const_ptr() as usize;
        let end = start.checked_add(len).ok_or(EINVAL)?;
        if len == 0 {
            return Err(EINVAL);
        }
        let first = start & !(PAGE_SIZE - 1);
        let count = (end - first).div_ceil(PAGE_SIZE);
        let nr = i32::try_from(count).map_err(|_| EINVAL)?;
        pages.clear();
        pages.reserve(count, GFP_KERNEL)?;
        let flags = if D::DEVICE_WRITES {
            bindings::FOLL_WRITE
        } else {
            0
        };
        // SAFETY: `pages` has room for `count` pointers; `pin_user_pages_fast` writes at most
        // `nr` of them and returns how many (or a negative errno, then none).
        let got = unsafe { bindings::pin_user_pages_fast(first, nr, flags, pages.as_mut_ptr()) };
        if got < 0 {
            return Err(Error::from_errno(got));
        }
        // SAFETY: the first `got` entries were initialised by `pin_user_pages_fast` above.
        unsafe { pages.inc_len(got as usize) };
        let this = Self {
            pages,
            offset: start - first,
            len,
            _dir: PhantomData,
        };
        if this.pages.len() != count {
            // dropping `this` unpins the part that was pinned
            return Err(EFAULT);
        }
        Ok(this)
    }

    /// Bytes pinned (the caller's length).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Unpins the pages (marking them dirty when the device wrote them) and returns the page
    /// array, empty, for [`UserPages::pin_in`] to reuse.
    pub(crate) fn unpin(self) -> KVec<*mut bindings::page> {
        let mut this = ManuallyDrop::new(self);
        this.unpin_all();
        // SAFETY: `this` is never used or dropped again; its array is moved out once.
        let mut pages = unsafe { ptr::read(&this.pages) };
        pages.clear();
        pages
    }

    /// Gives up every pin this value holds.
    fn unpin_all(&mut self) {
        // SAFETY: every entry is a page this value pinned and still holds the pin of; the
        // callers never use the entries again.
        unsafe {
            bindings::unpin_user_pages_dirty_lock(
                self.pages.as_mut_ptr(),
                self.pages.len(),
                D::DEVICE_WRITES,
            )
        };
    }

    /// Copies `out.len()` bytes at `offset` out of the pinned memory: the CPU owns pages no
    /// mapping lends to a device. `EINVAL` when the range is not inside.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        read_from(self, offset, out)
    }

    /// Maps the pages for `dev` and hands them to it ([`map`]).
    pub(crate) fn map(
        self,
        dev: &Device<Bound>,
        max_segment: u32,
    ) -> Result<Mapping<D, DeviceOwned>> {
        map(self, dev, max_segment)
    }
}

// SAFETY: the pages are pinned until `drop` unpins them; `pin` checked offset and length.
unsafe impl<D: Direction> PageProvider for UserPages<D> {
    fn pages(&self) -> &[*mut bindings::page] {
        &self.pages
    }
    fn offset(&self) -> usize {
        self.offset
    }
    fn len(&self) -> usize {
        self.len
    }
}

impl<D: PinnedWritable> UserPages<D> {
    /// Copies `data` into the pinned memory at `offset`: the CPU owns pages no mapping lends
    /// to a device. `EINVAL` when the range is not inside.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        write_into(self, offset, data)
    }
}

impl<D: Direction> Drop for UserPages<D> {
    fn drop(&mut self) {
        self.unpin_all();
    }
}

/// Maps `pages` for `dev` and hands them to it. `max_segment` bounds each segment's length
/// (the device's limit); physically contiguous pages are merged up to it, and never beyond
/// what the DMA layer can map in one piece (`dma_max_mapping_size`: 256 KiB when every
/// mapping bounces through swiotlb, where a longer segment would fail to map).
///
/// On failure the pages are given back (unpinned or freed: `ENOMEM` for the table, or the DMA
/// API's error).
pub(crate) fn map<D: Direction, P: PageProvider>(
    pages: P,
    dev: &Device<Bound>,
    max_segment: u32,
) -> Result<Mapping<D, DeviceOwned, P>> {
    let table = Opaque::<bindings::sg_table>::zeroed();
    let n = u32::try_from(pages.pages().len())?;
    let max_segment = segment_limit(dev, max_segment);
    // SAFETY: `table` is zeroed memory for a `struct sg_table`; `pages` holds `n` pages that
    // stay put until it is dropped, after the table (the table goes first in every path below
    // and in `Mapping`'s drop); offset and length lie within them (`PageProvider`). The call
    // only reads the page array.
    to_result(unsafe {
        bindings::sg_alloc_table_from_pages_segment(
            table.get(),
            pages.pages().as_ptr().cast_mut(),
            n,
            pages.offset() as u32,
            pages.len(),
            max_segment.max(PAGE_SIZE as u32),
            bindings::GFP_KERNEL,
        )
    })?;
    // SAFETY: the call built a table of `orig_nents` entries, all of them walkable.
    let capacity = unsafe { (*table.get()).orig_nents };
    // dropping the store frees the table whatever happens next
    let store = SgStore { table, capacity };
    // SAFETY: the table was just built from the provider's pages.
    unsafe { map_table(pages, dev, store) }.map_err(|(e, _, _)| e)
}

/// The longest segment to build for `dev`: `max_segment` (the device's limit), and never
/// beyond what the DMA layer can map in one piece (`dma_max_mapping_size`).
fn segment_limit(dev: &Device<Bound>, max_segment: u32) -> u32 {
    // SAFETY: `dev` is bound for the duration of the call.
    let layer_max = unsafe { bindings::dma_max_mapping_size(raw(dev)) };
    u32::try_from(layer_max).map_or(max_segment, |m| m.min(max_segment))
}

/// What a failed map gives back: the error, the pages and the table.
type MapError<P> = (Error, P, SgStore);

/// Maps `store`'s table for `dev` and makes the mapping.
///
/// # Safety
///
/// `store`'s table holds exactly the pages of `pages` (their offset and length).
unsafe fn map_table<D: Direction, P: PageProvider>(
    pages: P,
    dev: &Device<Bound>,
    store: SgStore,
) -> core::result::Result<Mapping<D, DeviceOwned, P>, MapError<P>> {
    // SAFETY: `dev` is bound for the duration of the call; the table describes the provider's
    // pages (the caller's guarantee), which stay put until the mapping gives them back.
    let mapped = to_result(unsafe {
        bindings::dma_map_sgtable(raw(dev), store.table.get(), D::DIR.into(), 0)
    });
    match mapped {
        Ok(()) => Ok(Mapping {
            table: ManuallyDrop::new(store),
            dev: ManuallyDrop::new(dev.into()),
            pages: ManuallyDrop::new(pages),
            _dir: PhantomData,
            _owner: PhantomData,
        }),
        Err(e) => Err((e, pages, store)),
    }
}

/// [`map`] into a table that exists already: nothing is allocated. `E2BIG` when `store` has
/// fewer entries than the pages need.
///
/// # Errors
///
/// On failure the pages and the store come back with the error, for the caller to reuse.
pub(crate) fn map_in<D: Direction, P: PageProvider>(
    pages: P,
    dev: &Device<Bound>,
    max_segment: u32,
    mut store: SgStore,
) -> core::result::Result<Mapping<D, DeviceOwned, P>, MapError<P>> {
    let max_segment = segment_limit(dev, max_segment).max(PAGE_SIZE as u32) as usize;
    if let Err(e) = store.fill(&pages, max_segment) {
        return Err((e, pages, store));
    }
    // SAFETY: `fill` just made the table hold the provider's pages.
    unsafe { map_table(pages, dev, store) }
}

/// A scatter-gather table allocated once and filled again for every mapping ([`map_in`]):
/// for a driver whose request path must not allocate. Freed when dropped.
pub(crate) struct SgStore {
    table: Opaque<bindings::sg_table>,
    /// Entries it holds, all of them reachable with `sg_next`.
    capacity: u32,
}

// SAFETY: the table is memory the store owns; any task may fill, map or free it.
unsafe impl Send for SgStore {}

impl SgStore {
    /// A table of `entries` entries (chained in pieces of a page when they do not fit in one),
    /// enough to map that many pages whatever their layout.
    pub(crate) fn new(entries: u32) -> Result<Self> {
        let table = Opaque::<bindings::sg_table>::zeroed();
        // SAFETY: `table` is zeroed memory for a `struct sg_table`.
        to_result(unsafe {
            bindings::sg_alloc_table(table.get(), entries.max(1), bindings::GFP_KERNEL)
        })?;
        Ok(Self {
            table,
            capacity: entries.max(1),
        })
    }

    /// Describes the pages of `pages` in the table, physically adjacent ones merged up to
    /// `max_segment` bytes (a multiple of the page size): what
    /// `sg_alloc_table_from_pages_segment` builds, written into entries that exist. `E2BIG`
    /// when they are too few.
    fn fill(&mut self, pages: &impl PageProvider, max_segment: usize) -> Result {
        let list = pages.pages();
        let per_segment = (max_segment / PAGE_SIZE).max(1);
        let (mut offset, mut left) = (pages.offset(), pages.len());
        // SAFETY: the table was allocated with `capacity` entries (type invariant).
        let mut sg = unsafe { (*self.table.get()).sgl };
        let mut used = 0u32;
        let mut i = 0;
        while i < list.len() {
            let mut j = i + 1;
            while j < list.len() && j - i < per_segment && adjacent(list[j - 1], list[j]) {
                j += 1;
            }
            if used == self.capacity {
                return Err(E2BIG);
            }
            let n = ((j - i) * PAGE_SIZE - offset).min(left);
            let last = j == list.len();
            let entry = bindings::scatterlist {
                // `sg_set_page` and, on the last entry, `sg_mark_end`: the page pointer with
                // the end bit; the bits of the entry's previous use are gone
                page_link: list[i] as usize | if last { bindings::SG_END as usize } else { 0 },
                offset: offset as u32,
                length: n as u32,
                // SAFETY: all-zero is a valid entry (what `sg_init_table` writes); the DMA
                // fields are set by the map.
                ..unsafe { core::mem::zeroed() }
            };
            // SAFETY: `sg` is entry `used` < `capacity` of the table: reached from the first
            // entry with `sg_next` over entries without the end bit, so chain links are
            // followed and never overwritten. The table is not mapped (`&mut self`).
            unsafe { sg.write(entry) };
            used += 1;
            left -= n;
            offset = 0;
            i = j;
            if !last {
                // SAFETY: `sg` is a valid entry without the end bit.
                sg = unsafe { bindings::sg_next(sg) };
            }
        }
        // SAFETY: as above; the map and the unmap walk `orig_nents` entries.
        unsafe {
            (*self.table.get()).nents = used;
            (*self.table.get()).orig_nents = used;
        }
        Ok(())
    }
}

impl Drop for SgStore {
    fn drop(&mut self) {
        // SAFETY: the table was allocated by `sg_alloc_table*` with `capacity` entries and is
        // not mapped: a mapping holding it unmaps it before it lets it go. `sg_free_table`
        // finds the chained pieces from `orig_nents`, which `fill` set to the entries used:
        // it is the allocation's count again first.
        unsafe {
            (*self.table.get()).orig_nents = self.capacity;
            bindings::sg_free_table(self.table.get());
        }
    }
}

/// Whether page `b` follows page `a` in physical memory. With `SPARSEMEM_VMEMMAP` (x86-64,
/// arm64 and the other 64-bit architectures Rust builds for) the `struct page`s form one array
/// indexed by page frame number, which is how the C `page_to_pfn` computes it. Elsewhere pages
/// are not merged, which costs segments, never correctness.
fn adjacent(a: *mut bindings::page, b: *mut bindings::page) -> bool {
    #[cfg(CONFIG_SPARSEMEM_VMEMMAP)]
    {
        a.wrapping_add(1) == b
    }
    #[cfg(not(CONFIG_SPARSEMEM_VMEMMAP))]
    {
        let _ = (a, b);
        false
    }
}

/// Memory the driver owns, for streaming DMA of the driver's own buffers: whole pages, not
/// physically contiguous, freed when dropped. The CPU reads and writes it while no mapping
/// lends it to a device.
///
/// # Examples
///
/// ```
/// use kernel::dma::streaming::DriverPages;
///
/// // three pages and a bit; the CPU's accesses may cross page boundaries
/// let mut pages = DriverPages::alloc(3 * 4096 + 100, GFP_KERNEL)?;
/// pages.write(4090, b"across a page boundary")?;
/// let mut back = [0u8; 22];
/// pages.read(4090, &mut back)?;
/// assert_eq!(&back, b"across a page boundary");
///
/// // nothing outside the allocation
/// assert_eq!(pages.read(3 * 4096 + 90, &mut back), Err(EINVAL));
/// assert!(DriverPages::alloc(0, GFP_KERNEL).is_err());
/// # Ok::<(), Error>(())
/// ```
pub(crate) struct DriverPages {
    owned: KVec<Page>,
    /// The same pages, as the array the scatter-gather calls take.
    pages: KVec<*mut bindings::page>,
    len: usize,
}

// SAFETY: the pages are the value's own, and any task may use and free them.
unsafe impl Send for DriverPages {}

impl DriverPages {
    /// Allocates `len` bytes (whole pages, zeroed when `flags` has `__GFP_ZERO`). `EINVAL` for
    /// zero bytes, `ENOMEM` when the pages cannot be had.
    pub(crate) fn alloc(len: usize, flags: Flags) -> Result<Self> {
        if len == 0 {
            return Err(EINVAL);
        }
        let count = len.div_ceil(PAGE_SIZE);
        let mut owned = KVec::with_capacity(count, GFP_KERNEL)?;
        let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
        for _ in 0..count {
            let page = Page::alloc_page(flags)?;
            pages.push(page.as_ptr(), GFP_KERNEL)?;
            owned.push(page, GFP_KERNEL)?;
        }
        Ok(Self { owned, pages, len })
    }

    /// Bytes allocated (as asked).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `out.len()` bytes at `offset` out of the memory. `EINVAL` when the range is not
    /// inside.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        read_from(self, offset, out)
    }

    /// Copies `data` into the memory at `offset`. `EINVAL` when the range is not inside.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        write_into(self, offset, data)
    }

    /// Maps the pages for `dev` in direction `D` and hands them to it ([`map`]).
    pub(crate) fn map<D: Direction>(
        self,
        dev: &Device<Bound>,
        max_segment: u32,
    ) -> Result<Mapping<D, DeviceOwned, Self>> {
        map(self, dev, max_segment)
    }
}

// SAFETY: `owned` holds the pages until the value is dropped; offset 0 and `len` fit in
// `len.div_ceil(PAGE_SIZE)` pages (`alloc`).
unsafe impl PageProvider for DriverPages {
    fn pages(&self) -> &[*mut bindings::page] {
        debug_assert_eq!(self.pages.len(), self.owned.len());
        &self.pages
    }
    fn offset(&self) -> usize {
        0
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Pages of a [`PageProvider`] `P` mapped for one device in direction `D`, owned by `S`
/// ([`DeviceOwned`] or [`CpuOwned`]).
///
/// The bus addresses ([`Mapping::segments`]) can be read in either state: they are what the
/// driver writes into descriptors. The mapping must be undone before `dev` unbinds (the driver
/// guarantees it; docs/streaming-dma.md says how dmalab's does).
pub(crate) struct Mapping<D: Direction, S: Owner, P: PageProvider = UserPages<D>> {
    table: ManuallyDrop<SgStore>,
    // Both `ManuallyDrop`: a leaked device-owned mapping keeps its device reference and pages.
    dev: ManuallyDrop<ARef<Device>>,
    pages: ManuallyDrop<P>,
    _dir: PhantomData<D>,
    _owner: PhantomData<S>,
}

// SAFETY: the table and the pages may be used and dropped from any task (`P: Send`); the DMA
// API calls made through `&self` (none) or by value do not depend on the calling task.
unsafe impl<D: Direction, S: Owner, P: PageProvider> Send for Mapping<D, S, P> {}

/// One mapped segment: bus address and length.
#[derive(Clone, Copy)]
pub(crate) struct Segment {
    /// The bus address the device uses.
    pub(crate) addr: u64,
    /// Its length in bytes.
    pub(crate) len: u32,
}

impl<D: Direction, S: Owner, P: PageProvider> Mapping<D, S, P> {
    /// The mapped segments, in order (`nents` after merging; at most the page count).
    pub(crate) fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        // SAFETY: the table is mapped (type invariant) and not changed while `self` is borrowed.
        let (mut sg, n) = unsafe {
            (
                (*self.table.table.get()).sgl,
                (*self.table.table.get()).nents,
            )
        };
        (0..n).map(move |_| {
            // SAFETY: `sg` is one of the table's first `nents` entries (the loop runs `nents`
            // times, `sg_next` follows chains).
            let s = unsafe {
                Segment {
                    addr: bindings::sg_dma_address(sg),
                    len: bindings::sg_dma_len(sg),
                }
            };
            // SAFETY: as above; past the last entry `sg_next` returns NULL, never dereferenced.
            sg = unsafe { bindings::sg_next(sg) };
            s
        })
    }

    /// How many segments the device sees.
    pub(crate) fn segment_count(&self) -> usize {
        // SAFETY: the table is mapped (type invariant).
        unsafe { (*self.table.table.get()).nents as usize }
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Pages pinned under the mapping.
    pub(crate) fn page_count(&self) -> usize {
        self.pages.pages().len()
    }

    /// The segments covering `len` bytes at `offset` of the mapping, in order (pieces of
    /// [`Mapping::segments`]): for a device operation on part of it. Empty when the range is
    /// not inside the mapping.
    pub(crate) fn segments_in(
        &self,
        offset: usize,
        len: usize,
    ) -> impl Iterator<Item = Segment> + '_ {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.len());
        let (from, to) = (
            offset as u64,
            (offset + if inside { len } else { 0 }) as u64,
        );
        let mut at = 0u64;
        self.segments().filter_map(move |s| {
            let (a, b) = (at, at + u64::from(s.len));
            at = b;
            let (lo, hi) = (a.max(from), b.min(to));
            (lo < hi).then(|| Segment {
                addr: s.addr + (lo - a),
                len: (hi - lo) as u32,
            })
        })
    }

    /// The page under byte `offset` of the mapping and the offset inside that page: for tools
    /// that look at the memory outside the types' rules (the deliberate `dma_bug`s). Touching
    /// it is the caller's responsibility under the DMA API's ownership rules.
    pub(crate) fn page_at(&self, offset: usize) -> Option<(*mut bindings::page, usize)> {
        if offset >= self.len() {
            return None;
        }
        let at = self.pages.offset() + offset;
        Some((self.pages.pages()[at / PAGE_SIZE], at % PAGE_SIZE))
    }

    /// The same mapping with another owner, without a DMA API call: the hand-overs below are
    /// the only callers and make the call themselves.
    fn retype<T: Owner>(self) -> Mapping<D, T, P> {
        let this = ManuallyDrop::new(self);
        // SAFETY: each field is read once out of `this`, which is never used or dropped again.
        unsafe {
            Mapping {
                table: ptr::read(&this.table),
                dev: ptr::read(&this.dev),
                pages: ptr::read(&this.pages),
                _dir: PhantomData,
                _owner: PhantomData,
            }
        }
    }

    /// Hands the mapping over with `call` (`__dma_sync_sg_for_cpu` or `_for_device`, the bodies
    /// of the inline `dma_sync_sgtable_*` wrappers) and returns it with its new owner.
    fn sync<T: Owner>(
        self,
        call: unsafe extern "C" fn(
            *mut bindings::device,
            *mut bindings::scatterlist,
            i32,
            bindings::dma_data_direction,
        ),
    ) -> Mapping<D, T, P> {
        // SAFETY: the table is mapped for `dev` in direction `D::DIR` (type invariant), and
        // `orig_nents` is its CPU entry count, which is what the sync calls take.
        unsafe {
            let t = &*self.table.table.get();
            call(raw(&self.dev), t.sgl, t.orig_nents as i32, D::DIR.into())
        };
        self.retype()
    }

    /// Unmaps (the DMA API syncs for the CPU as part of it), frees the table and returns the
    /// pages (still pinned, for a user's).
    fn undo(self) -> P {
        self.undo_keeping().0
    }

    /// Unmaps and returns the pages and the table, for reuse.
    fn undo_keeping(self) -> (P, SgStore) {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: the table is mapped for `dev` in direction `D::DIR` (type invariant); after
        // the unmap `this` is never used again except to move the table and pages out.
        unsafe {
            bindings::dma_unmap_sgtable(raw(&this.dev), this.table.table.get(), D::DIR.into(), 0);
            ManuallyDrop::drop(&mut this.dev);
            (
                ManuallyDrop::take(&mut this.pages),
                ManuallyDrop::take(&mut this.table),
            )
        }
    }
}

impl<D: Direction, P: PageProvider> Mapping<D, DeviceOwned, P> {
    /// Takes the memory back for the CPU, keeping the mapping (`dma_sync_sgtable_for_cpu`).
    pub(crate) fn sync_for_cpu(self, _done: &DeviceDone) -> Mapping<D, CpuOwned, P> {
        self.sync(bindings::__dma_sync_sg_for_cpu)
    }

    /// Undoes the mapping and returns the pages, the device being done with them.
    pub(crate) fn unmap(self, _done: &DeviceDone) -> P {
        self.undo()
    }

    /// [`Mapping::unmap`], keeping the scatter-gather table for [`map_in`].
    pub(crate) fn unmap_keeping(self, _done: &DeviceDone) -> (P, SgStore) {
        self.undo_keeping()
    }

    /// Takes `len` bytes at `offset` back for the CPU while the device keeps the rest of the
    /// mapping (`dma_sync_single_range_for_cpu` on each segment piece of the range): for a
    /// driver that reads one part of a buffer the device goes on writing, such as one slot of
    /// a receive ring. The returned guard gives the range back to the device when dropped;
    /// while it lives the mapping cannot be handed over as a whole.
    ///
    /// `EINVAL` when the range is empty or not inside the mapping.
    pub(crate) fn sync_range_for_cpu(
        &mut self,
        _done: &DeviceDone,
        offset: usize,
        len: usize,
    ) -> Result<CpuRange<'_, D, P>> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len()) {
            return Err(EINVAL);
        }
        self.sync_range(offset, len, bindings::__dma_sync_single_for_cpu);
        Ok(CpuRange {
            mapping: self,
            offset,
            len,
        })
    }

    /// Syncs the segment pieces of `len` bytes at `offset` with `call`
    /// (`__dma_sync_single_for_cpu` or `_for_device`, the bodies of the inline
    /// `dma_sync_single_range_*` wrappers).
    fn sync_range(
        &self,
        offset: usize,
        len: usize,
        call: unsafe extern "C" fn(
            *mut bindings::device,
            bindings::dma_addr_t,
            usize,
            bindings::dma_data_direction,
        ),
    ) {
        for piece in self.segments_in(offset, len) {
            // SAFETY: the piece lies inside one segment the table maps for `dev` in direction
            // `D::DIR` (type invariant; `segments_in`).
            unsafe {
                call(
                    raw(&self.dev),
                    piece.addr,
                    piece.len as usize,
                    D::DIR.into(),
                )
            };
        }
    }
}

/// A range of a device-owned mapping lent to the CPU ([`Mapping::sync_range_for_cpu`]): given
/// back to the device (`dma_sync_single_range_for_device`) when dropped.
pub(crate) struct CpuRange<'a, D: Direction, P: PageProvider> {
    mapping: &'a mut Mapping<D, DeviceOwned, P>,
    offset: usize,
    len: usize,
}

impl<D: Direction, P: PageProvider> CpuRange<'_, D, P> {
    /// Bytes lent.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The range inside the mapping of `n` bytes at `offset` of this one. `EINVAL` when they
    /// are not inside it.
    fn inside(&self, offset: usize, n: usize) -> Result<usize> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(EINVAL),
        }
    }
}

impl<D: CpuReads, P: PageProvider> CpuRange<'_, D, P> {
    /// Copies `out.len()` bytes at `offset` (of the range) out of the memory the device wrote.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        read_from(&*self.mapping.pages, self.inside(offset, out.len())?, out)
    }
}

impl<D: Direction, P: CpuWritable<D>> CpuRange<'_, D, P> {
    /// Copies `data` into the memory at `offset` (of the range), for the device to read once
    /// the range is given back.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        write_into(&*self.mapping.pages, self.inside(offset, data.len())?, data)
    }
}

impl<D: Direction, P: PageProvider> Drop for CpuRange<'_, D, P> {
    fn drop(&mut self) {
        self.mapping.sync_range(
            self.offset,
            self.len,
            bindings::__dma_sync_single_for_device,
        );
    }
}

impl<D: Direction, P: PageProvider> Mapping<D, CpuOwned, P> {
    /// Hands the memory (and whatever the CPU wrote into it) back to the device
    /// (`dma_sync_sgtable_for_device`).
    pub(crate) fn sync_for_device(self) -> Mapping<D, DeviceOwned, P> {
        self.sync(bindings::__dma_sync_sg_for_device)
    }

    /// Undoes the mapping and returns the pages.
    pub(crate) fn unmap(self) -> P {
        self.undo()
    }
}

impl<D: CpuReads, P: PageProvider> Mapping<D, CpuOwned, P> {
    /// Copies `out.len()` bytes at `offset` out of the memory the device wrote.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        read_from(&*self.pages, offset, out)
    }
}

impl<D: Direction, P: CpuWritable<D>> Mapping<D, CpuOwned, P> {
    /// Copies `data` into the memory at `offset`, for the device to read after
    /// [`Mapping::sync_for_device`].
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        write_into(&*self.pages, offset, data)
    }
}

impl<D: Direction, S: Owner, P: PageProvider> Drop for Mapping<D, S, P> {
    fn drop(&mut self) {
        if S::DEVICE {
            // The device may still use the memory: leaking pins and mapping is the safe choice.
            pr_warn_once!("dmalab: a device-owned DMA mapping was dropped; leaking it\n");
            return;
        }
        // SAFETY: as in `undo_keeping`; the fields are not used after this.
        unsafe {
            bindings::dma_unmap_sgtable(raw(&self.dev), self.table.table.get(), D::DIR.into(), 0);
            ManuallyDrop::drop(&mut self.table);
            ManuallyDrop::drop(&mut self.dev);
            ManuallyDrop::drop(&mut self.pages);
        }
    }
}

/// Whether `addr`, returned by a map call for `dev`, is the DMA API's error value
/// (`dma_mapping_error`).
fn mapping_error(dev: &Device, addr: bindings::dma_addr_t) -> bool {
    // `dma_mapping_error` is an inline function: what it does, with DMA-API debug's record
    // that the driver checked the address before using it.
    #[cfg(CONFIG_DMA_API_DEBUG)]
    // SAFETY: `dev` is a valid `struct device`; the call only records the check.
    unsafe {
        bindings::debug_dma_mapping_error(raw(dev), addr)
    };
    addr == bindings::dma_addr_t::MAX
}

/// One range of a driver's page mapped for one device in direction `D` with `dma_map_page` (no
/// scatter-gather table: one bus address), owned by `S` like a [`Mapping`]: for small buffers
/// a driver maps and unmaps often, such as a command or a status page.
pub(crate) struct SinglePage<D: Direction, S: Owner> {
    // Both `ManuallyDrop`: a leaked device-owned mapping keeps its device reference and page.
    dev: ManuallyDrop<ARef<Device>>,
    page: ManuallyDrop<Page>,
    offset: usize,
    len: usize,
    addr: bindings::dma_addr_t,
    _dir: PhantomData<D>,
    _owner: PhantomData<S>,
}

// SAFETY: the page and the mapping may be used and undone from any task.
unsafe impl<D: Direction, S: Owner> Send for SinglePage<D, S> {}

impl<D: Direction> SinglePage<D, DeviceOwned> {
    /// Maps `len` bytes at `offset` of `page` for `dev` and hands them to the device.
    ///
    /// `EINVAL` for an empty range or one that leaves the page; `ENOMEM` when the DMA layer
    /// cannot map it (no IOVA space, no bounce buffer). The page is freed on failure.
    pub(crate) fn map(page: Page, offset: usize, len: usize, dev: &Device<Bound>) -> Result<Self> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > PAGE_SIZE) {
            return Err(EINVAL);
        }
        // SAFETY: `dev` is bound for the duration of the call; `page` is a valid page this
        // value will own until the mapping is undone, and the range lies inside it.
        let addr = unsafe {
            bindings::dma_map_page_attrs(raw(dev), page.as_ptr(), offset, len, D::DIR.into(), 0)
        };
        if mapping_error(dev, addr) {
            return Err(ENOMEM);
        }
        Ok(Self {
            dev: ManuallyDrop::new(dev.into()),
            page: ManuallyDrop::new(page),
            offset,
            len,
            addr,
            _dir: PhantomData,
            _owner: PhantomData,
        })
    }

    /// Takes the memory back for the CPU, keeping the mapping (`dma_sync_single_for_cpu`).
    pub(crate) fn sync_for_cpu(self, _done: &DeviceDone) -> SinglePage<D, CpuOwned> {
        self.sync(bindings::__dma_sync_single_for_cpu)
    }

    /// Undoes the mapping and returns the page, the device being done with it.
    pub(crate) fn unmap(self, _done: &DeviceDone) -> Page {
        self.undo()
    }
}

impl<D: Direction, S: Owner> SinglePage<D, S> {
    /// The bus address the device uses.
    pub(crate) fn addr(&self) -> u64 {
        self.addr
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The same mapping with another owner, without a DMA API call (as [`Mapping`]'s).
    fn retype<T: Owner>(self) -> SinglePage<D, T> {
        let this = ManuallyDrop::new(self);
        // SAFETY: each field is read once out of `this`, which is never used or dropped again.
        unsafe {
            SinglePage {
                dev: ptr::read(&this.dev),
                page: ptr::read(&this.page),
                offset: this.offset,
                len: this.len,
                addr: this.addr,
                _dir: PhantomData,
                _owner: PhantomData,
            }
        }
    }

    /// Hands the mapping over with `call` (`__dma_sync_single_for_cpu` or `_for_device`).
    fn sync<T: Owner>(
        self,
        call: unsafe extern "C" fn(
            *mut bindings::device,
            bindings::dma_addr_t,
            usize,
            bindings::dma_data_direction,
        ),
    ) -> SinglePage<D, T> {
        // SAFETY: `addr` maps `len` bytes for `dev` in direction `D::DIR` (type invariant).
        unsafe { call(raw(&self.dev), self.addr, self.len, D::DIR.into()) };
        self.retype()
    }

    /// Unmaps and returns the page.
    fn undo(self) -> Page {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `addr` maps `len` bytes for `dev` in direction `D::DIR` (type invariant);
        // `this` is never used again except to move the page out.
        unsafe {
            bindings::dma_unmap_page_attrs(raw(&this.dev), this.addr, this.len, D::DIR.into(), 0);
            ManuallyDrop::drop(&mut this.dev);
            ManuallyDrop::take(&mut this.page)
        }
    }
}

impl<D: Direction> SinglePage<D, CpuOwned> {
    /// Hands the memory (and whatever the CPU wrote into it) back to the device
    /// (`dma_sync_single_for_device`).
    pub(crate) fn sync_for_device(self) -> SinglePage<D, DeviceOwned> {
        self.sync(bindings::__dma_sync_single_for_device)
    }

    /// Undoes the mapping and returns the page.
    pub(crate) fn unmap(self) -> Page {
        self.undo()
    }
}

impl<D: CpuReads> SinglePage<D, CpuOwned> {
    /// Copies `out.len()` bytes at `offset` (of the mapped range) out of the memory the device
    /// wrote.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) -> Result {
        read_pages(&[self.page.as_ptr()], self.offset, self.len, offset, out)
    }
}

impl<D: DeviceReads> SinglePage<D, CpuOwned> {
    /// Copies `data` into the memory at `offset` (of the mapped range), for the device to read
    /// after [`SinglePage::sync_for_device`].
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        write_pages(&[self.page.as_ptr()], self.offset, self.len, offset, data)
    }
}

impl<D: Direction, S: Owner> Drop for SinglePage<D, S> {
    fn drop(&mut self) {
        if S::DEVICE {
            // The device may still use the memory: leaking the page and mapping is the safe
            // choice.
            pr_warn_once!("dmalab: a device-owned DMA page mapping was dropped; leaking it\n");
            return;
        }
        // SAFETY: as in `undo`; the fields are not used after this.
        unsafe {
            bindings::dma_unmap_page_attrs(raw(&self.dev), self.addr, self.len, D::DIR.into(), 0);
            ManuallyDrop::drop(&mut self.dev);
            ManuallyDrop::drop(&mut self.page);
        }
    }
}

/// Runs `f` on each piece `(address, byte count)` of `len` bytes at `offset` of the memory
/// `pages` hold (starting `first` bytes into the first page, `total` bytes long), through a
/// temporary kernel mapping of each page. `EINVAL` when the range is not inside.
fn each_piece(
    pages: &[*mut bindings::page],
    first: usize,
    total: usize,
    offset: usize,
    len: usize,
    mut f: impl FnMut(*mut u8, usize),
) -> Result {
    let end = offset.checked_add(len).ok_or(EINVAL)?;
    if end > total {
        return Err(EINVAL);
    }
    let mut at = first + offset;
    let mut left = len;
    while left > 0 {
        let page = pages[at / PAGE_SIZE];
        let in_page = at % PAGE_SIZE;
        let n = left.min(PAGE_SIZE - in_page);
        // SAFETY: `page` is pinned by the caller's `UserPages`, which outlives this call; the
        // local mapping is undone below before the next one is made (LIFO order).
        let va = unsafe { bindings::kmap_local_page(page) }.cast::<u8>();
        // SAFETY: `in_page + n <= PAGE_SIZE`, inside the page just mapped.
        f(unsafe { va.add(in_page) }, n);
        // SAFETY: `va` is the address `kmap_local_page` returned above.
        unsafe { bindings::kunmap_local(va.cast()) };
        at += n;
        left -= n;
    }
    Ok(())
}
