//! The DMA engine: validates one descriptor completely, then moves its bytes.
//!
//! Validation comes first and is total: opcode, flags, reserved fields, length, SG lists, every
//! guest range against the DMA mappings (writable ones for the destination), internal-memory
//! bounds and source/destination overlap. Only a descriptor that passes all of it touches
//! memory, so a refused descriptor writes nothing at all.

use dmalab_abi::{self as abi, Descriptor, Status};
use vm_memory::{MmapRegion, VolatileMemory, VolatileSlice};

use crate::eventlog::{Event, EventLog};
use crate::memory::{AccessError, Dir, MemView, Slices};
use crate::wire;

/// The device's own memory, the target of WRITE and the source of READ.
pub struct InternalMemory {
    region: MmapRegion<()>,
}

impl InternalMemory {
    /// `size` bytes, zeroed (the OS provides pages lazily, so a large size costs nothing upfront).
    pub fn new(size: usize) -> std::io::Result<Self> {
        let region = MmapRegion::new(size).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self { region })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.region.size() as u64
    }

    fn slice(&self, off: u64, len: u64) -> Result<VolatileSlice<'_>, Status> {
        let end = off.checked_add(len).ok_or(Status::AddrOverflow)?;
        if end > self.size() {
            return Err(Status::InternalRange);
        }
        self.region
            .get_slice(off as usize, len as usize)
            .map_err(|_| Status::InternalRange)
    }

    /// Reads internal memory (tests and the control interface).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), Status> {
        self.slice(off, buf.len() as u64)?.copy_to(buf);
        Ok(())
    }

    /// Zeroes everything (device reset).
    pub fn clear(&self) {
        // Volatile writes: WRITE descriptors may be filling this memory from worker threads
        // right up to the reset, and no reference to it is ever formed.
        let s = self.region.as_volatile_slice();
        let zero = vec![0u8; 1 << 16];
        let mut off = 0;
        while off < s.len() {
            let n = zero.len().min(s.len() - off);
            s.subslice(off, n).unwrap().copy_from(&zero[..n]);
            off += n;
        }
    }
}

/// The descriptor field that names a range of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `src`: the source data (or, with SRC_SG, its list: [`Field::SrcList`]).
    Src,
    /// `dst`: the destination data.
    Dst,
    /// The SG list `src` points at.
    SrcList,
    /// The SG list `dst` points at.
    DstList,
    /// Entry n of the source SG list.
    SrcEntry(u16),
    /// Entry n of the destination SG list.
    DstEntry(u16),
}

impl Field {
    /// The field in the user's terms: the descriptor's field, or for the direct block
    /// (`direct`) the register pair that holds the address.
    pub fn describe(self, direct: bool) -> String {
        match (self, direct) {
            (Field::Src, true) => "DMA_SRC_LO/HI".into(),
            (Field::Dst, true) => "DMA_DST_LO/HI".into(),
            (Field::Src, false) => "src".into(),
            (Field::Dst, false) => "dst".into(),
            (Field::SrcList, _) => "src SG list".into(),
            (Field::DstList, _) => "dst SG list".into(),
            (Field::SrcEntry(n), _) => format!("src SG list entry {n}"),
            (Field::DstEntry(n), _) => format!("dst SG list entry {n}"),
        }
    }
}

/// A guest range the device refused to touch: the field that named it and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAccess {
    pub field: Field,
    pub error: AccessError,
}

impl BadAccess {
    /// "dst 0x1000+0x200 is not mapped for the device (...)".
    pub fn describe(&self, direct: bool) -> String {
        format!("{} {}", self.field.describe(direct), self.error)
    }
}

/// Why validation refused a descriptor: a status, and for a refused guest range which field
/// named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal {
    status: Status,
    access: Option<BadAccess>,
    /// Why, in the datasheet's terms, where the status alone does not say.
    why: Option<&'static str>,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Self {
        Self {
            status,
            access: None,
            why: None,
        }
    }
}

impl Refusal {
    fn because(status: Status, why: &'static str) -> Self {
        Self {
            status,
            access: None,
            why: Some(why),
        }
    }

    fn access(field: Field) -> impl FnOnce(AccessError) -> Refusal {
        move |error| Refusal {
            status: access_status(error),
            access: Some(BadAccess { field, error }),
            why: None,
        }
    }
}

/// What a descriptor came to: the fields of its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub bytes: u32,
    pub result: u32,
    /// The refusal was a DMA outside the mappings (sets `ERR_DMA_VIOLATION`).
    pub violation: bool,
    /// The guest range refused, if that was the reason.
    pub access: Option<BadAccess>,
    /// Otherwise, why the descriptor was refused where its status alone does not say.
    pub why: Option<&'static str>,
}

impl Outcome {
    /// The completion that reports this outcome for the descriptor tagged `tag` (phase 0: the
    /// ring sets it when it writes the entry).
    pub(crate) fn completion(&self, tag: u32) -> dmalab_abi::Completion {
        dmalab_abi::Completion {
            result: self.result,
            bytes: self.bytes,
            tag,
            status: self.status,
            phase: 0,
        }
    }

    /// Nothing moved, status `status` (an injected error status, or a refusal made before the
    /// engine ran).
    pub(crate) fn failed(status: u16) -> Self {
        Self {
            status,
            bytes: 0,
            result: 0,
            violation: false,
            access: None,
            why: None,
        }
    }

    fn ok(bytes: u32, result: u32) -> Self {
        Self {
            status: Status::Ok.raw(),
            bytes,
            result,
            violation: false,
            access: None,
            why: None,
        }
    }
    fn refused(r: Refusal) -> Self {
        Self {
            status: r.status.raw(),
            bytes: 0,
            result: 0,
            violation: r.status == Status::DmaFault,
            access: r.access,
            why: r.why,
        }
    }
}

/// Where in one queue's work a descriptor comes from; used for events.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub view: &'a MemView,
    pub internal: &'a InternalMemory,
    pub log: &'a EventLog,
    pub queue: u16,
}

/// The guest ranges of one side of a transfer (inline for the common single range).
type Ranges = smallvec::SmallVec<[(u64, u64); 2]>;

fn access_status(e: AccessError) -> Status {
    match e {
        AccessError::Overflow { .. } => Status::AddrOverflow,
        AccessError::Unmapped { .. } | AccessError::Gone { .. } => Status::DmaFault,
        AccessError::BeyondReach { .. } => Status::AddrWidth,
    }
}

/// Opcode shape: which sides are guest memory, which may be SG lists.
struct Shape {
    src_guest: bool,
    dst_guest: bool,
    /// The opcode has a source at all (FILL has none).
    has_src: bool,
    has_dst: bool,
}

fn shape(opcode: u8) -> Option<Shape> {
    let op = abi::Opcode::from_raw(opcode)?;
    Some(Shape {
        src_guest: op.src_in_guest(),
        dst_guest: op.dst_in_guest(),
        has_src: op.has_src(),
        has_dst: op.has_dst(),
    })
}

/// Checks the descriptor's own fields (no memory access).
fn check_fields(d: &Descriptor) -> Result<Shape, Status> {
    let sh = shape(d.opcode).ok_or(Status::BadOpcode)?;
    let src_sg = d.flags & abi::DESC_SRC_SG != 0;
    let dst_sg = d.flags & abi::DESC_DST_SG != 0;
    let bad = d.flags & !abi::DESC_FLAGS_VALID != 0
        || d.rsvd0 != 0
        || d.rsvd1 != 0
        || d.rsvd2 != [0; 3]
        || (src_sg && !sh.src_guest)
        || (dst_sg && !sh.dst_guest)
        || (!src_sg && d.src_nseg != 0)
        || (!dst_sg && d.dst_nseg != 0)
        || (d.opcode != abi::OP_FILL && d.pattern != 0)
        || (!sh.has_src && d.src != 0)
        || (!sh.has_dst && d.dst != 0);
    if bad {
        return Err(Status::BadDescriptor);
    }
    if d.len == 0 || d.len > abi::MAX_TRANSFER {
        return Err(Status::BadLength);
    }
    for (sg, n) in [(src_sg, d.src_nseg), (dst_sg, d.dst_nseg)] {
        if sg && (n == 0 || u32::from(n) > abi::MAX_SG_SEGMENTS) {
            return Err(Status::TooManySegments);
        }
    }
    Ok(sh)
}

/// One guest-memory side of a transfer: its ranges and, resolved once, their slices.
struct Side<'m> {
    ranges: Ranges,
    slices: Slices<'m>,
}

/// The guest ranges named by `addr` (direct) or by the SG list at `addr`, checked and resolved.
fn guest_side<'m>(
    ctx: &Ctx<'m>,
    d: &Descriptor,
    addr: u64,
    sg: bool,
    nseg: u16,
    dir: Dir,
) -> Result<Side<'m>, Refusal> {
    let len = u64::from(d.len);
    let from = dir == Dir::FromGuest;
    let ranges = if sg {
        let mut table = vec![0u8; nseg as usize * abi::SG_ENTRY_SIZE];
        let list = if from { Field::SrcList } else { Field::DstList };
        ctx.view
            .read(addr, &mut table)
            .map_err(Refusal::access(list))?;
        ctx.log.record(|| Event::Dma {
            queue: ctx.queue,
            tag: d.tag,
            addr,
            len: table.len() as u64,
            dir: Dir::FromGuest,
        });
        let mut ranges = Ranges::with_capacity(nseg as usize);
        let mut total = 0u64;
        for e in table.chunks_exact(abi::SG_ENTRY_SIZE).map(wire::decode_sg) {
            if e.rsvd != 0 {
                return Err(Refusal::because(
                    Status::BadDescriptor,
                    "an SG entry's reserved word is not 0",
                ));
            }
            if e.len == 0 {
                return Err(Refusal::because(
                    Status::BadLength,
                    "an SG entry has length 0",
                ));
            }
            total += u64::from(e.len);
            ranges.push((e.addr, u64::from(e.len)));
        }
        if total != len {
            return Err(Refusal::because(
                Status::BadLength,
                "its SG list's entry lengths do not add up to the descriptor's LEN",
            ));
        }
        ranges
    } else {
        smallvec::smallvec![(addr, len)]
    };
    let mut slices = Slices::new();
    for (n, &(a, l)) in ranges.iter().enumerate() {
        let field = match (sg, from) {
            (false, true) => Field::Src,
            (false, false) => Field::Dst,
            (true, true) => Field::SrcEntry(n as u16),
            (true, false) => Field::DstEntry(n as u16),
        };
        slices.extend(ctx.view.slices(a, l, dir).map_err(Refusal::access(field))?);
    }
    Ok(Side { ranges, slices })
}

fn overlaps(a: &Ranges, b: &Ranges) -> bool {
    a.iter().any(|&(sa, la)| {
        b.iter().any(|&(sb, lb)| {
            (sa as u128) < sb as u128 + lb as u128 && (sb as u128) < sa as u128 + la as u128
        })
    })
}

/// Everything the descriptor names, validated and resolved.
struct Plan<'m> {
    src: Option<Side<'m>>,
    dst: Option<Side<'m>>,
}

fn plan<'m>(ctx: &Ctx<'m>, d: &Descriptor) -> Result<Plan<'m>, Refusal> {
    let sh = check_fields(d)?;
    let len = u64::from(d.len);
    let src = if sh.src_guest {
        let sg = d.flags & abi::DESC_SRC_SG != 0;
        Some(guest_side(ctx, d, d.src, sg, d.src_nseg, Dir::FromGuest)?)
    } else {
        if sh.has_src {
            ctx.internal.slice(d.src, len)?;
        }
        None
    };
    let dst = if sh.dst_guest {
        let sg = d.flags & abi::DESC_DST_SG != 0;
        Some(guest_side(ctx, d, d.dst, sg, d.dst_nseg, Dir::ToGuest)?)
    } else {
        if sh.has_dst {
            ctx.internal.slice(d.dst, len)?;
        }
        None
    };
    if let (Some(s), Some(t)) = (&src, &dst) {
        if overlaps(&s.ranges, &t.ranges) {
            return Err(Refusal::because(
                Status::Overlap,
                "its source and destination ranges overlap",
            ));
        }
    }
    Ok(Plan { src, dst })
}

/// Records the DMA events of one side.
fn log_side(ctx: &Ctx, tag: u32, side: &Option<Side>, dir: Dir) {
    if let Some(side) = side {
        for &(addr, len) in &side.ranges {
            ctx.log.record(|| Event::Dma {
                queue: ctx.queue,
                tag,
                addr,
                len,
                dir,
            });
        }
    }
}

/// Copies between two slice lists of equal total length.
fn copy_lists(src: &[VolatileSlice], dst: &[VolatileSlice]) {
    let (mut i, mut io, mut j, mut jo) = (0, 0, 0, 0);
    while i < src.len() && j < dst.len() {
        let n = (src[i].len() - io).min(dst[j].len() - jo);
        src[i]
            .subslice(io, n)
            .unwrap()
            .copy_to_volatile_slice(dst[j].subslice(jo, n).unwrap());
        io += n;
        jo += n;
        if io == src[i].len() {
            i += 1;
            io = 0;
        }
        if jo == dst[j].len() {
            j += 1;
            jo = 0;
        }
    }
}

const CHUNK: usize = 64 << 10;

fn fill(dst: &[VolatileSlice], pattern: u32) {
    let p = pattern.to_le_bytes();
    let buf: Vec<u8> = (0..CHUNK + 4).map(|i| p[i % 4]).collect();
    let mut pos = 0usize; // byte index within the whole transfer, for the pattern phase
    for s in dst {
        let mut off = 0;
        while off < s.len() {
            let n = CHUNK.min(s.len() - off);
            let phase = pos % 4;
            s.subslice(off, n)
                .unwrap()
                .copy_from(&buf[phase..phase + n]);
            off += n;
            pos += n;
        }
    }
}

fn checksum(src: &[VolatileSlice]) -> u32 {
    let mut buf = vec![0u8; CHUNK];
    let mut crc = 0u32;
    for s in src {
        let mut off = 0;
        while off < s.len() {
            let n = CHUNK.min(s.len() - off);
            s.subslice(off, n).unwrap().copy_to(&mut buf[..n]);
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            off += n;
        }
    }
    crc
}

/// The refusal of a descriptor whose copy ran past the end of a shrunk backing file: the first
/// range of either side that is now gone ([`AccessError::Gone`]).
fn gone(ctx: &Ctx, plan: &Plan) -> Refusal {
    let sides = [(&plan.src, Dir::FromGuest), (&plan.dst, Dir::ToGuest)];
    for (side, dir) in sides {
        let Some(side) = side else { continue };
        for (n, &(a, l)) in side.ranges.iter().enumerate() {
            if let Err(e @ AccessError::Gone { .. }) = ctx.view.slices(a, l, dir) {
                let field = match (side.ranges.len() > 1, dir) {
                    (false, Dir::FromGuest) => Field::Src,
                    (false, Dir::ToGuest) => Field::Dst,
                    (true, Dir::FromGuest) => Field::SrcEntry(n as u16),
                    (true, Dir::ToGuest) => Field::DstEntry(n as u16),
                };
                return Refusal::access(field)(e);
            }
        }
    }
    Status::DmaFault.into()
}

/// Faults applied while executing (see `faults`): both off by default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tweak {
    /// Move only this many bytes.
    pub short: Option<u32>,
    /// Flip this many bits of the output.
    pub corrupt_bits: u32,
}

/// The first `n` bytes of a slice list.
fn truncate<'m>(list: &[VolatileSlice<'m>], mut n: usize) -> Slices<'m> {
    let mut out = Slices::new();
    for s in list {
        if n == 0 {
            break;
        }
        let k = n.min(s.len());
        out.push(s.subslice(0, k).unwrap());
        n -= k;
    }
    out
}

/// Flips `bits` bits spread over the first `n` bytes of `list`.
fn flip_bits(list: &[VolatileSlice], n: usize, bits: u32) {
    for k in 0..bits as usize {
        let mut at = (k.wrapping_mul(0x9e37_79b1) + 7) % n.max(1);
        for s in list {
            if at < s.len() {
                let b = s.subslice(at, 1).unwrap();
                let mut v = [0u8];
                b.copy_to(&mut v);
                v[0] ^= 1 << (k % 8);
                b.copy_from(&v);
                break;
            }
            at -= s.len();
        }
    }
}

/// Validates and executes one descriptor against `ctx.view`, with injected faults (`tweak`).
pub fn execute(ctx: &Ctx, d: &Descriptor, tweak: Tweak) -> Outcome {
    let mut plan = match plan(ctx, d) {
        Ok(p) => p,
        Err(refusal) => return Outcome::refused(refusal),
    };
    let n = tweak.short.map_or(d.len, |s| s.min(d.len));
    let len = u64::from(n);
    let counters = &ctx.log.counters;
    log_side(ctx, d.tag, &plan.src, Dir::FromGuest);
    log_side(ctx, d.tag, &plan.dst, Dir::ToGuest);
    if n < d.len {
        // an injected short transfer: only the first n bytes of each side move
        for side in [&mut plan.src, &mut plan.dst].into_iter().flatten() {
            side.slices = truncate(&side.slices, n as usize);
        }
    }
    let src = plan.src.as_ref().map(|s| &s.slices[..]);
    let dst = plan.dst.as_ref().map(|s| &s.slices[..]);
    let internal = |off| -> Slices {
        smallvec::smallvec![ctx.internal.slice(off, len).expect("validated by plan")]
    };
    let mut result = 0;
    let faults_before = crate::unsealed::faults();
    match d.opcode {
        abi::OP_COPY => copy_lists(src.unwrap(), dst.unwrap()),
        abi::OP_WRITE => copy_lists(src.unwrap(), &internal(d.dst)),
        abi::OP_READ => copy_lists(&internal(d.src), dst.unwrap()),
        abi::OP_FILL => fill(dst.unwrap(), d.pattern),
        abi::OP_CHECKSUM => result = checksum(src.unwrap()),
        _ => unreachable!("opcode validated by plan"),
    }
    if crate::unsealed::faults() != faults_before {
        // the client shrank a backing file under the copy: name the side that lost memory
        return Outcome::refused(gone(ctx, &plan));
    }
    if tweak.corrupt_bits > 0 {
        // what the operation wrote: internal memory for WRITE, the result for CHECKSUM, else
        // the guest destination (resolved again only here: no copy of it on the common path)
        match d.opcode {
            abi::OP_CHECKSUM => {
                result ^= (1u64 << tweak.corrupt_bits.min(32)).wrapping_sub(1) as u32
            }
            abi::OP_WRITE => flip_bits(&internal(d.dst), n as usize, tweak.corrupt_bits),
            _ => flip_bits(dst.unwrap(), n as usize, tweak.corrupt_bits),
        }
    }
    use std::sync::atomic::Ordering::Relaxed;
    if src.is_some() {
        counters.bytes_from_guest.fetch_add(len, Relaxed);
    }
    if dst.is_some() {
        counters.bytes_to_guest.fetch_add(len, Relaxed);
    }
    Outcome::ok(n, result)
}
