//! A host-side driver for the model, without QEMU: anonymous "guest RAM", a counting interrupt
//! sink, and ring helpers that write descriptors and read completions the way a driver would.
//! Used by the unit tests and the engine benchmark.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Completion, Descriptor};

use crate::device::{Device, DeviceConfig};
use crate::eventlog::EventLog;
use crate::faults::RuleSet;
use crate::interrupts::CountingSink;
use crate::memory::{DmaMemory, MapTable};
use crate::wire;

/// Where the rig's guest RAM starts.
pub const RAM_BASE: u64 = 0x1_0000_0000;
/// Bytes of ring memory reserved per queue at the start of RAM.
pub const RING_AREA: u64 = 0x10_0000;
/// First byte of RAM free for data buffers.
pub const DATA_BASE: u64 = RAM_BASE + RING_AREA * abi::MAX_QUEUES as u64;

/// A device with anonymous guest RAM mapped at [`RAM_BASE`].
pub struct Rig {
    /// The device under test.
    pub dev: Device,
    /// Its DMA map table: the rig's RAM, and whatever a test maps or unmaps.
    pub maps: Arc<MapTable>,
    /// Interrupts it raised, counted per vector.
    pub irq: Arc<CountingSink>,
    /// Its event log.
    pub log: Arc<EventLog>,
    /// Bytes of RAM mapped at [`RAM_BASE`].
    pub ram_size: u64,
}

/// Driver-side state of one queue pair.
pub struct Ring {
    /// The queue pair.
    pub q: usize,
    /// Entries in each ring.
    pub size: u32,
    /// Guest address of the submission ring.
    pub sq_base: u64,
    /// Guest address of the completion ring.
    pub cq_base: u64,
    /// Next free submission slot.
    pub tail: u32,
    /// Next completion to read.
    pub cq_head: u32,
    /// Phase a new completion carries.
    pub phase: bool,
}

impl Rig {
    /// A rig with `queues` queues and `data_size` bytes of data RAM after the ring area.
    pub fn new(queues: usize, data_size: u64) -> Self {
        Self::with_log(queues, data_size, EventLog::disabled())
    }

    /// As [`Rig::new`], with the given event log.
    pub fn with_log(queues: usize, data_size: u64, log: EventLog) -> Self {
        Self::build(queues, data_size, log, RuleSet::default())
    }

    /// As [`Rig::new`], with fault rules (TOML) in force from the start.
    pub fn with_faults(queues: usize, data_size: u64, rules: &str) -> Self {
        Self::build(
            queues,
            data_size,
            EventLog::disabled(),
            RuleSet::from_toml(rules).expect("valid rules"),
        )
    }

    /// As [`Rig::new`], for a device that drives only `bits` address lines (`CAP_DMA_BITS`),
    /// with an event log [`EventLog::since`] can read.
    pub fn with_dma_bits(queues: usize, data_size: u64, bits: u32) -> Self {
        let log = EventLog::to_writer(Box::new(std::io::sink()));
        Self::build_with(queues, data_size, log, RuleSet::default(), bits)
    }

    /// As [`Rig::new`], with its RAM on a memfd as QEMU hands it over: sealed against shrinking
    /// (`memory-backend-memfd`) or not (`memory-backend-file`, `seal=off`), for the engine
    /// bench's comparison of the two.
    pub fn on_memfd(queues: usize, data_size: u64, sealed: bool) -> Self {
        let log = EventLog::disabled();
        Self::build_on(queues, data_size, log, RuleSet::default(), 64, Some(sealed))
    }

    fn build(queues: usize, data_size: u64, log: EventLog, faults: RuleSet) -> Self {
        Self::build_with(queues, data_size, log, faults, 64)
    }

    fn build_with(
        queues: usize,
        data_size: u64,
        log: EventLog,
        faults: RuleSet,
        dma_bits: u32,
    ) -> Self {
        Self::build_on(queues, data_size, log, faults, dma_bits, None)
    }

    /// `memfd`: the RAM on a memfd, sealed or not; `None`: anonymous memory.
    fn build_on(
        queues: usize,
        data_size: u64,
        log: EventLog,
        faults: RuleSet,
        dma_bits: u32,
        memfd: Option<bool>,
    ) -> Self {
        let maps = Arc::new(MapTable::new());
        let ram_size = DATA_BASE - RAM_BASE + data_size;
        match memfd {
            None => maps.map_anonymous(RAM_BASE, ram_size),
            Some(sealed) => maps.map_file(RAM_BASE, ram_size, ram_memfd(ram_size, sealed), 0, true),
        }
        .expect("map rig RAM");
        let irq = CountingSink::new();
        let log = Arc::new(log);
        let cfg = DeviceConfig {
            queues,
            internal_mem: 16 << 20,
            faults,
            dma_bits,
        };
        let dev = Device::new(&cfg, maps.clone(), irq.clone(), log.clone()).expect("device");
        Self {
            dev,
            maps,
            irq,
            log,
            ram_size,
        }
    }

    /// Writes BAR0 register `off`.
    pub fn write32(&self, off: usize, v: u32) {
        self.dev.mmio_write(off as u64, &v.to_le_bytes());
    }

    /// Reads BAR0 register `off`.
    pub fn read32(&self, off: usize) -> u32 {
        let mut b = [0; 4];
        self.dev.mmio_read(off as u64, &mut b);
        u32::from_le_bytes(b)
    }

    /// Guest RAM write (as the CPU would).
    pub fn poke(&self, addr: u64, data: &[u8]) {
        self.maps.view().write(addr, data).expect("rig RAM write");
    }

    /// Guest RAM read.
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.maps.view().read(addr, &mut b).expect("rig RAM read");
        b
    }

    /// Programs and enables queue `q` with rings of `size` entries in its ring area.
    pub fn setup_queue(&self, q: usize, size: u32) -> Ring {
        let sq_base = RAM_BASE + RING_AREA * q as u64;
        let cq_base = sq_base + u64::from(size) * abi::DESC_SIZE as u64;
        assert!(
            cq_base + u64::from(size) * 16 <= sq_base + RING_AREA,
            "ring does not fit"
        );
        self.poke(
            sq_base,
            &vec![0; (cq_base + u64::from(size) * 16 - sq_base) as usize],
        );
        let r = |reg| abi::queue_reg(q, reg);
        self.write32(r(abi::Q_SQ_BASE_LO), sq_base as u32);
        self.write32(r(abi::Q_SQ_BASE_HI), (sq_base >> 32) as u32);
        self.write32(r(abi::Q_CQ_BASE_LO), cq_base as u32);
        self.write32(r(abi::Q_CQ_BASE_HI), (cq_base >> 32) as u32);
        self.write32(r(abi::Q_SIZE), size);
        self.write32(r(abi::Q_CTRL), abi::QCTRL_ENABLE);
        Ring {
            q,
            size,
            sq_base,
            cq_base,
            tail: 0,
            cq_head: 0,
            phase: true,
        }
    }

    /// Writes `descs` at the ring's tail and rings the doorbell once.
    pub fn submit(&self, ring: &mut Ring, descs: &[Descriptor]) {
        for d in descs {
            self.poke(
                ring.sq_base + u64::from(ring.tail) * abi::DESC_SIZE as u64,
                &wire::encode_descriptor(d),
            );
            ring.tail = (ring.tail + 1) % ring.size;
        }
        self.write32(abi::queue_reg(ring.q, abi::Q_SQ_TAIL), ring.tail);
    }

    /// Takes the next completion if the device has posted it.
    pub fn poll(&self, ring: &mut Ring) -> Option<Completion> {
        let addr = ring.cq_base + u64::from(ring.cq_head) * abi::COMPLETION_SIZE as u64;
        let c = wire::decode_completion(&self.peek(addr, 16).try_into().unwrap());
        if (c.phase & 1 != 0) != ring.phase {
            return None;
        }
        ring.cq_head = (ring.cq_head + 1) % ring.size;
        if ring.cq_head == 0 {
            ring.phase = !ring.phase;
        }
        self.write32(abi::queue_reg(ring.q, abi::Q_CQ_HEAD), ring.cq_head);
        Some(c)
    }

    /// Waits (up to 30 s, generous for loaded machines) for `n` completions.
    pub fn wait(&self, ring: &mut Ring, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.poll(ring) {
                Some(c) => out.push(c),
                None if Instant::now() > deadline => {
                    panic!("only {} of {n} completions after 30 s", out.len())
                }
                // Back off instead of spinning: a poller hammering the shared lines would slow
                // the worker it is waiting for.
                None => std::thread::sleep(Duration::from_micros(20)),
            }
        }
        out
    }

    /// Writes `d` into every slot of the ring (for benchmarks that only ring doorbells).
    pub fn prefill(&self, ring: &Ring, d: &Descriptor) {
        for i in 0..u64::from(ring.size) {
            self.poke(
                ring.sq_base + i * abi::DESC_SIZE as u64,
                &wire::encode_descriptor(d),
            );
        }
    }

    /// Hands the next `n` (prefilled) slots to the device with one doorbell.
    pub fn doorbell(&self, ring: &mut Ring, n: u32) {
        ring.tail = (ring.tail + n) % ring.size;
        self.write32(abi::queue_reg(ring.q, abi::Q_SQ_TAIL), ring.tail);
    }

    /// Waits for the next `n` completions the way an interrupt-driven driver would: sleep until
    /// the queue's vector has been raised `irqs` times in all (no polling that would steal the
    /// worker's CPU), then check the last completion's phase, read the statuses and return the
    /// slots with one CQ_HEAD write. Returns how many completed with `CS_OK`.
    pub fn wait_batch_irq(&self, ring: &mut Ring, n: u32, irqs: u64) -> u32 {
        assert!(
            self.irq
                .wait_for(ring.q as u16, irqs, Duration::from_secs(30)),
            "no interrupt in 30 s"
        );
        self.wait_batch(ring, n)
    }

    /// Waits for the next `n` completions by watching the last one's phase, then reads the
    /// statuses and returns the slots with one CQ_HEAD write. Returns how many were `CS_OK`.
    pub fn wait_batch(&self, ring: &mut Ring, n: u32) -> u32 {
        let last = (ring.cq_head + n - 1) % ring.size;
        let phase = if ring.cq_head + n > ring.size {
            !ring.phase
        } else {
            ring.phase
        };
        let at = |i: u32| ring.cq_base + u64::from(i) * abi::COMPLETION_SIZE as u64;
        let view = self.maps.view();
        let mut b = [0u8; 16];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            view.read(at(last), &mut b).expect("rig RAM read");
            if (wire::decode_completion(&b).phase & 1 != 0) == phase {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "batch of {n} did not complete in 30 s"
            );
            std::hint::spin_loop();
        }
        let mut ok = 0;
        for k in 0..n {
            view.read(at((ring.cq_head + k) % ring.size), &mut b)
                .expect("rig RAM read");
            ok += u32::from(wire::decode_completion(&b).status == abi::CS_OK);
        }
        if ring.cq_head + n >= ring.size {
            ring.phase = !ring.phase;
        }
        ring.cq_head = (ring.cq_head + n) % ring.size;
        self.write32(abi::queue_reg(ring.q, abi::Q_CQ_HEAD), ring.cq_head);
        ok
    }

    /// Starts a direct transfer (DMA_* registers) with `d`'s operands and the command word
    /// `cmd` (the opcode, maybe with reserved bits).
    pub fn direct_start(&self, d: &Descriptor, cmd: u32) {
        self.write32(abi::REG_DMA_SRC_LO, d.src as u32);
        self.write32(abi::REG_DMA_SRC_HI, (d.src >> 32) as u32);
        self.write32(abi::REG_DMA_DST_LO, d.dst as u32);
        self.write32(abi::REG_DMA_DST_HI, (d.dst >> 32) as u32);
        self.write32(abi::REG_DMA_LEN, d.len);
        self.write32(abi::REG_DMA_PATTERN, d.pattern);
        self.write32(abi::REG_DMA_CMD, cmd);
    }

    /// Polls DMA_STATUS until DONE, for at most `limit`: the finished transfer's (status,
    /// result, bytes), or `None` if it was still busy.
    pub fn direct_wait(&self, limit: Duration) -> Option<(u16, u32, u32)> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.read32(abi::REG_DMA_STATUS);
            if s & abi::DMA_STATUS_DONE != 0 {
                assert_eq!(s & abi::DMA_STATUS_BUSY, 0, "DONE and BUSY at once");
                return Some((
                    (s >> abi::DMA_STATUS_CODE_SHIFT) as u16,
                    self.read32(abi::REG_DMA_RESULT),
                    self.read32(abi::REG_DMA_BYTES),
                ));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// One direct transfer of `d` (its opcode as the command), waited for up to 30 s.
    pub fn direct(&self, d: &Descriptor) -> (u16, u32, u32) {
        self.direct_start(d, u32::from(d.opcode));
        self.direct_wait(Duration::from_secs(30))
            .expect("direct transfer not done after 30 s")
    }

    /// Submits one descriptor and waits for its completion.
    pub fn run_one(&self, ring: &mut Ring, d: Descriptor) -> Completion {
        self.submit(ring, &[d]);
        self.wait(ring, 1).remove(0)
    }
}

/// A descriptor with the given opcode, length and addresses; other fields zero.
pub fn desc(opcode: u8, tag: u32, len: u32, src: u64, dst: u64) -> Descriptor {
    Descriptor {
        opcode,
        tag,
        len,
        src,
        dst,
        ..Default::default()
    }
}

/// A memfd of `size` bytes for a rig's RAM, sealed against shrinking or not.
#[allow(unsafe_code)]
fn ram_memfd(size: u64, sealed: bool) -> std::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; the File owns the descriptor.
    let f = unsafe {
        let fd = libc::memfd_create(c"dmalab-rig".as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0, "memfd_create");
        std::fs::File::from_raw_fd(fd)
    };
    f.set_len(size).expect("size the rig's memfd");
    if sealed {
        use std::os::fd::AsRawFd;
        // SAFETY: F_ADD_SEALS on our own memfd.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        assert_eq!(r, 0, "seal the rig's memfd");
    }
    f
}
