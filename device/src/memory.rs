//! Guest memory as the device may touch it: the DMA mappings the client has given.
//!
//! Every access goes through a [`MemView`], a snapshot of the mappings taken when a descriptor
//! starts. A range is usable only if every byte of it lies in a mapping (and, for device
//! writes, a writable one); anything else is refused before a single byte moves. Access is
//! through `vm-memory`'s volatile slices: the memory is shared with a running guest, so no Rust
//! reference into it is ever formed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::unsealed;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MmapRegion, VolatileSlice,
};

/// The guest-memory seam of the model: production serves the vfio-user DMA map table, tests
/// serve anonymous memory. Both hand out immutable snapshots, so a descriptor's DMA sees one
/// consistent set of mappings and an unmap never pulls memory from under a running copy.
pub trait DmaMemory: Send + Sync {
    /// The mappings as they are now.
    fn view(&self) -> Arc<MemView>;

    /// Changes whenever the mappings change, so a caller can keep a view until then.
    fn generation(&self) -> u64;

    /// Limits every view from now on to the addresses a device that drives `bits` address
    /// lines can reach: a range that ends above 2^`bits` is refused with
    /// [`AccessError::BeyondReach`] even where it is mapped. `bits` >= 64 (the default) is no
    /// limit. Called once, when the device is built (`DeviceConfig::dma_bits`).
    fn set_reach(&self, bits: u32);
}

/// Why a range cannot be accessed. `addr` and `len` are the range asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // the fields are the range; each variant's message says the rest
pub enum AccessError {
    /// `addr + len` does not fit in 64 bits.
    #[error("address {addr:#x} + length {len:#x} overflows 64 bits")]
    Overflow { addr: u64, len: u64 },
    /// Some byte of the range is not mapped (or not writable, for a write).
    #[error("{addr:#x}+{len:#x} is not mapped for the device (an unmapped IOVA, or outside guest memory)")]
    Unmapped { addr: u64, len: u64 },
    /// The range reaches 2^`bits` or above: a device that drives only `bits` address lines
    /// cannot express it ([`DmaMemory::set_reach`]).
    #[error("{addr:#x}+{len:#x} is beyond the device's {bits}-bit DMA reach (CAP_DMA_BITS; the driver's DMA mask is wider than the device)")]
    BeyondReach { addr: u64, len: u64, bits: u32 },
    /// The range is in a mapping whose backing file the client shrank under it (an unsealed
    /// memory backend): the memory past the file's end is gone.
    #[error("{addr:#x}+{len:#x} is gone: the client shrank the file backing its mapping (an unsealed memory backend)")]
    Gone { addr: u64, len: u64 },
}

/// The slices of one guest range: almost always one, kept inline.
pub type Slices<'m> = smallvec::SmallVec<[VolatileSlice<'m>; 2]>;

/// A snapshot of the DMA mappings.
#[derive(Default)]
pub struct MemView {
    mem: GuestMemoryMmap<()>,
    /// `[start, end)` of the mappings the client gave read-only.
    readonly: Vec<(u64, u64)>,
    /// Address bits the device drives (0 or >= 64: no limit).
    reach_bits: u32,
    /// `[start, end)` of the mappings on unsealed files, and their [`unsealed`] slots: refused
    /// past the [`unsealed::cut`] once the file shrank under them.
    unsealed: Vec<(u64, u64, usize)>,
}

/// Direction of a DMA, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// The device reads guest memory.
    FromGuest,
    /// The device writes guest memory.
    ToGuest,
}

impl MemView {
    /// Checks bounds and write permission; returns the length as usize.
    fn check(&self, addr: u64, len: u64, dir: Dir) -> Result<usize, AccessError> {
        let end = addr
            .checked_add(len)
            .ok_or(AccessError::Overflow { addr, len })?;
        if (1..64).contains(&self.reach_bits) && end > 1u64 << self.reach_bits {
            let bits = self.reach_bits;
            return Err(AccessError::BeyondReach { addr, len, bits });
        }
        if self.unsealed.iter().any(|&(s, e, slot)| {
            addr < e && s < end && unsealed::cut(slot).is_some_and(|cut| end > s + cut as u64)
        }) {
            return Err(AccessError::Gone { addr, len });
        }
        let unmapped = AccessError::Unmapped { addr, len };
        let count = usize::try_from(len).map_err(|_| unmapped)?;
        if len == 0
            || (dir == Dir::ToGuest && self.readonly.iter().any(|&(s, e)| addr < e && s < end))
        {
            return Err(unmapped);
        }
        Ok(count)
    }

    /// The range as one slice when it lies in a single mapping (the common case, no allocation).
    fn single(&self, addr: u64, count: usize) -> Option<VolatileSlice<'_>> {
        self.mem.get_slice(GuestAddress(addr), count).ok()
    }

    /// Checks `addr..addr+len` and returns it as volatile slices (one per mapping it spans).
    pub fn slices(&self, addr: u64, len: u64, dir: Dir) -> Result<Slices<'_>, AccessError> {
        let count = self.check(addr, len, dir)?;
        if let Some(s) = self.single(addr, count) {
            return Ok(smallvec::smallvec![s]);
        }
        // get_slices() yields an error for the first hole, so a collected Ok covers every byte.
        self.mem
            .get_slices(GuestAddress(addr), count)
            .collect::<Result<Slices<'_>, _>>()
            .map_err(|_| AccessError::Unmapped { addr, len })
    }

    /// Whether the calling thread ran into a shrunk file since it read `faults_before`
    /// ([`unsealed::faults`]): then the access just made is refused as [`AccessError::Gone`].
    pub fn refuse_if_shrunk(
        &self,
        faults_before: u64,
        addr: u64,
        len: u64,
    ) -> Result<(), AccessError> {
        if unsealed::faults() == faults_before {
            Ok(())
        } else {
            Err(AccessError::Gone { addr, len })
        }
    }

    /// Reads `buf.len()` bytes at `addr` (all or nothing).
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let before = unsealed::faults();
        self.read_unguarded(addr, buf)?;
        self.refuse_if_shrunk(before, addr, buf.len() as u64)
    }

    fn read_unguarded(&self, addr: u64, buf: &mut [u8]) -> Result<(), AccessError> {
        let count = self.check(addr, buf.len() as u64, Dir::FromGuest)?;
        if let Some(s) = self.single(addr, count) {
            s.copy_to(buf);
            return Ok(());
        }
        let mut off = 0;
        for s in self.slices(addr, buf.len() as u64, Dir::FromGuest)? {
            off += s.copy_to(&mut buf[off..]);
        }
        Ok(())
    }

    /// Writes `data` at `addr` (all or nothing; on a file that shrank meanwhile, the bytes
    /// past its end go nowhere and the write is refused).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), AccessError> {
        let before = unsealed::faults();
        self.write_unguarded(addr, data)?;
        self.refuse_if_shrunk(before, addr, data.len() as u64)
    }

    fn write_unguarded(&self, addr: u64, data: &[u8]) -> Result<(), AccessError> {
        let count = self.check(addr, data.len() as u64, Dir::ToGuest)?;
        if let Some(s) = self.single(addr, count) {
            s.copy_from(data);
            return Ok(());
        }
        let mut off = 0;
        for s in self.slices(addr, data.len() as u64, Dir::ToGuest)? {
            s.copy_from(&data[off..off + s.len()]);
            off += s.len();
        }
        Ok(())
    }

    /// The guest-physical ranges behind the DMA range `[addr, addr + len)`, for the ownership
    /// oracle: in a file-backed mapping (QEMU's RAM memory backend) the offset in the file is
    /// the guest-physical address, both without an IOMMU (IOVA = guest-physical) and with one;
    /// anonymous memory (tests) stands for itself. Parts that are not mapped are left out.
    pub fn physical(&self, addr: u64, len: u64) -> Vec<(u64, u64)> {
        let end = addr.saturating_add(len);
        let mut out = Vec::new();
        for r in self.mem.iter() {
            let (rs, re) = (r.start_addr().0, r.start_addr().0.saturating_add(r.len()));
            let (s, e) = (addr.max(rs), end.min(re));
            if s < e {
                let base = r.file_offset().map_or(rs, FileOffset::start);
                out.push((base + (s - rs), e - s));
            }
        }
        out
    }

    /// Stores `value` at the 4-byte aligned `addr` in one access, after all earlier writes
    /// (the completion word that carries the phase bit).
    pub fn store_u32_release(&self, addr: u64, value: u32) -> Result<(), AccessError> {
        self.check(addr, 4, Dir::ToGuest)?;
        let before = unsealed::faults();
        self.mem
            .store(
                value.to_le(),
                GuestAddress(addr),
                std::sync::atomic::Ordering::Release,
            )
            .map_err(|_| AccessError::Unmapped { addr, len: 4 })?;
        self.refuse_if_shrunk(before, addr, 4)
    }

    /// Number of mappings.
    pub fn num_mappings(&self) -> usize {
        self.mem.num_regions()
    }
}

/// Why a mapping was refused. `iova` and `size` are the mapping asked for.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the fields are the mapping; each variant's message says the rest
pub enum MapError {
    /// Size 0.
    #[error("zero-sized DMA mapping at {0:#x}")]
    Empty(u64),
    /// It overlaps a mapping already in the table.
    #[error("DMA mapping {iova:#x}+{size:#x} overlaps an existing mapping")]
    Overlap { iova: u64, size: u64 },
    /// It runs past the end of the 64-bit address space.
    #[error("DMA mapping {iova:#x}+{size:#x} wraps the 64-bit address space")]
    Wraps { iova: u64, size: u64 },
    /// The file could not be mapped into the server.
    #[error("cannot mmap DMA mapping {iova:#x}+{size:#x}: {source}")]
    Mmap {
        iova: u64,
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    /// It does not fit the guest address space model.
    #[error("DMA mapping {iova:#x}+{size:#x} does not fit the guest address space")]
    Region { iova: u64, size: u64 },
    /// The file is too small, misaligned, or not a regular file.
    #[error("DMA mapping {iova:#x}+{size:#x}: the file cannot back it ({why})")]
    Unbacked { iova: u64, size: u64, why: String },
    /// The table is full ([`MAX_MAPPINGS`]).
    #[error("DMA mapping {iova:#x}+{size:#x}: already {MAX_MAPPINGS} mappings")]
    TooMany { iova: u64, size: u64 },
    /// Too many distinct backing files open ([`backing_file_limit`]).
    #[error("DMA mapping {iova:#x}+{size:#x}: already {} backing files open (the open-file limit less {RESERVED_FDS} kept for the control socket and logs)", backing_file_limit())]
    TooManyFiles { iova: u64, size: u64 },
    /// Too many mappings of unsealed files ([`unsealed::MAX_UNSEALED`]).
    #[error(
        "DMA mapping {iova:#x}+{size:#x}: already {} mappings of unsealed files",
        unsealed::MAX_UNSEALED
    )]
    TooManyUnsealed { iova: u64, size: u64 },
}

impl MapError {
    /// The errno the vfio-user spec names for this refusal.
    pub fn errno(&self) -> i32 {
        match self {
            MapError::Overlap { .. } => libc::EEXIST,
            MapError::TooMany { .. }
            | MapError::TooManyFiles { .. }
            | MapError::TooManyUnsealed { .. } => libc::ENOSPC,
            MapError::Mmap { .. } => libc::ENOMEM,
            _ => libc::EINVAL,
        }
    }
}

/// Why an unmap was refused.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // the unmap range and the mapping it would split, as the message says
pub enum UnmapError {
    /// The range covers only part of a mapping: mappings are removed whole.
    #[error("DMA unmap {iova:#x}+{size:#x} would split the mapping {start:#x}+{len:#x}")]
    Split {
        iova: u64,
        size: u64,
        start: u64,
        len: u64,
    },
}

/// Most mappings the table holds at once (the vfio-user default `max_dma_maps`).
pub const MAX_MAPPINGS: usize = 65535;

/// Descriptors kept free of backing files whatever the client maps: the control socket and
/// its clients, the interrupt eventfds, the event log and stderr.
pub const RESERVED_FDS: usize = 256;

/// Most distinct backing files the table keeps open: the process's open-file limit (the server
/// raises its soft limit to the hard one at start) less [`RESERVED_FDS`], at most
/// [`MAX_MAPPINGS`]. Mappings of a file already open cost no descriptor.
pub fn backing_file_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the local struct.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    soft.saturating_sub(RESERVED_FDS).min(MAX_MAPPINGS)
}

struct Mapping {
    start: u64,
    len: u64,
    /// `None`: a window the client mapped without a file (ROM): it counts for overlap and
    /// unmap bookkeeping, but the device cannot DMA there.
    region: Option<Arc<GuestRegionMmap<()>>>,
    writable: bool,
    /// What must outlive every view of `region`: dropped only after [`MapTable::quiesce`].
    keep: Keep,
}

/// What a mapping holds besides its region, released once no view can reach the region.
#[derive(Default)]
struct Keep {
    /// The file is unsealed: its faults are recovered from while this lives.
    unsealed: Option<unsealed::Registration>,
    /// A mapping widened to the file's page size (hugetlbfs): the region is a window into it.
    /// Declared after `unsealed`, so the registration goes before the munmap.
    widened: Option<RawMmap>,
}

/// An mmap this module made itself (a hugetlbfs mapping widened to whole huge pages); unmapped
/// on drop.
struct RawMmap {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: a plain address range; the memory itself is reached only through views.
unsafe impl Send for RawMmap {}
// SAFETY: as above: nothing is accessed through `&RawMmap`.
unsafe impl Sync for RawMmap {}

impl Drop for RawMmap {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is the mmap this value made and owns; every view into it is
        // gone (a `Keep` is dropped after `quiesce`).
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

impl Mapping {
    fn range(&self) -> (u128, u128) {
        let s = self.start as u128;
        (s, s + self.len as u128)
    }
}

/// The DMA map table: what DMA_MAP/DMA_UNMAP build, what [`DmaMemory::view`] snapshots.
#[derive(Default)]
pub struct MapTable {
    maps: Mutex<Vec<Mapping>>,
    current: RwLock<Arc<MemView>>,
    generation: AtomicU64,
    /// Views replaced by a later one that someone may still hold (see [`MapTable::quiesce`]).
    retired: Mutex<Vec<Weak<MemView>>>,
    /// [`DmaMemory::set_reach`]'s bits; 0 until set (no limit).
    reach_bits: std::sync::atomic::AtomicU32,
    /// The backing files of the mappings, by (device, inode): one descriptor each, however
    /// many mappings share it ([`MapTable::shared_backing`]).
    backings: Mutex<std::collections::HashMap<(u64, u64), Weak<File>>>,
}

impl MapTable {
    /// An empty table: every DMA is refused until something is mapped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `size` bytes of `file` at `offset` to `iova` (DMA_MAP with an fd).
    pub fn map_file(
        &self,
        iova: u64,
        size: u64,
        file: File,
        offset: u64,
        writable: bool,
    ) -> Result<(), MapError> {
        self.check_new(iova, size)?;
        let backing = check_backing(&file, iova, size, offset)?;
        let file = self
            .shared_backing(file)
            .ok_or(MapError::TooManyFiles { iova, size })?;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let mut keep = Keep::default();
        let page = backing.page_size;
        let mmap = if !offset.is_multiple_of(page) || !size.is_multiple_of(page) {
            // hugetlbfs maps whole huge pages only: map the huge pages around the range and
            // give the device the range's window into them
            let (mmap, raw) = widened(&file, offset, size, page, prot)
                .map_err(|source| MapError::Mmap { iova, size, source })?;
            keep.widened = Some(raw);
            mmap
        } else {
            MmapRegion::build(
                Some(FileOffset::from_arc(file, offset)),
                size as usize,
                prot,
                libc::MAP_SHARED,
            )
            .map_err(|source| MapError::Mmap { iova, size, source })?
        };
        if !backing.sealed {
            keep.unsealed = Some(
                unsealed::register(mmap.as_ptr() as usize, size as usize)
                    .ok_or(MapError::TooManyUnsealed { iova, size })?,
            );
        }
        self.insert(iova, size, mmap, writable, keep)
    }

    /// `file`, or the descriptor this table already holds for the same file (device and
    /// inode): every mapping keeps its backing open, and a client that maps one memfd in many
    /// pieces (QEMU does, and a hostile client can do it 65,535 times) must not make the
    /// server hold a descriptor per piece. The duplicate is closed here.
    ///
    /// `None` (and the descriptor closed) for a new file when the table already holds
    /// [`backing_file_limit`] of them: the descriptors left are the reserve the control
    /// socket, its clients, the interrupt eventfds and the logs need.
    fn shared_backing(&self, file: File) -> Option<Arc<File>> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        let key = (meta.dev(), meta.ino());
        let mut files = self.backings.lock().unwrap();
        files.retain(|_, f| f.strong_count() > 0);
        if let Some(known) = files.get(&key).and_then(Weak::upgrade) {
            return Some(known);
        }
        if files.len() >= backing_file_limit() {
            return None;
        }
        let file = Arc::new(file);
        files.insert(key, Arc::downgrade(&file));
        Some(file)
    }

    /// Maps fresh anonymous memory at `iova` (tests, benchmarks).
    pub fn map_anonymous(&self, iova: u64, size: u64) -> Result<(), MapError> {
        self.check_new(iova, size)?;
        let mmap = MmapRegion::new(size as usize).map_err(|source| MapError::Mmap {
            iova,
            size,
            source,
        })?;
        self.insert(iova, size, mmap, true, Keep::default())
    }

    /// Records a window the client mapped without a file: no DMA can reach it, but it takes
    /// part in overlap checks and unmaps like any mapping.
    pub fn map_window(&self, iova: u64, size: u64) -> Result<(), MapError> {
        self.check_new(iova, size)?;
        // Not DMA-able: the published view does not change.
        drop(self.insert_sorted(Mapping {
            start: iova,
            len: size,
            region: None,
            writable: false,
            keep: Keep::default(),
        }));
        Ok(())
    }

    fn check_new(&self, iova: u64, size: u64) -> Result<(), MapError> {
        if size == 0 {
            return Err(MapError::Empty(iova));
        }
        if iova.checked_add(size).is_none() || usize::try_from(size).is_err() {
            return Err(MapError::Wraps { iova, size });
        }
        let (s, e) = (iova as u128, iova as u128 + size as u128);
        let maps = self.maps.lock().unwrap();
        if maps.iter().any(|m| {
            let (ms, me) = m.range();
            s < me && ms < e
        }) {
            return Err(MapError::Overlap { iova, size });
        }
        if maps.len() >= MAX_MAPPINGS {
            return Err(MapError::TooMany { iova, size });
        }
        Ok(())
    }

    fn insert(
        &self,
        iova: u64,
        size: u64,
        mmap: MmapRegion<()>,
        writable: bool,
        keep: Keep,
    ) -> Result<(), MapError> {
        let region = GuestRegionMmap::new(mmap, GuestAddress(iova))
            .ok_or(MapError::Region { iova, size })?;
        let maps = self.insert_sorted(Mapping {
            start: iova,
            len: size,
            region: Some(Arc::new(region)),
            writable,
            keep,
        });
        self.publish(&maps);
        Ok(())
    }

    /// Inserts `m` in address order (vm-memory wants its regions sorted) and returns the
    /// locked table.
    fn insert_sorted(&self, m: Mapping) -> std::sync::MutexGuard<'_, Vec<Mapping>> {
        let mut maps = self.maps.lock().unwrap();
        let at = maps.partition_point(|x| x.start < m.start);
        maps.insert(at, m);
        maps
    }

    /// Removes every mapping that lies inside `iova..iova+size` and returns how many it removed;
    /// a range that would split a mapping removes nothing and fails. The arithmetic is done in
    /// u128: QEMU unmaps "everything" with `iova + size == 2^64`. Returns once no DMA can reach
    /// the removed memory any more ([`MapTable::quiesce`]).
    pub fn unmap(&self, iova: u64, size: u64) -> Result<usize, UnmapError> {
        let (s, e) = (iova as u128, iova as u128 + size as u128);
        let mut maps = self.maps.lock().unwrap();
        if let Some(m) = maps.iter().find(|m| {
            let (ms, me) = m.range();
            ms < e && s < me && !(ms >= s && me <= e)
        }) {
            return Err(UnmapError::Split {
                iova,
                size,
                start: m.start,
                len: m.len,
            });
        }
        let gone: Vec<Mapping> = maps
            .extract_if(.., |m| {
                let (ms, me) = m.range();
                ms >= s && me <= e
            })
            .collect();
        if !gone.is_empty() {
            self.publish(&maps);
        }
        drop(maps);
        self.quiesce();
        // no view reaches them any more: now their registrations and widened mmaps may go
        let removed = gone.len();
        drop(gone);
        Ok(removed)
    }

    /// Removes every mapping (unmap-all, device reset by the client, disconnect), returning
    /// once no DMA can reach them.
    pub fn clear(&self) {
        let mut maps = self.maps.lock().unwrap();
        let gone = std::mem::take(&mut *maps);
        self.publish(&maps);
        drop(maps);
        self.quiesce();
        drop(gone);
    }

    /// Waits until every view replaced by a later one has been dropped: DMA runs only through
    /// views, a worker holds one for the length of one descriptor (and never while idle or
    /// sleeping), so after this no access through an unmapped region can start or be running.
    pub fn quiesce(&self) {
        let started = Instant::now();
        let mut warned = false;
        loop {
            {
                let mut retired = self.retired.lock().unwrap();
                retired.retain(|w| w.strong_count() > 0);
                if retired.is_empty() {
                    return;
                }
            }
            if !warned && started.elapsed() > Duration::from_secs(1) {
                log::warn!("DMA unmap: still waiting for a descriptor in flight to finish");
                warned = true;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.lock().unwrap().len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn publish(&self, maps: &[Mapping]) {
        // `maps` is sorted and free of overlaps (both kept at insert), so building can only fail
        // for an empty table, which means "nothing mapped".
        let regions: Vec<_> = maps.iter().filter_map(|m| m.region.clone()).collect();
        let mem = if regions.is_empty() {
            GuestMemoryMmap::default()
        } else {
            GuestMemoryMmap::from_arc_regions(regions)
                .expect("DMA map table is sorted and free of overlaps")
        };
        let readonly = maps
            .iter()
            .filter(|m| m.region.is_some() && !m.writable)
            .map(|m| (m.start, m.start + m.len))
            .collect();
        let unsealed = maps
            .iter()
            .filter_map(|m| {
                let r = m.keep.unsealed.as_ref()?;
                Some((m.start, m.start + m.len, r.slot()))
            })
            .collect();
        let reach_bits = match self.reach_bits.load(Ordering::Relaxed) {
            0 => 64,
            bits => bits,
        };
        let old = std::mem::replace(
            &mut *self.current.write().unwrap(),
            Arc::new(MemView {
                mem,
                readonly,
                reach_bits,
                unsealed,
            }),
        );
        self.retired.lock().unwrap().push(Arc::downgrade(&old));
        drop(old);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// What [`check_backing`] found out about a backing file.
struct Backing {
    /// Sealed against shrinking: the mapping stays backed to its end for as long as it lives.
    /// Otherwise the file may shrink under it at any time ([`unsealed`]).
    sealed: bool,
    /// The file's page size: a huge page on hugetlbfs, which maps only whole ones.
    page_size: u64,
}

/// Refuses a file that cannot back `offset..offset+size` now (too short, not a regular file),
/// and says whether it can stop backing it later (no `F_SEAL_SHRINK`).
///
/// The seal is checked first: once `F_SEAL_SHRINK` is set nobody can remove it, so the size
/// read afterwards can only grow. (The other order let a client shrink the file between the
/// two checks and seal it after: `tests/map_races.rs`.) An unsealed file can shrink after any
/// check: its mapping is served through [`unsealed`], which turns the SIGBUS of an access past
/// the new end into a refused access.
fn check_backing(file: &File, iova: u64, size: u64, offset: u64) -> Result<Backing, MapError> {
    let unbacked = |why: String| MapError::Unbacked { iova, size, why };
    // SAFETY: F_GET_SEALS only reads the descriptor's seals (-1 with EINVAL: no sealing).
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
    let meta = file
        .metadata()
        .map_err(|e| unbacked(format!("fstat: {e}")))?;
    if !meta.is_file() {
        return Err(unbacked("not a regular file or memfd".into()));
    }
    let end = offset
        .checked_add(size)
        .ok_or_else(|| unbacked("offset + size overflows".into()))?;
    if end > meta.len() {
        return Err(unbacked(format!(
            "offset {offset:#x} + size {size:#x} is past the file's end {:#x}",
            meta.len()
        )));
    }
    Ok(Backing {
        sealed,
        page_size: page_size(file),
    })
}

/// The page size `file` is mapped in: the huge page size on hugetlbfs, else the base page.
fn page_size(file: &File) -> u64 {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    // SAFETY: sysconf has no preconditions.
    let base = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    // SAFETY: fstatfs fills the zeroed struct for our own open descriptor.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0
        && st.f_type as i64 == HUGETLBFS_MAGIC
        && st.f_bsize as u64 > base
    {
        st.f_bsize as u64
    } else {
        base
    }
}

/// Maps the whole `page`-sized pages of `file` around `offset..offset+size` and returns the
/// range's window into them (with its file offset, for [`MemView::physical`]) and the mmap.
fn widened(
    file: &Arc<File>,
    offset: u64,
    size: u64,
    page: u64,
    prot: i32,
) -> Result<(MmapRegion<()>, RawMmap), vm_memory::mmap::MmapRegionError> {
    let os = |e| vm_memory::mmap::MmapRegionError::Mmap(e);
    let start = offset - offset % page;
    let end = offset
        .checked_add(size)
        .and_then(|e| e.checked_next_multiple_of(page))
        .ok_or(vm_memory::mmap::MmapRegionError::InvalidOffsetLength)?;
    let len = usize::try_from(end - start)
        .map_err(|_| vm_memory::mmap::MmapRegionError::InvalidOffsetLength)?;
    // SAFETY: a fresh shared mapping of our own descriptor; the kernel picks the address.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(os(std::io::Error::last_os_error()));
    }
    let raw = RawMmap { addr, len };
    let window = (offset - start) as usize;
    // SAFETY: `addr + window .. + size` lies inside the mmap just made, which `raw` keeps until
    // after every view of the region is gone; prot and flags are the mmap's own. The window is
    // not page-aligned for hugetlbfs, which `build_raw` does not require of a raw pointer.
    let region = unsafe {
        vm_memory::mmap::MmapRegionBuilder::new(size as usize)
            .with_raw_mmap_pointer(addr.cast::<u8>().add(window))
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(prot)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
    }?;
    Ok((region, raw))
}

impl DmaMemory for MapTable {
    fn view(&self) -> Arc<MemView> {
        self.current.read().unwrap().clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn set_reach(&self, bits: u32) {
        self.reach_bits.store(bits.max(1), Ordering::Relaxed);
        // Republish under the table's lock, so no view published after this lacks the limit.
        let maps = self.maps.lock().unwrap();
        self.publish(&maps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_with_fewer_address_bits_refuses_what_it_cannot_drive() {
        let t = MapTable::new();
        t.map_anonymous(0xffff_f000, 0x2000).unwrap();
        t.map_anonymous(0x1_0000_2000, 0x1000).unwrap();
        assert!(t.view().slices(0x1_0000_2000, 8, Dir::ToGuest).is_ok());
        t.set_reach(32);
        let v = t.view();
        assert!(v.slices(0xffff_f000, 0x1000, Dir::ToGuest).is_ok());
        // the last byte below 4 GiB is reachable, one more is not
        assert_eq!(
            v.slices(0xffff_f000, 0x1001, Dir::ToGuest).unwrap_err(),
            AccessError::BeyondReach {
                addr: 0xffff_f000,
                len: 0x1001,
                bits: 32
            }
        );
        let e = v.read(0x1_0000_2000, &mut [0; 8]).unwrap_err();
        assert!(
            e.to_string()
                .contains("beyond the device's 32-bit DMA reach"),
            "{e}"
        );
        // the limit holds for views published later too
        t.map_anonymous(0x2_0000_0000, 0x1000).unwrap();
        assert!(matches!(
            t.view().write(0x2_0000_0000, &[1]),
            Err(AccessError::BeyondReach { .. })
        ));
    }

    #[test]
    fn unmapped_and_partial_ranges_are_refused() {
        let t = MapTable::new();
        t.map_anonymous(0x1000, 0x1000).unwrap();
        let v = t.view();
        assert!(v.slices(0x1000, 0x1000, Dir::ToGuest).is_ok());
        assert_eq!(
            v.slices(0x1800, 0x1000, Dir::ToGuest).unwrap_err(),
            AccessError::Unmapped {
                addr: 0x1800,
                len: 0x1000
            }
        );
        assert!(v.slices(0, 1, Dir::FromGuest).is_err());
        assert!(matches!(
            v.slices(u64::MAX, 2, Dir::FromGuest),
            Err(AccessError::Overflow { .. })
        ));
    }

    #[test]
    fn adjacent_mappings_form_one_range() {
        let t = MapTable::new();
        t.map_anonymous(0x1000, 0x1000).unwrap();
        t.map_anonymous(0x2000, 0x1000).unwrap();
        let v = t.view();
        assert_eq!(v.slices(0x1800, 0x1000, Dir::ToGuest).unwrap().len(), 2);
        v.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        let mut b = [0; 4];
        v.read(0x1ffe, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
    }

    #[test]
    fn mappings_arriving_out_of_order_are_all_usable() {
        let t = MapTable::new();
        t.map_anonymous(0x10_0000, 0x1000).unwrap();
        t.map_anonymous(0x0, 0x1000).unwrap();
        t.map_anonymous(0x8000, 0x1000).unwrap();
        let v = t.view();
        for a in [0x0, 0x8000, 0x10_0000] {
            let r = v.slices(a, 0x1000, Dir::ToGuest).map(|s| s.len());
            assert!(
                r.is_ok(),
                "{a:#x} {r:?} {:?}",
                t.maps
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|m| m.range())
                    .collect::<Vec<_>>()
            );
        }
        assert_eq!(v.num_mappings(), 3);
    }

    #[test]
    fn unmap_of_whole_space_does_not_overflow() {
        let t = MapTable::new();
        t.map_anonymous(0xfef0_0000, 0x1000).unwrap();
        t.map_anonymous(0x1000, 0x1000).unwrap();
        assert_eq!(t.unmap(0xfef0_0000, 0xffff_ffff_0110_0000).unwrap(), 1);
        assert_eq!(t.unmap(0x5000, 0x1000).unwrap(), 0);
        assert_eq!(t.len(), 1);
        assert!(t.view().slices(0xfef0_0000, 1, Dir::FromGuest).is_err());
    }

    #[test]
    fn overlapping_and_empty_maps_are_refused() {
        let t = MapTable::new();
        t.map_anonymous(0x1000, 0x2000).unwrap();
        assert!(matches!(
            t.map_anonymous(0x2000, 0x1000),
            Err(MapError::Overlap { .. })
        ));
        assert!(matches!(
            t.map_anonymous(0x9000, 0),
            Err(MapError::Empty(_))
        ));
        assert!(matches!(
            t.map_anonymous(u64::MAX - 10, 0x1000),
            Err(MapError::Wraps { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd_create: a foreign function Miri cannot run")]
    fn read_only_mappings_refuse_device_writes() {
        let t = MapTable::new();
        let f = tempfile_with(0x1000);
        t.map_file(0x4000, 0x1000, f, 0, false).unwrap();
        let v = t.view();
        assert!(v.slices(0x4000, 16, Dir::FromGuest).is_ok());
        assert!(v.write(0x4000, &[1]).is_err());
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd_create: a foreign function Miri cannot run")]
    fn files_that_cannot_back_the_mapping_are_refused() {
        let t = MapTable::new();
        // shorter than the mapping
        assert!(matches!(
            t.map_file(0x4000, 0x2000, tempfile_with(0x1000), 0, true),
            Err(MapError::Unbacked { .. })
        ));
        // the offset pushes the end past the file's
        assert!(matches!(
            t.map_file(0x4000, 0x1000, tempfile_with(0x1000), 0x1000, true),
            Err(MapError::Unbacked { .. })
        ));
        assert!(t.is_empty());
        // a file that can still shrink is served (tests/unsealed.rs: what happens when it does)
        t.map_file(0x8000, 0x1000, memfd(0x1000, false), 0, true)
            .unwrap();
        t.map_file(0x4000, 0x1000, tempfile_with(0x1000), 0, true)
            .unwrap();
    }

    #[test]
    fn a_partial_unmap_is_refused_and_removes_nothing() {
        let t = MapTable::new();
        t.map_anonymous(0x10000, 0x4000).unwrap();
        t.map_window(0x20000, 0x1000).unwrap();
        assert!(t.unmap(0x11000, 0x1000).is_err());
        assert!(t.unmap(0x8000, 0x9000).is_err());
        assert_eq!(t.len(), 2);
        assert!(matches!(
            t.map_anonymous(0x20000, 0x1000),
            Err(MapError::Overlap { .. })
        ));
        assert_eq!(t.unmap(0x10000, 0x11000).unwrap(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn unmap_waits_for_a_view_in_use() {
        let t = Arc::new(MapTable::new());
        t.map_anonymous(0x10000, 0x1000).unwrap();
        let held = t.view();
        let t2 = t.clone();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d2 = done.clone();
        let h = std::thread::spawn(move || {
            t2.unmap(0x10000, 0x1000).unwrap();
            d2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !done.load(Ordering::SeqCst),
            "unmap returned while a view was held"
        );
        drop(held);
        h.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }

    /// A sealed memfd of `size` bytes (what QEMU's memory-backend-memfd hands over).
    fn tempfile_with(size: u64) -> File {
        memfd(size, true)
    }

    fn memfd(size: u64, seal: bool) -> File {
        use std::os::fd::FromRawFd;
        // SAFETY: memfd_create with a static name; the File below owns the descriptor.
        let fd = unsafe { libc::memfd_create(c"dmalab-test".as_ptr(), libc::MFD_ALLOW_SEALING) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        if seal {
            // SAFETY: F_ADD_SEALS on our own memfd.
            let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            assert_eq!(r, 0);
        }
        f
    }
}
