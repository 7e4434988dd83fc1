// SPDX-License-Identifier: GPL-2.0

//! dmalab: driver for the dmalab DMA test device (docs/datasheet.md).
//!
//! What it shows, and which part of the kernel's Rust DMA API (Linux 7.3) it uses where:
//!
//! - Rings (submission, completion, scatter-gather tables) are `dma::Coherent` allocations made
//!   once at probe and accessed with `io_read!`/`io_write!`, i.e. volatile accesses, since the
//!   device writes them concurrently. Ordering to the device is `dma_mb(Write)` before the
//!   doorbell and `dma_mb(Read)` after seeing a completion's phase bit.
//! - Data moves through bounce buffers: a per-queue pool of 4 KiB pages carved out of 64 KiB
//!   `Coherent` blocks. User data is copied in and out. A C driver would map the user's pages
//!   with `dma_map_sg` (streaming DMA); 7.3's Rust API has no streaming map/sync calls, and its
//!   `SGTable` maps a vmalloc buffer once for the device's lifetime without CPU sync points,
//!   which suits a long-lived buffer but not per-request user data. So requests that span more
//!   than one bounce block (or ask for it) get a device scatter-gather list built from the pool's
//!   page addresses instead.
//! - Allocation under a vIOMMU costs one IOMMU map per 4 KiB page, so everything is allocated
//!   at probe and reused; nothing is allocated per request except a kernel bounce vector.
//! - The hot path never reads a BAR register (each read costs ~80 us under TCG): submission is
//!   descriptor writes plus one doorbell write; completion is read from memory in the interrupt
//!   handler, with one completion-head doorbell write per batch.
//! - Teardown obeys the `Coherent` drop contract: the device is reset (and the reset read back)
//!   before any DMA memory is freed, and every waiting caller is released with an error.

use core::pin::Pin;
use kernel::{
    device::Core,
    dma::{Coherent, Device as _, DmaMask},
    fs::File,
    io::{io_project, io_read, io_write, Io},
    irq::{self, IrqReturn},
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    new_condvar, new_mutex, new_spinlock_irq, pci,
    prelude::*,
    sync::{
        atomic::{Atomic, Relaxed},
        barrier::{dma_mb, Read, Write},
        Arc, CondVar, CondVarTimeoutResult, Mutex, SpinLockIrq,
    },
    time::{msecs_to_jiffies, Instant, Monotonic},
    uaccess::{UserPtr, UserSlice},
};

/// Device and ioctl ABI, shared verbatim with the device model and the guest agent.
pub mod abi {
    include!("../../abi/regs.rs");
}
use abi::{Completion, Descriptor, DeviceInfo, QueueStats, Request, SgEntry, Stats, Status};

// SAFETY: the ABI types below are `#[repr(C)]`, made only of integers (every bit pattern is
// valid) and have no padding: their sizes (64, 16, 16, 48, 72 and 64 * MAX_QUEUES + 24 bytes,
// each the sum of its fields) are asserted by `const` items at the end of `abi/regs.rs`, which
// this build compiles with the rest of that file.
unsafe impl kernel::transmute::FromBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Descriptor {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for Completion {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Completion {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for SgEntry {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for SgEntry {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for DeviceInfo {}
// SAFETY: see above.
unsafe impl kernel::transmute::FromBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Request {}
// SAFETY: see above.
unsafe impl kernel::transmute::AsBytes for Stats {}

type Bar0<'a> = pci::Bar<'a, { abi::BAR0_SIZE }>;

/// Ring entries per queue; at most `RING - 1` requests are in flight per queue.
const RING: usize = 64;
/// Request slots per queue (tags index them).
const SLOTS: usize = RING - 1;
/// Bounce-pool page size.
const PAGE: usize = 4096;
/// Bytes per `Coherent` pool block.
const BLOCK: usize = 64 * 1024;
/// Blocks per queue: 4 MiB, enough for two 1 MiB COPYs in flight.
const BLOCKS: usize = 64;
const PAGES_PER_BLOCK: usize = BLOCK / PAGE;
const POOL_PAGES: usize = BLOCKS * PAGES_PER_BLOCK;
const SG_MAX: usize = abi::MAX_SG_SEGMENTS as usize;
const DEFAULT_TIMEOUT_MS: u32 = 5000;
/// Names of the misc devices; the index is the device's number.
const MISC_NAMES: [&CStr; 8] = [
    c"dmalab0", c"dmalab1", c"dmalab2", c"dmalab3", c"dmalab4", c"dmalab5", c"dmalab6", c"dmalab7",
];
static MISC_USED: Atomic<u32> = Atomic::new(0);

/// Per-request slot state.
#[derive(Clone, Copy)]
enum SlotState {
    Free,
    InFlight,
    Done(Completion),
    Failed(Error),
}

#[derive(Clone, Copy)]
struct Slot {
    state: SlotState,
    /// Generation, part of the tag, so a stale completion for an earlier use is recognised.
    generation: u16,
    /// When the doorbell was rung.
    start: Option<Instant<Monotonic>>,
}

/// The DMA-visible rings of one queue.
struct Rings {
    sq: Coherent<[Descriptor]>,
    cq: Coherent<[Completion]>,
    /// Two SG tables (source, destination) of `SG_MAX` entries per slot.
    sg: Coherent<[SgEntry]>,
}

/// Ring state, shared with the interrupt handler.
struct RingState {
    rings: Option<Rings>,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    outstanding: u32,
    slots: [Slot; SLOTS],
    stats: QueueStats,
}

/// Free pages of a pool: bit set = page free.
struct FreeMap([u64; POOL_PAGES / 64]);

impl FreeMap {
    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Takes `n` pages, lowest first (so they tend to be contiguous); the caller checked
    /// `count() >= n`.
    fn take(&mut self, n: usize, out: &mut KVec<u16>) -> Result {
        for (w, word) in self.0.iter_mut().enumerate() {
            while *word != 0 && out.len() < n {
                let b = word.trailing_zeros() as usize;
                *word &= !(1u64 << b);
                out.push((w * 64 + b) as u16, GFP_KERNEL)?;
            }
        }
        Ok(())
    }

    fn give_back(&mut self, pages: &[u16]) {
        for &p in pages {
            self.0[p as usize / 64] |= 1u64 << (p % 64);
        }
    }
}

/// The bounce-buffer pool of one queue.
struct Pool {
    blocks: Option<KVec<Coherent<[u8]>>>,
    free: FreeMap,
}

fn page_dma(blocks: &KVec<Coherent<[u8]>>, p: u16) -> u64 {
    let p = p as usize;
    blocks[p / PAGES_PER_BLOCK].dma_address() + ((p % PAGES_PER_BLOCK) * PAGE) as u64
}

/// One queue pair.
#[pin_data]
struct Queue {
    index: u16,
    #[pin]
    ring: SpinLockIrq<RingState>,
    /// Signalled when a slot changes state or ring space frees up.
    #[pin]
    ring_cv: CondVar,
    #[pin]
    pool: Mutex<Pool>,
    #[pin]
    pool_cv: CondVar,
}

/// State shared by the PCI driver, the interrupt handlers and open files.
struct DevState {
    bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    queues: KVec<Pin<KBox<Queue>>>,
    info: DeviceInfo,
    /// Set at unbind or when the device stops answering: everything fails fast with ENODEV.
    dead: Atomic<bool>,
    /// The device reported a fatal error: the next waiter to leave resets it.
    needs_reset: Atomic<bool>,
    error_irqs: Atomic<u64>,
    error_bits: Atomic<u32>,
    device_resets: Atomic<u64>,
}

/// `*a = f(*a)`, atomically (the kernel's `Atomic` has no fetch_or/fetch_and).
fn atomic_update(a: &Atomic<u32>, f: impl Fn(u32) -> u32) {
    let mut old = a.load(Relaxed);
    while let Err(cur) = a.cmpxchg(old, f(old), Relaxed) {
        old = cur;
    }
}

fn slot_of(tag: u32) -> (usize, u16) {
    ((tag & 0xff) as usize, (tag >> 16) as u16)
}

fn tag_for(slot: usize, generation: u16) -> u32 {
    slot as u32 | (u32::from(generation) << 16)
}

impl DevState {
    fn is_dead(&self) -> bool {
        self.dead.load(Relaxed)
    }

    /// Counts an interrupt for queue `q` and reads its completions, under one lock.
    fn reap(&self, q: &Queue) {
        let mut st = q.ring.lock();
        st.stats.irqs += 1;
        let mut moved = false;
        {
            let st = &mut *st;
            let Some(rings) = st.rings.as_ref() else {
                return;
            };
            loop {
                let i = st.cq_head as usize;
                let phase = io_read!(rings.cq, [panic: i].phase);
                if (phase & 1 != 0) != st.phase {
                    break;
                }
                // The phase word is written last by the device: read the rest only after it.
                dma_mb(Read);
                let c = Completion {
                    result: io_read!(rings.cq, [panic: i].result),
                    bytes: io_read!(rings.cq, [panic: i].bytes),
                    tag: io_read!(rings.cq, [panic: i].tag),
                    status: io_read!(rings.cq, [panic: i].status),
                    phase,
                };
                st.cq_head = (st.cq_head + 1) % RING as u32;
                if st.cq_head == 0 {
                    st.phase = !st.phase;
                }
                moved = true;
                let (s, generation) = slot_of(c.tag);
                match st.slots.get_mut(s) {
                    Some(slot)
                        if matches!(slot.state, SlotState::InFlight)
                            && slot.generation == generation =>
                    {
                        slot.state = SlotState::Done(c);
                        st.outstanding = st.outstanding.saturating_sub(1);
                        st.stats.completed += 1;
                        if c.status != abi::CS_OK {
                            st.stats.errors += 1;
                        }
                    }
                    _ => st.stats.stray_completions += 1,
                }
            }
        }
        if moved {
            if let Some(bar) = self.bar.try_access() {
                let _ =
                    bar.try_write32(st.cq_head, abi::queue_reg(q.index as usize, abi::Q_CQ_HEAD));
            }
            drop(st);
            q.ring_cv.notify_all();
        }
    }

    /// Resets queue `q` in the device and fails every request in flight with `err`.
    /// Called with the ring lock held; the device has stopped all DMA for the queue on return.
    fn reset_queue_locked(&self, q: &Queue, st: &mut RingState, err: Error) {
        let qi = q.index as usize;
        if let Some(bar) = self.bar.try_access() {
            let _ = bar.try_write32(abi::QCTRL_RESET, abi::queue_reg(qi, abi::Q_CTRL));
            // A read is not posted: when it returns, the reset write has been handled.
            match bar.try_read32(abi::REG_DEV_STATUS) {
                // all ones: the device is gone
                Ok(u32::MAX) | Err(_) => self.dead.store(true, Relaxed),
                // halted by a fatal error: only a device reset helps (done without this lock)
                Ok(st) if st & abi::STATUS_FATAL != 0 => self.needs_reset.store(true, Relaxed),
                Ok(_) => {}
            }
        }
        for slot in st.slots.iter_mut() {
            if matches!(slot.state, SlotState::InFlight) {
                slot.state = SlotState::Failed(err);
            }
        }
        st.outstanding = 0;
        st.sq_tail = 0;
        st.cq_head = 0;
        st.phase = true;
        st.stats.resets += 1;
        if let Some(rings) = st.rings.as_ref() {
            for i in 0..RING {
                io_write!(rings.cq, [panic: i].phase, 0);
            }
            if !self.is_dead() {
                if let Some(bar) = self.bar.try_access() {
                    let _ = program_queue(&bar, qi, rings);
                }
            }
        }
    }

    /// Fails everything and frees all DMA memory; the device must have been reset.
    fn release_dma(&self) {
        for q in self.queues.iter() {
            let rings = {
                let mut st = q.ring.lock();
                for slot in st.slots.iter_mut() {
                    if matches!(slot.state, SlotState::InFlight) {
                        slot.state = SlotState::Failed(ENODEV);
                    }
                }
                st.rings.take()
            };
            q.ring_cv.notify_all();
            q.pool_cv.notify_all();
            // `dma_free_attrs` must not run with interrupts off: drop outside the spinlock.
            drop(rings);
            let blocks = q.pool.lock().blocks.take();
            drop(blocks);
        }
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for (i, q) in self.queues.iter().enumerate() {
            s.queue[i] = q.ring.lock().stats;
        }
        s.error_irqs = self.error_irqs.load(Relaxed);
        s.error_bits = u64::from(self.error_bits.load(Relaxed));
        s.device_resets = self.device_resets.load(Relaxed);
        s
    }
}

/// Writes queue `qi`'s ring registers and enables it.
fn program_queue(bar: &Bar0<'_>, qi: usize, rings: &Rings) -> Result {
    let r = |reg| abi::queue_reg(qi, reg);
    let (sq, cq) = (rings.sq.dma_address(), rings.cq.dma_address());
    bar.try_write32(sq as u32, r(abi::Q_SQ_BASE_LO))?;
    bar.try_write32((sq >> 32) as u32, r(abi::Q_SQ_BASE_HI))?;
    bar.try_write32(cq as u32, r(abi::Q_CQ_BASE_LO))?;
    bar.try_write32((cq >> 32) as u32, r(abi::Q_CQ_BASE_HI))?;
    bar.try_write32(RING as u32, r(abi::Q_SIZE))?;
    bar.try_write32(abi::QCTRL_ENABLE, r(abi::Q_CTRL))?;
    Ok(())
}

/// DMA segments (address, length) of one side of a request.
type Segments = KVec<(u64, u32)>;

/// Where a request's guest-memory side lives in the bounce pool.
struct Side {
    pages: KVec<u16>,
}

/// Segments (DMA address, length) covering `len` bytes of `pages`, adjacent pages merged, then
/// split until there are at least `want` segments.
fn segments(
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
    Ok(segs)
}

/// Sleeps on `cv` until woken: `EBUSY` once `timeout_ms` has passed, `EINTR` on a signal.
fn wait_for_resources<T: ?Sized, B: kernel::sync::lock::Backend>(
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

/// Copies `data` into the pool pages of a side.
fn copy_in(blocks: &KVec<Coherent<[u8]>>, pages: &[u16], data: &[u8]) -> Result {
    for (i, chunk) in data.chunks(PAGE).enumerate() {
        let p = pages[i] as usize;
        let off = (p % PAGES_PER_BLOCK) * PAGE;
        io_project!(blocks[p / PAGES_PER_BLOCK], [try: off..off + chunk.len()])
            .copy_from_slice(chunk);
    }
    Ok(())
}

impl Queue {
    fn submit(&self, dev: &DevState, req: &mut Request) -> Result {
        let op = req.opcode;
        let len = req.len as usize;
        let (src_guest, dst_guest) = match op {
            abi::OP_COPY => (true, true),
            abi::OP_WRITE | abi::OP_CHECKSUM => (true, false),
            abi::OP_READ | abi::OP_FILL => (false, true),
            _ => return Err(EINVAL),
        };
        if len == 0 || req.len > abi::MAX_REQUEST || u32::from(req.nseg) > abi::MAX_SG_SEGMENTS {
            return Err(EINVAL);
        }
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            req.timeout_ms
        };
        if dev.is_dead() {
            return Err(ENODEV);
        }
        // User data first, before any lock: a fault here must not stall the queue.
        let mut staged = KVVec::new();
        if src_guest {
            staged.resize(len, 0, GFP_KERNEL)?;
            UserSlice::new(UserPtr::from_addr(req.src as usize), len)
                .reader()
                .read_slice(&mut staged)?;
        }
        let npages = len.div_ceil(PAGE);
        let need = npages * (usize::from(src_guest) + usize::from(dst_guest));
        let (mut src, mut dst) = (Side { pages: KVec::new() }, Side { pages: KVec::new() });
        let want = usize::from(req.nseg).max(1);
        let (src_segs, dst_segs) = {
            let mut guard = self.pool.lock();
            while guard.blocks.is_some() && guard.free.count() < need {
                wait_for_resources(&self.pool_cv, &mut guard, timeout_ms)?;
            }
            let Pool { blocks, free } = &mut *guard;
            let blocks = blocks.as_ref().ok_or(ENODEV)?;
            let mut build = || -> Result<(Segments, Segments)> {
                if src_guest {
                    free.take(npages, &mut src.pages)?;
                    copy_in(blocks, &src.pages, &staged)?;
                }
                if dst_guest {
                    free.take(npages, &mut dst.pages)?;
                }
                let s = if src_guest {
                    segments(blocks, &src.pages, len, want)?
                } else {
                    KVec::new()
                };
                let d = if dst_guest {
                    segments(blocks, &dst.pages, len, want)?
                } else {
                    KVec::new()
                };
                Ok((s, d))
            };
            match build() {
                Ok(v) => v,
                Err(e) => {
                    free.give_back(&src.pages);
                    free.give_back(&dst.pages);
                    return Err(e);
                }
            }
        };
        if src_segs.len() > SG_MAX || dst_segs.len() > SG_MAX {
            self.release(&src, &dst);
            return Err(EINVAL);
        }
        req.segments = src_segs.len().max(dst_segs.len()) as u32;

        let result = self.post_and_wait(dev, req, &src_segs, &dst_segs, timeout_ms);
        let out = match result {
            Ok((c, ns)) => {
                req.latency_ns = ns;
                req.status = u32::from(c.status);
                req.bytes = c.bytes;
                req.result = c.result;
                if c.status == abi::CS_OK && dst_guest && req.dst != 0 {
                    self.copy_out(req, &dst, len)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        self.release(&src, &dst);
        out
    }

    /// Copies the device's output from the pool to the user's destination buffer.
    fn copy_out(&self, req: &Request, dst: &Side, len: usize) -> Result {
        let pool = self.pool.lock();
        let blocks = pool.blocks.as_ref().ok_or(ENODEV)?;
        let mut w = UserSlice::new(UserPtr::from_addr(req.dst as usize), len).writer();
        let mut left = len;
        for &p in dst.pages.iter() {
            let n = left.min(PAGE);
            let p = p as usize;
            w.write_dma(
                &blocks[p / PAGES_PER_BLOCK],
                (p % PAGES_PER_BLOCK) * PAGE,
                n,
            )?;
            left -= n;
        }
        Ok(())
    }

    fn release(&self, src: &Side, dst: &Side) {
        let mut pool = self.pool.lock();
        pool.free.give_back(&src.pages);
        pool.free.give_back(&dst.pages);
        drop(pool);
        self.pool_cv.notify_all();
    }

    /// Writes the descriptor (and SG tables), rings the doorbell and waits for the completion.
    fn post_and_wait(
        &self,
        dev: &DevState,
        req: &mut Request,
        src: &[(u64, u32)],
        dst: &[(u64, u32)],
        timeout_ms: u32,
    ) -> Result<(Completion, u64)> {
        let qi = self.index as usize;
        let mut st = self.ring.lock();
        // wait for a free slot and ring space
        let slot = loop {
            if dev.is_dead() || st.rings.is_none() {
                return Err(ENODEV);
            }
            if st.outstanding < SLOTS as u32 {
                if let Some(i) = st
                    .slots
                    .iter()
                    .position(|s| matches!(s.state, SlotState::Free))
                {
                    break i;
                }
            }
            wait_for_resources(&self.ring_cv, &mut st, timeout_ms)?;
        };
        let generation = st.slots[slot].generation.wrapping_add(1);
        let tag = tag_for(slot, generation);
        req.tag = tag;
        {
            let st = &mut *st;
            let rings = st.rings.as_ref().ok_or(ENODEV)?;
            let mut d = Descriptor {
                opcode: req.opcode,
                tag,
                len: req.len,
                ..Default::default()
            };
            let mut sg_side = |segs: &[(u64, u32)],
                               side: usize,
                               flag: u8,
                               nseg: &mut u16,
                               addr: &mut u64|
             -> Result {
                if segs.len() == 1 {
                    *addr = segs[0].0;
                    return Ok(());
                }
                let base = (slot * 2 + side) * SG_MAX;
                for (k, &(a, l)) in segs.iter().enumerate() {
                    io_write!(rings.sg, [try: base + k].addr, a);
                    io_write!(rings.sg, [try: base + k].len, l);
                    io_write!(rings.sg, [try: base + k].rsvd, 0);
                }
                d.flags |= flag;
                *nseg = segs.len() as u16;
                *addr = rings.sg.dma_address() + (base * abi::SG_ENTRY_SIZE) as u64;
                Ok(())
            };
            let (mut s_n, mut d_n, mut s_a, mut d_a) = (0, 0, 0, 0);
            if !src.is_empty() {
                sg_side(src, 0, abi::DESC_SRC_SG, &mut s_n, &mut s_a)?;
            }
            if !dst.is_empty() {
                sg_side(dst, 1, abi::DESC_DST_SG, &mut d_n, &mut d_a)?;
            }
            match req.opcode {
                abi::OP_WRITE => d_a = req.dev_offset,
                abi::OP_READ => s_a = req.dev_offset,
                abi::OP_FILL => d.pattern = req.pattern,
                _ => {}
            }
            d.src = s_a;
            d.dst = d_a;
            d.src_nseg = s_n;
            d.dst_nseg = d_n;
            let i = st.sq_tail as usize;
            io_write!(rings.sq, [try: i].opcode, d.opcode);
            io_write!(rings.sq, [try: i].flags, d.flags);
            io_write!(rings.sq, [try: i].src_nseg, d.src_nseg);
            io_write!(rings.sq, [try: i].dst_nseg, d.dst_nseg);
            io_write!(rings.sq, [try: i].rsvd0, 0);
            io_write!(rings.sq, [try: i].tag, d.tag);
            io_write!(rings.sq, [try: i].len, d.len);
            io_write!(rings.sq, [try: i].src, d.src);
            io_write!(rings.sq, [try: i].dst, d.dst);
            io_write!(rings.sq, [try: i].pattern, d.pattern);
            io_write!(rings.sq, [try: i].rsvd1, 0);
            for k in 0..3 {
                io_write!(rings.sq, [try: i].rsvd2[try: k], 0);
            }
            st.sq_tail = (st.sq_tail + 1) % RING as u32;
            st.outstanding += 1;
            st.slots[slot] = Slot {
                state: SlotState::InFlight,
                generation,
                start: Some(Instant::now()),
            };
            st.stats.submitted += 1;
            // Descriptor and SG tables must be visible to the device before the doorbell.
            dma_mb(Write);
            let bar = dev.bar.try_access().ok_or(ENODEV)?;
            bar.try_write32(st.sq_tail, abi::queue_reg(qi, abi::Q_SQ_TAIL))?;
        }
        // wait for the completion
        let mut timed_out = false;
        let result = loop {
            match st.slots[slot].state {
                SlotState::Done(c) => break Ok(c),
                SlotState::Failed(e) => break Err(e),
                SlotState::Free => break Err(EIO),
                SlotState::InFlight if timed_out => {
                    // No completion in time: reset the queue, failing everything in flight.
                    st.stats.timeouts += 1;
                    dev.reset_queue_locked(self, &mut st, ETIMEDOUT);
                }
                SlotState::InFlight => {
                    let res = self
                        .ring_cv
                        .wait_interruptible_timeout(&mut st, msecs_to_jiffies(timeout_ms));
                    match res {
                        CondVarTimeoutResult::Timeout => timed_out = true,
                        // The device may still be writing our pages: only a queue reset makes
                        // it safe to give them back, so a signal costs the queue a reset.
                        CondVarTimeoutResult::Signal { .. } => {
                            dev.reset_queue_locked(self, &mut st, EINTR);
                        }
                        CondVarTimeoutResult::Woken { .. } => {}
                    }
                }
            }
        };
        let start = st.slots[slot].start.take();
        st.slots[slot].state = SlotState::Free;
        if let Ok(c) = &result {
            if c.status == abi::CS_OK {
                st.stats.bytes += u64::from(c.bytes);
            }
        }
        drop(st);
        self.ring_cv.notify_all();
        if dev.needs_reset.cmpxchg(true, false, Relaxed).is_ok() {
            // A fatal error halted every queue: reset the device and reprogram the queues.
            let _ = reset_device(dev);
        }
        let ns = start.map_or(0, |t| t.elapsed().as_nanos());
        result.map(|c| (c, u64::try_from(ns).unwrap_or(0)))
    }
}

/// Interrupt handler of one queue's vector.
struct QueueIrq {
    dev: Arc<DevState>,
    queue: usize,
}

impl irq::Handler for QueueIrq {
    fn handle(&self) -> IrqReturn {
        let q = &self.dev.queues[self.queue];
        self.dev.reap(q);
        IrqReturn::Handled
    }
}

/// Handler of the error vector, or of the single vector in MSI/INTx mode (`all`).
struct SharedIrq {
    dev: Arc<DevState>,
    /// One vector for everything: read the cause register to see what happened.
    all: bool,
}

impl irq::Handler for SharedIrq {
    fn handle(&self) -> IrqReturn {
        let Some(bar) = self.dev.bar.try_access() else {
            return IrqReturn::None;
        };
        let cause = if self.all {
            let c = bar.try_read32(abi::REG_IRQ_CAUSE).unwrap_or(0);
            if c == 0 || c == u32::MAX {
                return IrqReturn::None;
            }
            let _ = bar.try_write32(c, abi::REG_IRQ_CAUSE);
            c
        } else {
            abi::IRQ_CAUSE_ERROR
        };
        if cause & abi::IRQ_CAUSE_ERROR != 0 {
            self.dev.error_irqs.fetch_add(1, Relaxed);
            let bits = bar.try_read32(abi::REG_ERROR).unwrap_or(0);
            if bits != 0 && bits != u32::MAX {
                atomic_update(&self.dev.error_bits, |v| v | bits);
                let _ = bar.try_write32(bits, abi::REG_ERROR);
            }
        }
        drop(bar);
        for (i, q) in self.dev.queues.iter().enumerate() {
            if cause & abi::irq_cause_queue(i) != 0 {
                self.dev.reap(q);
            }
        }
        IrqReturn::Handled
    }
}

/// Per open file of `/dev/dmalabN`.
struct DmalabFile {
    dev: Arc<DevState>,
}

/// Holds the misc registration next to the state so `open` can find it.
#[pin_data]
struct MiscHolder {
    dev: Arc<DevState>,
    index: usize,
    #[pin]
    reg: MiscDeviceRegistration<DmalabFile>,
}

#[vtable]
impl MiscDevice for DmalabFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        // SAFETY: every `MiscDeviceRegistration<DmalabFile>` is the `reg` field of a pinned
        // `MiscHolder` (built only in `probe`); misc_open() holds misc_mtx, so the registration
        // cannot be deregistered and freed during this call.
        let holder = unsafe {
            &*kernel::container_of!(core::ptr::from_ref(misc).cast_mut(), MiscHolder, reg)
        };
        Ok(KBox::pin(
            DmalabFile {
                dev: holder.dev.clone(),
            },
            GFP_KERNEL,
        )?)
    }

    fn ioctl(me: Pin<&DmalabFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let dev = &me.dev;
        match cmd {
            abi::IOC_INFO => {
                let w = UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<DeviceInfo>());
                w.writer().write(&dev.info)?;
            }
            abi::IOC_SUBMIT => {
                let (mut r, mut w) =
                    UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<Request>())
                        .reader_writer();
                let mut req: Request = r.read()?;
                let q = dev.queues.get(req.queue as usize).ok_or(EINVAL)?;
                let result = q.submit(dev, &mut req);
                // The request goes back to the caller in every case, so the tag (0 if nothing
                // was submitted) and the status are visible next to the errno.
                w.write(&req)?;
                result?;
                status_to_result(req.status)?;
            }
            abi::IOC_STATS => {
                let w = UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<Stats>());
                w.writer().write(&dev.stats())?;
            }
            abi::IOC_RESET => reset_device(dev)?,
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// The errno a device completion status becomes (0 for success).
fn status_to_result(status: u32) -> Result {
    let status = u16::try_from(status).ok().and_then(Status::from_raw);
    match status {
        Some(Status::Ok) => Ok(()),
        Some(Status::InternalRange | Status::AddrOverflow) => Err(ERANGE),
        Some(
            Status::BadOpcode
            | Status::BadLength
            | Status::TooManySegments
            | Status::Overlap
            | Status::BadDescriptor,
        ) => Err(EINVAL),
        // DMA_FAULT, DEVICE_ERROR and anything the device should not have said
        Some(Status::DmaFault | Status::DeviceError) | None => Err(EIO),
    }
}

/// Device reset from user space: every queue is reset and reprogrammed.
fn reset_device(dev: &DevState) -> Result {
    for q in dev.queues.iter() {
        let mut st = q.ring.lock();
        dev.reset_queue_locked(q, &mut st, ECANCELED);
        drop(st);
        q.ring_cv.notify_all();
    }
    let bar = dev.bar.try_access().ok_or(ENODEV)?;
    // The queues are halted; now reset the rest (errors, coalescing, internal memory).
    bar.try_write32(abi::CTRL_RESET, abi::REG_DEV_CTRL)?;
    let _ = bar.try_read32(abi::REG_DEV_STATUS)?;
    dev.device_resets.fetch_add(1, Relaxed);
    for (i, q) in dev.queues.iter().enumerate() {
        let st = q.ring.lock();
        if let Some(rings) = st.rings.as_ref() {
            program_queue(&bar, i, rings)?;
        }
    }
    Ok(())
}

struct DmalabDriver;

/// Everything a binding owns. Field order is drop order: the misc device goes first (no new
/// opens), then the interrupt handlers, then the vectors they borrow; `Drop` has already reset
/// the device and freed the DMA memory by then.
struct DmalabData<'bound> {
    _misc: Pin<KBox<MiscHolder>>,
    _irqs: KVec<Pin<KBox<irq::Registration<'bound, IrqHandler>>>>,
    _vectors: KBox<pci::IrqVectorRegistration<'bound>>,
    dev: Arc<DevState>,
    pdev: &'bound pci::Device,
}

/// The handler type of every vector.
enum IrqHandler {
    Queue(QueueIrq),
    Shared(SharedIrq),
}

impl irq::Handler for IrqHandler {
    fn handle(&self) -> IrqReturn {
        match self {
            IrqHandler::Queue(h) => h.handle(),
            IrqHandler::Shared(h) => h.handle(),
        }
    }
}

kernel::pci_device_table!(
    PCI_TABLE,
    <DmalabDriver as pci::Driver>::IdInfo,
    [(
        pci::DeviceId::from_id(pci::Vendor::REDHAT, abi::PCI_DEVICE_ID as u32),
        ()
    )]
);

fn alloc_queue(pdev: &pci::Device<Core<'_>>, index: u16) -> Result<Pin<KBox<Queue>>> {
    let dev = pdev.as_ref();
    let rings = Rings {
        sq: Coherent::<Descriptor>::zeroed_slice(dev, RING, GFP_KERNEL)?,
        cq: Coherent::<Completion>::zeroed_slice(dev, RING, GFP_KERNEL)?,
        sg: Coherent::<SgEntry>::zeroed_slice(dev, SLOTS * 2 * SG_MAX, GFP_KERNEL)?,
    };
    let mut blocks = KVec::with_capacity(BLOCKS, GFP_KERNEL)?;
    for _ in 0..BLOCKS {
        blocks.push(
            Coherent::<u8>::zeroed_slice(dev, BLOCK, GFP_KERNEL)?,
            GFP_KERNEL,
        )?;
    }
    let ring = RingState {
        rings: Some(rings),
        sq_tail: 0,
        cq_head: 0,
        phase: true,
        outstanding: 0,
        slots: [Slot {
            state: SlotState::Free,
            generation: 0,
            start: None,
        }; SLOTS],
        stats: QueueStats::default(),
    };
    let pool = Pool {
        blocks: Some(blocks),
        free: FreeMap([u64::MAX; POOL_PAGES / 64]),
    };
    KBox::pin_init(
        pin_init!(Queue {
            index,
            ring <- new_spinlock_irq!(ring),
            ring_cv <- new_condvar!(),
            pool <- new_mutex!(pool),
            pool_cv <- new_condvar!(),
        }),
        GFP_KERNEL,
    )
}

impl DmalabDriver {
    fn do_probe<'bound>(pdev: &'bound pci::Device<Core<'_>>) -> Result<DmalabData<'bound>> {
        if pdev.vendor_id() != pci::Vendor::REDHAT || pdev.device_id() != abi::PCI_DEVICE_ID {
            return Err(ENODEV);
        }
        pdev.enable_device_mem()?;
        pdev.set_master();
        // SAFETY: no DMA allocations or mappings exist for this device yet.
        let mask_bits = match unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>()) } {
            Ok(()) => 64,
            Err(_) => {
                // SAFETY: as above.
                unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<32>())? };
                32
            }
        };
        let bar = pdev.iomap_region_sized::<{ abi::BAR0_SIZE }>(0, c"dmalab")?;
        let magic = bar.read32(abi::REG_ID);
        let version = bar.read32(abi::REG_VERSION);
        if magic != abi::DEVICE_MAGIC {
            dev_err!(
                pdev,
                "not a dmalab device: ID register reads {:#x}\n",
                magic
            );
            return Err(ENODEV);
        }
        if (version >> 16) as u16 != abi::VERSION_MAJOR {
            dev_err!(
                pdev,
                "device interface v{}.{} is not supported (driver: v{}.x)\n",
                version >> 16,
                version & 0xffff,
                abi::VERSION_MAJOR
            );
            return Err(ENODEV);
        }
        // Start from a known state (an earlier driver may have left queues running).
        bar.write32(abi::CTRL_RESET, abi::REG_DEV_CTRL);
        let status = bar.read32(abi::REG_DEV_STATUS);
        if status & abi::STATUS_READY == 0 {
            dev_err!(
                pdev,
                "device not ready after reset (status {:#x})\n",
                status
            );
            return Err(EIO);
        }
        let nq = (bar.read32(abi::REG_CAP_QUEUES) as usize).min(abi::MAX_QUEUES);
        if nq == 0
            || bar.read32(abi::REG_CAP_RING) < RING as u32
            || bar.read32(abi::REG_CAP_SG) < SG_MAX as u32
        {
            dev_err!(pdev, "device capabilities too small for this driver\n");
            return Err(ENODEV);
        }
        let mem_size = u64::from(bar.read32(abi::REG_MEM_SIZE_LO))
            | (u64::from(bar.read32(abi::REG_MEM_SIZE_HI)) << 32);

        let vectors = KBox::new(
            pdev.alloc_irq_vectors(
                1,
                (nq + 1) as u32,
                pci::IrqTypes::default()
                    .with(pci::IrqType::MsiX)
                    .with(pci::IrqType::Msi)
                    .with(pci::IrqType::Intx),
            )?,
            GFP_KERNEL,
        )?;
        // SAFETY: the registration lives in its own heap allocation that is never moved out of
        // the box and is stored in `DmalabData` after `_irqs`, so every `irq::Registration`
        // borrowing it is dropped (free_irq) before it is (pci_free_irq_vectors).
        let vref: &'bound pci::IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref::<pci::IrqVectorRegistration<'bound>>(&*vectors) };
        let nvec = vectors.len();
        let irq_type = vref.index(0)?.irq_type();
        let per_queue = nvec == nq + 1 && matches!(irq_type, pci::IrqType::MsiX);
        let irq_mode = match irq_type {
            pci::IrqType::MsiX => abi::IRQ_MODE_MSIX,
            pci::IrqType::Msi => abi::IRQ_MODE_MSI,
            pci::IrqType::Intx => abi::IRQ_MODE_INTX,
        };

        let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
        for i in 0..nq {
            queues.push(alloc_queue(pdev, i as u16)?, GFP_KERNEL)?;
        }
        let misc_index = loop {
            let used = MISC_USED.load(Relaxed);
            let free = (!used).trailing_zeros() as usize;
            if free >= MISC_NAMES.len() {
                return Err(EBUSY);
            }
            if MISC_USED.cmpxchg(used, used | (1 << free), Relaxed).is_ok() {
                break free;
            }
        };
        let info = DeviceInfo {
            magic,
            version,
            queues: nq as u32,
            vectors: nvec as u32,
            irq_mode,
            ring_size: RING as u32,
            max_request: abi::MAX_REQUEST,
            dma_mask_bits: mask_bits,
            mem_size,
            bdf: u32::from(pdev.dev_id()),
            pool_bytes: (BLOCKS * BLOCK) as u32,
        };
        let bar = bar.into_devres()?;
        let dev = Arc::new(
            DevState {
                bar,
                queues,
                info,
                dead: Atomic::new(false),
                needs_reset: Atomic::new(false),
                error_irqs: Atomic::new(0),
                error_bits: Atomic::new(0u32),
                device_resets: Atomic::new(0),
            },
            GFP_KERNEL,
        );
        let dev = match dev {
            Ok(d) => d,
            Err(e) => {
                atomic_update(&MISC_USED, |v| v & !(1 << misc_index));
                return Err(e.into());
            }
        };

        let mut irqs = KVec::with_capacity(nvec, GFP_KERNEL)?;
        for k in 0..nvec {
            let handler = if per_queue && k < nq {
                IrqHandler::Queue(QueueIrq {
                    dev: dev.clone(),
                    queue: k,
                })
            } else {
                IrqHandler::Shared(SharedIrq {
                    dev: dev.clone(),
                    all: !per_queue,
                })
            };
            let req: irq::IrqRequest<'bound> = vref.index(k)?.into();
            let flags = if per_queue {
                irq::Flags::TRIGGER_NONE
            } else {
                irq::Flags::SHARED
            };
            // SAFETY: the registration is stored in `DmalabData` and dropped, never forgotten.
            let reg = KBox::pin_init(
                unsafe { irq::Registration::new(req, flags, c"dmalab", Ok::<_, Error>(handler)) },
                GFP_KERNEL,
            )?;
            irqs.push(reg, GFP_KERNEL)?;
        }

        if let Some(bar) = dev.bar.try_access() {
            for q in dev.queues.iter() {
                let st = q.ring.lock();
                if let Some(rings) = st.rings.as_ref() {
                    program_queue(&bar, q.index as usize, rings)?;
                }
            }
        }

        let for_misc = dev.clone();
        let misc = KBox::pin_init(
            try_pin_init!(MiscHolder {
                dev: for_misc,
                index: misc_index,
                reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name: MISC_NAMES[misc_index] }),
            }),
            GFP_KERNEL,
        );
        let misc = match misc {
            Ok(m) => m,
            Err(e) => {
                atomic_update(&MISC_USED, |v| v & !(1 << misc_index));
                halt_and_release(&dev);
                return Err(e);
            }
        };
        dev_info!(
            pdev,
            "dmalab v{}.{} id={:#x}: {} queues x {} entries, {} {} vector(s), {}-bit DMA, {} KiB internal memory, /dev/{}\n",
            version >> 16,
            version & 0xffff,
            magic,
            nq,
            RING,
            nvec,
            match irq_mode {
                abi::IRQ_MODE_MSIX => "MSI-X",
                abi::IRQ_MODE_MSI => "MSI",
                _ => "INTx",
            },
            mask_bits,
            mem_size / 1024,
            MISC_NAMES[misc_index].to_str().unwrap_or("?")
        );
        Ok(DmalabData {
            _misc: misc,
            _irqs: irqs,
            _vectors: vectors,
            dev,
            pdev,
        })
    }
}

/// Stops all device DMA (reset, read back), fails every caller, frees all DMA memory.
fn halt_and_release(dev: &DevState) {
    dev.dead.store(true, Relaxed);
    if let Some(bar) = dev.bar.try_access() {
        let _ = bar.try_write32(abi::CTRL_RESET, abi::REG_DEV_CTRL);
        // Non-posted: when this returns the device has finished the reset and does no more DMA.
        let _ = bar.try_read32(abi::REG_DEV_STATUS);
    }
    dev.release_dma();
}

impl pci::Driver for DmalabDriver {
    type IdInfo = ();
    type Data<'bound> = DmalabData<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        Self::do_probe(pdev)
    }
}

impl Drop for DmalabData<'_> {
    fn drop(&mut self) {
        halt_and_release(&self.dev);
        atomic_update(&MISC_USED, |v| v & !(1 << self._misc.index));
        let s = self.dev.stats();
        let (sub, done, to) = s.queue.iter().fold((0, 0, 0), |a, q| {
            (a.0 + q.submitted, a.1 + q.completed, a.2 + q.timeouts)
        });
        dev_info!(self.pdev, "dmalab unbound: {} submitted, {} completed, {} timed out; device halted, DMA memory freed\n",
                  sub, done, to);
    }
}

kernel::module_pci_driver! {
    type: DmalabDriver,
    name: "dmalab",
    authors: ["dmalab developers"],
    description: "Driver for the dmalab DMA test device",
    license: "GPL v2",
}
