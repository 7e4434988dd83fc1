//! Fuzz target bodies, shared by the coverage-guided fuzzers in `fuzz/` and by `cargo test`,
//! which replays every input of the checked-in corpus (`fuzz/corpus/<target>/`), so each crash
//! a fuzzer finds becomes a regression test once its input is added there.
//!
//! Each body panics on a violated property; libFuzzer reports a panic (and a hang, through its
//! `-timeout`) as a crash.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dmalab_abi as abi;

use crate::device::{Device, DeviceConfig};
use crate::eventlog::EventLog;
use crate::faults::{Injector, Occurrence, RuleSet};
use crate::interrupts::CountingSink;
use crate::memory::{DmaMemory, MapTable};
use crate::vfio_server::{EventfdSink, VfioDevice};
use crate::vfio_user::Server;

/// Where the model's guest RAM starts.
pub const RAM_BASE: u64 = 0x1_0000_0000;
/// The size of the model's guest RAM.
pub const RAM_SIZE: u64 = 64 << 10;
/// The byte every untouched RAM byte holds.
pub const CANARY: u8 = 0xa5;

/// A byte reader that never fails: past the end it yields zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let n = N.min(self.0.len());
        b[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        b
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    /// A guest address: mostly inside RAM (so DMA happens), sometimes anything at all.
    fn addr(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => u64::from_le_bytes(self.bytes()),
            1 => RAM_BASE + RAM_SIZE - u64::from(self.u16() % 512),
            _ => RAM_BASE + u64::from(self.u32()) % RAM_SIZE,
        }
    }
    /// A length: mostly small, sometimes anything.
    fn len(&mut self) -> u32 {
        match self.u8() % 4 {
            0 => self.u32(),
            _ => u32::from(self.u16()),
        }
    }
}

/// Guest RAM with a shadow of what the CPU (the harness) wrote and the set of bytes the device
/// is allowed to write: the destinations of every descriptor and SG entry the harness wrote,
/// and every completion ring it programmed.
struct Guest {
    maps: Arc<MapTable>,
    shadow: Vec<u8>,
    allowed: BTreeSet<(u64, u64)>,
}

impl Guest {
    /// Canaries everywhere again; nothing allowed.
    fn reset(&mut self) {
        self.shadow.fill(CANARY);
        self.allowed.clear();
        self.maps
            .view()
            .write(RAM_BASE, &self.shadow)
            .expect("RAM reset");
    }

    fn poke(&mut self, addr: u64, data: &[u8]) {
        let Some(off) = addr.checked_sub(RAM_BASE) else {
            return;
        };
        if data.is_empty() || off.saturating_add(data.len() as u64) > RAM_SIZE {
            return;
        }
        self.maps.view().write(addr, data).expect("RAM write");
        self.shadow[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    fn allow(&mut self, addr: u64, len: u64) {
        self.allowed.insert((addr, addr.saturating_add(len)));
    }

    /// Panics if any byte outside the allowed ranges differs from the shadow.
    fn check(&self) {
        let mut ram = vec![0u8; RAM_SIZE as usize];
        self.maps.view().read(RAM_BASE, &mut ram).expect("RAM read");
        for (i, (&got, &want)) in ram.iter().zip(&self.shadow).enumerate() {
            if got == want {
                continue;
            }
            let a = RAM_BASE + i as u64;
            let ok = self.allowed.iter().any(|&(s, e)| s <= a && a < e);
            assert!(
                ok,
                "the device wrote {a:#x} ({want:#x} -> {got:#x}), which no descriptor, SG entry or completion ring names"
            );
        }
    }
}

struct Model {
    dev: Device,
    guest: Guest,
}

fn model() -> &'static Mutex<Model> {
    static M: OnceLock<Mutex<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let maps = Arc::new(MapTable::new());
        maps.map_anonymous(RAM_BASE, RAM_SIZE).expect("map RAM");
        let cfg = DeviceConfig {
            queues: 2,
            internal_mem: 64 << 10,
            faults: RuleSet::default(),
            dma_bits: 64,
        };
        let dev = Device::new(
            &cfg,
            maps.clone(),
            CountingSink::new(),
            Arc::new(EventLog::disabled()),
        )
        .expect("device");
        Mutex::new(Model {
            dev,
            guest: Guest {
                maps,
                shadow: vec![CANARY; RAM_SIZE as usize],
                allowed: BTreeSet::new(),
            },
        })
    })
}

/// Waits (bounded) until queue `q` has fetched up to `tail`, halted, or stopped making
/// progress (completion ring full) for a millisecond.
fn settle(dev: &Device, q: usize, tail: u32) {
    let mut b = [0u8; 4];
    let mut read = |reg| {
        dev.mmio_read(abi::queue_reg(q, reg) as u64, &mut b);
        u32::from_le_bytes(b)
    };
    let deadline = Instant::now() + Duration::from_millis(100);
    let (mut last, mut since) = (u32::MAX, Instant::now());
    while Instant::now() < deadline {
        let status = read(abi::Q_STATUS);
        let head = read(abi::Q_SQ_HEAD);
        if status & abi::QSTATUS_ENABLED == 0 || status & abi::QSTATUS_ERROR != 0 || head == tail {
            return;
        }
        if head != last {
            (last, since) = (head, Instant::now());
        } else if since.elapsed() > Duration::from_millis(1) {
            return;
        }
        std::thread::yield_now();
    }
}

/// A DMA_CMD write is coming: the destination the direct block's registers name now may be
/// written (as the harness reads them back, whatever wrote them).
fn allow_direct(dev: &Device, guest: &mut Guest) {
    let read = |reg: usize| {
        let mut b = [0u8; 4];
        dev.mmio_read(reg as u64, &mut b);
        u64::from(u32::from_le_bytes(b))
    };
    let dst = read(abi::REG_DMA_DST_LO) | read(abi::REG_DMA_DST_HI) << 32;
    guest.allow(dst, read(abi::REG_DMA_LEN));
}

/// BAR0 register writes plus descriptor, SG-list and ring contents, against guest RAM full of
/// canaries: fails on a panic, a hang, or any write to a byte that nothing names.
pub fn bar_and_rings(data: &[u8]) {
    let mut m = model().lock().unwrap_or_else(|p| p.into_inner());
    let Model { dev, guest } = &mut *m;
    dev.reset();
    guest.reset();
    // Per queue: the geometry the harness believes in, to place descriptors in the ring.
    let mut geo = [(0u64, 0u64, 0u32); 2];
    let mut tails = [0u32; 2];
    let mut input = Input(data);
    let mut ops = 0;
    while !input.done() && ops < 64 {
        ops += 1;
        let q = usize::from(input.u8() & 1);
        let reg = |r| abi::queue_reg(q, r);
        match input.u8() % 8 {
            // Program a ring (base and size), mostly sensibly.
            0 => {
                let sq = input.addr() & !63;
                let cq = input.addr() & !15;
                let size = match input.u8() % 4 {
                    0 => input.u32(),
                    n => 2 << n,
                };
                for (r, v) in [
                    (abi::Q_SQ_BASE_LO, sq as u32),
                    (abi::Q_SQ_BASE_HI, (sq >> 32) as u32),
                    (abi::Q_CQ_BASE_LO, cq as u32),
                    (abi::Q_CQ_BASE_HI, (cq >> 32) as u32),
                    (abi::Q_SIZE, size),
                ] {
                    dev.mmio_write(reg(r) as u64, &v.to_le_bytes());
                }
                geo[q] = (sq, cq, size);
                guest.allow(cq, u64::from(size.min(abi::MAX_RING_ENTRIES)) * 16);
            }
            // Any register write, anywhere in BAR0.
            1 => {
                let off = (u64::from(input.u16()) % abi::BAR0_SIZE as u64) & !3;
                let v = input.u32();
                if off == abi::REG_DMA_CMD as u64 {
                    allow_direct(dev, guest);
                }
                dev.mmio_write(off, &v.to_le_bytes());
            }
            // Enable, disable or reset the queue.
            2 => {
                let v = u32::from(input.u8() % 4);
                dev.mmio_write(reg(abi::Q_CTRL) as u64, &v.to_le_bytes());
            }
            // A descriptor into ring slot k.
            3 => {
                let (sq, _, size) = geo[q];
                let k = u64::from(input.u16()) % u64::from(size.clamp(1, 64));
                let mut d = abi::Descriptor {
                    opcode: input.u8() % 7,
                    flags: input.u8() % 16,
                    src_nseg: input.u16() % 8,
                    dst_nseg: input.u16() % 8,
                    tag: input.u32(),
                    len: input.len(),
                    src: input.addr(),
                    dst: input.addr(),
                    pattern: input.u32(),
                    ..Default::default()
                };
                if input.u8() % 4 == 0 {
                    d.rsvd0 = input.u16();
                }
                guest.allow(d.dst, u64::from(d.len));
                guest.poke(sq.wrapping_add(k * 64), &crate::wire::encode_descriptor(&d));
            }
            // A scatter-gather list.
            4 => {
                let at = input.addr() & !15;
                let n = input.u8() % 8;
                let mut list = Vec::new();
                for _ in 0..n {
                    let e = abi::SgEntry {
                        addr: input.addr(),
                        len: input.len(),
                        rsvd: 0,
                    };
                    guest.allow(e.addr, u64::from(e.len));
                    list.extend_from_slice(&crate::wire::encode_sg(&e));
                }
                guest.poke(at, &list);
            }
            // Doorbells.
            5 => {
                let v = u32::from(input.u16());
                dev.mmio_write(reg(abi::Q_SQ_TAIL) as u64, &v.to_le_bytes());
                tails[q] = v;
                settle(dev, q, v);
            }
            6 => {
                let v = u32::from(input.u16());
                dev.mmio_write(reg(abi::Q_CQ_HEAD) as u64, &v.to_le_bytes());
                settle(dev, q, tails[q]);
            }
            // Device-level registers: reset, error clear, coalescing; a direct transfer.
            _ => {
                let (r, v) = match input.u8() % 4 {
                    0 => (abi::REG_DEV_CTRL, input.u32()),
                    1 => (abi::REG_ERROR, input.u32()),
                    2 => (abi::REG_IRQ_COALESCE, input.u32() & 0x00ff_00ff),
                    _ => {
                        let (src, dst) = (input.addr(), input.addr());
                        for (r, v) in [
                            (abi::REG_DMA_SRC_LO, src as u32),
                            (abi::REG_DMA_SRC_HI, (src >> 32) as u32),
                            (abi::REG_DMA_DST_LO, dst as u32),
                            (abi::REG_DMA_DST_HI, (dst >> 32) as u32),
                            (abi::REG_DMA_LEN, input.len()),
                            (abi::REG_DMA_PATTERN, input.u32()),
                        ] {
                            dev.mmio_write(r as u64, &v.to_le_bytes());
                        }
                        allow_direct(dev, guest);
                        (abi::REG_DMA_CMD, u32::from(input.u8() % 7))
                    }
                };
                dev.mmio_write(r as u64, &v.to_le_bytes());
            }
        }
    }
    settle(dev, 0, tails[0]);
    settle(dev, 1, tails[1]);

    // A reset waits for every worker to finish what it is doing: after it nothing moves.
    dev.reset();
    guest.check();
}

/// Makes the model write one byte that nothing names, then runs the canary check: proves the
/// check can fail (used by the corpus tests).
#[doc(hidden)]
pub fn stray_write_for_test() {
    let mut m = model().lock().unwrap_or_else(|p| p.into_inner());
    let guest = &mut m.guest;
    guest.reset();
    guest.allow(RAM_BASE, 16);
    guest
        .maps
        .view()
        .write(RAM_BASE + 8, &[0])
        .expect("allowed write");
    guest.check();
    guest
        .maps
        .view()
        .write(RAM_BASE + 100, &[0])
        .expect("stray write");
    guest.check();
}

/// A vfio-user byte stream from a client, into the real server loop with the real device
/// behind it. Fails on a panic or a hang (libFuzzer's timeout); replies are read and dropped.
pub fn vfio_stream(data: &[u8]) {
    static BACKEND: OnceLock<Mutex<VfioDevice>> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| Mutex::new(fuzz_vfio_device()));
    let mut backend = backend.lock().unwrap_or_else(|p| p.into_inner());
    serve_one_client(&mut backend, data);
}

/// The device the vfio-user targets serve: two queues, 64 KiB of internal memory, no rules.
fn fuzz_vfio_device() -> VfioDevice {
    let maps = Arc::new(MapTable::new());
    let irqs = Arc::new(EventfdSink::default());
    let log = Arc::new(EventLog::disabled());
    let cfg = DeviceConfig {
        queues: 2,
        internal_mem: 64 << 10,
        faults: RuleSet::default(),
        dma_bits: 64,
    };
    let dev = Device::new(&cfg, maps.clone(), irqs.clone(), log.clone()).expect("device");
    VfioDevice::new(dev, maps, irqs, log)
}

/// One client's whole session: `bytes` are written to a fresh socket (then its write half is
/// shut), the real server loop serves them until the client is gone, replies are read and
/// dropped, and the backend is told of the disconnect as the server binary tells it.
fn serve_one_client(backend: &mut VfioDevice, bytes: &[u8]) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let vectors = backend.device.vectors();
    let server = Server::new(VfioDevice::regions(), VfioDevice::irq_infos(vectors));
    let (mut client, sock) = UnixStream::pair().expect("socketpair");
    let reader = {
        let mut c = client.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut sink = [0u8; 4096];
            while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
        })
    };
    let writer = {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = client.write_all(&bytes);
            let _ = client.shutdown(std::net::Shutdown::Write);
        })
    };
    let _ = server.serve(sock, backend);
    crate::vfio_user::Backend::disconnected(backend);
    let _ = writer.join();
    let _ = reader.join();
}

/// One control-socket request line.
pub fn control_line(data: &[u8]) {
    static DEV: OnceLock<Device> = OnceLock::new();
    let dev = DEV.get_or_init(|| {
        let maps = Arc::new(MapTable::new());
        let cfg = DeviceConfig {
            queues: 1,
            internal_mem: 4096,
            faults: RuleSet::default(),
            dma_bits: 64,
        };
        Device::new(
            &cfg,
            maps,
            CountingSink::new(),
            Arc::new(EventLog::disabled()),
        )
        .expect("device")
    });
    if let Ok(line) = std::str::from_utf8(data) {
        let answer = crate::control::handle(dev.shared(), line);
        assert!(answer["ok"].is_boolean(), "answer without ok: {answer}");
    }
    assert!(dev.shared().faults.rules().len() <= crate::faults::MAX_RULES);
}

/// Two vfio-user clients, one after the other, while a control client sends its lines at the
/// same time: interleavings of the message layer, the device's workers and the control socket,
/// not just inputs. Input: `[len_a: u16][len_b: u16]`, client A's message bytes, client B's,
/// then control lines (before each, the control thread yields `len % 8` times, so the input
/// steers where its lines fall among the messages).
///
/// Properties: nothing panics or hangs; the rule limit holds; after both clients are gone the
/// device answers its control socket and a reset.
pub fn clients_and_control(data: &[u8]) {
    static BACKEND: OnceLock<Mutex<VfioDevice>> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| Mutex::new(fuzz_vfio_device()));
    let mut input = Input(data);
    let (la, lb) = (usize::from(input.u16()), usize::from(input.u16()));
    let rest = input.0;
    let (a, rest) = rest.split_at(la.min(rest.len()));
    let (b, control) = rest.split_at(lb.min(rest.len()));
    let mut backend = backend.lock().unwrap_or_else(|p| p.into_inner());
    let shared = backend.device.shared().clone();
    let lines: Vec<String> = String::from_utf8_lossy(control)
        .lines()
        .map(str::to_owned)
        .collect();
    let controller = std::thread::spawn(move || {
        for line in lines {
            for _ in 0..line.len() % 8 {
                std::thread::yield_now();
            }
            let answer = crate::control::handle(&shared, &line);
            assert!(answer["ok"].is_boolean(), "answer without ok: {answer}");
        }
    });
    for bytes in [a, b] {
        serve_one_client(&mut backend, bytes);
    }
    controller.join().expect("the control client's thread");
    let shared = backend.device.shared().clone();
    assert!(shared.faults.rules().len() <= crate::faults::MAX_RULES);
    let answer = crate::control::handle(&shared, r#"{"cmd":"list"}"#);
    assert_eq!(
        answer["ok"], true,
        "the control socket after the clients: {answer}"
    );
    backend.device.reset();
}

/// A rules file: parsed, validated, and if valid run against a few occurrences.
pub fn rules_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(set) = RuleSet::from_toml(text) {
        let inj = Injector::new(&set);
        for i in 0..16u32 {
            let _ = inj.on_descriptor(Occurrence {
                queue: (i % 2) as u16,
                index: i,
                opcode: (i % 6) as u8,
                len: i * 1000,
            });
            if i % 5 == 0 {
                inj.on_reset();
            }
        }
    }
}

/// Replays every file of `fuzz/corpus/<target>` through `body` (used by `cargo test`).
pub fn replay_corpus(target: &str, body: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let data = std::fs::read(&p).unwrap();
        body(&data);
        n += 1;
    }
    n
}
