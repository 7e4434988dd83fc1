//! `make bench`'s guest half: dmalab's driver, QEMU's NVMe (the kernel's own driver, O_DIRECT
//! reads) and QEMU's edu (driven from user space) at the same sizes and queue depths, in one boot,
//! so the ratios between them are what counts and the machine's speed cancels out.
//!
//! Queue depth is the number of threads each keeping one request in flight (the driver's ioctl
//! and `pread` both block until their request completes). Every request's latency is what the
//! submitting thread saw, syscall included.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dmalab_abi::{self as abi, Request};
use dmalab_report::{Bench, Report};

use crate::dev::Dev;
use crate::pattern::data;
use crate::pci_user::{enable_bus_master, MappedBar, Pages};
use crate::report::report;

const SIZES: [usize; 3] = [4096, 64 << 10, 1 << 20];
const DEPTHS: [usize; 3] = [1, 8, 32];
/// Sizes where copying through the bounce pool and mapping the caller's pages cost about the
/// same: depth 1, one queue, both modes (the auto mode's threshold comes from here).
const CROSSOVER: [usize; 4] = [8 << 10, 16 << 10, 32 << 10, 128 << 10];

/// The driver's two data paths, as `make bench` names their cells: (`dma_mode`, blocking
/// threads, one thread's batches, READs by blocking threads).
const MODES: [(u32, &str, &str, &str); 2] = [
    (
        abi::DMA_MODE_BOUNCE,
        "dmalab",
        "dmalab-batch",
        "dmalab-read",
    ),
    (
        abi::DMA_MODE_ZERO_COPY,
        "dmalab-zero-copy",
        "dmalab-zero-copy-batch",
        "dmalab-zero-copy-read",
    ),
];

/// The bounce path's READs without clearing what the device writes (`dma_bug=15`, loaded for
/// this measurement only): against [`BOUNCE_READ`]'s cells, the cost of the stale-bytes rule.
const UNCLEARED_READ: &str = "dmalab-read-uncleared";

/// Loads the driver again with `dma_mode=mode` (and the command line's other parameters).
fn reload(module: &str, mode: u32) -> Result<(), String> {
    reload_with(module, mode, "")
}

/// [`reload`], with `extra` module parameters.
fn reload_with(module: &str, mode: u32, extra: &str) -> Result<(), String> {
    crate::dev::rmmod("dmalab")?;
    crate::dev::insmod_with(
        module,
        &format!("{} dma_mode={mode} {extra}", crate::kmod::module_params()),
    )?;
    let got = Dev::open(0)?.info()?.dma_mode;
    if got != mode {
        return Err(format!(
            "reloaded for dma_mode {mode}, the driver says {got}"
        ));
    }
    Ok(())
}

/// The namespaces `make bench` gives QEMU's NVMe (harness/src/vm.rs, `VmOptions::peers`), by
/// namespace id: the kernel names the block devices in the order their scans finish.
const NVME_ZEROES: u32 = 1;
const NVME_NODATA: u32 = 2;

/// The block device of NVMe namespace `nsid`.
fn nvme_namespace(nsid: u32) -> Result<String, String> {
    for e in std::fs::read_dir("/sys/block").map_err(|e| format!("/sys/block: {e}"))? {
        let name = e.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy();
        let id = std::fs::read_to_string(format!("/sys/block/{name}/nsid")).unwrap_or_default();
        if name.starts_with("nvme") && id.trim() == nsid.to_string() {
            return Ok(format!("/dev/{name}"));
        }
    }
    Err(format!(
        "no NVMe namespace {nsid} (is QEMU's NVMe attached? VmOptions::peers)"
    ))
}

/// Seconds per measurement: `dmalab.bench_secs` (default 2; the e2e smoke uses less).
fn budget() -> Duration {
    let secs: f64 = crate::cmdline_param("dmalab.bench_secs")
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.clamp(0.05, 60.0))
}

/// A page-aligned buffer (O_DIRECT needs it, and edu's DMA address is a page's).
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: the layout's size is non-zero.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, layout }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `layout.size()` initialised bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: the buffer is owned; one thread uses it at a time.
unsafe impl Send for Aligned {}

/// One measured cell of the table.
struct Cell {
    device: &'static str,
    len: usize,
    /// Requests in flight.
    depth: usize,
    queues: usize,
    /// Threads keeping them in flight: `depth` blocking callers, or one caller of batches.
    threads: usize,
}

/// One thread's share of a measurement.
trait Worker: Send {
    /// One call, start to completion (of [`requests`](Self::requests) requests): `true` when
    /// every request succeeded.
    fn run(&mut self) -> bool;
    /// Requests one [`run`](Self::run) carries.
    fn requests(&self) -> u64 {
        1
    }
    /// After the clock stops: the bytes the last request produced are right.
    fn verify(&mut self) -> bool {
        true
    }
}

/// Runs `cell.depth` threads, each with the worker `worker(thread)` builds, for the budget, and
/// reports the cell. A worker that cannot be built (a device missing) fails the cell.
fn measure<W: Worker + 'static>(
    cell: Cell,
    worker: impl Fn(usize) -> Result<W, String>,
) -> Result<(), String> {
    let budget = budget();
    let start = Arc::new(Barrier::new(cell.threads + 1));
    let mut handles = Vec::new();
    for t in 0..cell.threads {
        let mut w = worker(t)?;
        let start = start.clone();
        handles.push(std::thread::spawn(move || {
            let mut lat_ns = Vec::with_capacity(4096);
            let mut failed = 0u64;
            start.wait();
            let t0 = Instant::now();
            while t0.elapsed() < budget {
                let t = Instant::now();
                let n = w.requests();
                if w.run() {
                    // each request of a batch waited as long as the batch
                    let ns = t.elapsed().as_nanos() as u64;
                    lat_ns.extend(std::iter::repeat_n(ns, n as usize));
                } else {
                    failed += n;
                }
            }
            // the bytes are checked once, after the clock stops (a thread the budget ended
            // before its first request has nothing to check)
            if !lat_ns.is_empty() {
                failed += u64::from(!w.verify());
            }
            (lat_ns, failed)
        }));
    }
    start.wait();
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut failed = 0;
    for h in handles {
        let (l, f) = h.join().map_err(|_| "bench thread panicked")?;
        lat.extend(l);
        failed += f;
    }
    let secs = t0.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1e3
    };
    let ops = lat.len() as u64;
    report(Report::Bench(Bench {
        op: if cell.device.starts_with("nvme") {
            "read"
        } else {
            "copy"
        }
        .into(),
        len: cell.len as u64,
        depth: cell.depth as u64,
        ops,
        failed,
        seconds: secs,
        mb_per_s: ops as f64 * cell.len as f64 / secs / 1e6,
        ops_per_s: ops as f64 / secs,
        device: cell.device.into(),
        queues: cell.queues as u64,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
    }));
    Ok(())
}

/// dmalab: COPY of `len` bytes on queue `thread % queues`, through the driver's ioctl.
struct DmalabWorker {
    dev: Dev,
    /// The queue of a one-queue cell (and of the READ cells' setup).
    queue: u8,
    /// Queues the cell spreads over: more than one, and each request goes to the queue of the
    /// CPU it is submitted on, as blk-mq maps CPUs to hardware queues (the driver points each
    /// queue's vector at that CPU).
    queues: usize,
    src: Vec<u8>,
    dst: Vec<u8>,
    /// READ from internal memory at this offset (where `src` was written first) instead of
    /// COPY: one user buffer, written by the device, like an NVMe read.
    read_at: Option<u64>,
}

impl DmalabWorker {
    fn new(len: usize, queues: usize, thread: usize) -> Result<Self, String> {
        Ok(Self {
            dev: Dev::open(0)?,
            queue: (thread % queues) as u8,
            queues,
            src: data(len, thread as u32 + 1),
            dst: vec![0u8; len],
            read_at: None,
        })
    }

    /// A READ worker: writes its data into its own slice of internal memory once, then reads
    /// it back each time.
    fn read(len: usize, queues: usize, thread: usize) -> Result<Self, String> {
        let mut w = Self::new(len, queues, thread)?;
        let at = (thread * len) as u64;
        let mut r = Request {
            opcode: abi::OP_WRITE,
            queue: w.queue,
            len: len as u32,
            src: w.src.as_ptr() as u64,
            dev_offset: at,
            timeout_ms: 30_000,
            ..Default::default()
        };
        w.dev
            .submit(&mut r)
            .map_err(|e| format!("WRITE for the READ cells: {e}"))?;
        w.read_at = Some(at);
        Ok(w)
    }
}

impl Worker for DmalabWorker {
    fn run(&mut self) -> bool {
        let queue = if self.queues > 1 {
            // SAFETY: no arguments; returns the CPU the thread runs on, or -1.
            let cpu = unsafe { libc::sched_getcpu() };
            (cpu.max(0) as usize % self.queues) as u8
        } else {
            self.queue
        };
        let mut r = Request {
            opcode: abi::OP_COPY,
            queue,
            len: self.src.len() as u32,
            src: self.src.as_ptr() as u64,
            dst: self.dst.as_mut_ptr() as u64,
            timeout_ms: 30_000,
            ..Default::default()
        };
        if let Some(at) = self.read_at {
            r.opcode = abi::OP_READ;
            r.src = 0;
            r.dev_offset = at;
        }
        self.dev.submit(&mut r).is_ok() && r.status == u32::from(abi::Status::Ok.raw())
    }

    fn verify(&mut self) -> bool {
        self.dst == self.src
    }
}

/// dmalab, one thread: batches of `depth` COPYs of `len` bytes spread over `queues` queues,
/// through `IOC_SUBMIT_BATCH` (one system call and one doorbell per queue for the lot).
struct BatchWorker {
    dev: Dev,
    reqs: Vec<Request>,
    bufs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl BatchWorker {
    fn new(len: usize, queues: usize, depth: usize) -> Result<Self, String> {
        let mut bufs: Vec<(Vec<u8>, Vec<u8>)> = (0..depth)
            .map(|i| (data(len, i as u32 + 1), vec![0u8; len]))
            .collect();
        let reqs = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, (src, dst))| Request {
                opcode: abi::OP_COPY,
                queue: (i % queues) as u8,
                len: len as u32,
                src: src.as_ptr() as u64,
                dst: dst.as_mut_ptr() as u64,
                timeout_ms: 30_000,
                ..Default::default()
            })
            .collect();
        Ok(Self {
            dev: Dev::open(0)?,
            reqs,
            bufs,
        })
    }
}

impl Worker for BatchWorker {
    fn run(&mut self) -> bool {
        matches!(self.dev.submit_batch(&mut self.reqs), Ok(n) if n as usize == self.reqs.len())
    }

    fn requests(&self) -> u64 {
        self.reqs.len() as u64
    }

    fn verify(&mut self) -> bool {
        self.bufs.iter().all(|(src, dst)| src == dst)
    }
}

/// NVMe: O_DIRECT reads of `len` bytes, each thread walking its own stretch of the namespace.
struct NvmeWorker {
    file: File,
    zeroes: bool,
    buf: Aligned,
    slots: u64,
    next: u64,
}

impl NvmeWorker {
    fn new(nsid: u32, len: usize, thread: usize) -> Result<Self, String> {
        let path = nvme_namespace(nsid)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let size = block_size(&file).ok_or_else(|| format!("{path}: no size"))?;
        let mut buf = Aligned::new(len);
        buf.as_mut_slice().fill(0xa5);
        Ok(Self {
            file,
            zeroes: nsid == NVME_ZEROES,
            buf,
            slots: (size / len as u64).max(1),
            next: thread as u64 * 97,
        })
    }
}

impl Worker for NvmeWorker {
    fn run(&mut self) -> bool {
        self.next = (self.next + 1) % self.slots;
        let len = self.buf.layout.size();
        let off = self.next * len as u64;
        matches!(self.file.read_at(self.buf.as_mut_slice(), off), Ok(n) if n == len)
    }

    /// Reads from the zeroes namespace must really have written the buffer.
    fn verify(&mut self) -> bool {
        !self.zeroes || self.buf.as_slice().iter().all(|&b| b == 0)
    }
}

/// A block device's size (BLKGETSIZE64): `metadata().len()` is 0 for device nodes.
fn block_size(f: &File) -> Option<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size = 0u64;
    // SAFETY: the ioctl writes one u64 through the pointer, which lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size) };
    (r == 0 && size > 0).then_some(size)
}

/// A user-space memcpy of `len` bytes in the guest, one at a time: what each of the driver's
/// two bounce copies (user -> pool, pool -> user) costs under TCG.
struct MemcpyWorker {
    src: Vec<u8>,
    dst: Vec<u8>,
}

impl Worker for MemcpyWorker {
    fn run(&mut self) -> bool {
        self.dst.copy_from_slice(std::hint::black_box(&self.src));
        std::hint::black_box(&self.dst);
        true
    }

    fn verify(&mut self) -> bool {
        self.dst == self.src
    }
}

/// Untimed warm-up of one worker: TCG translates each code path the first time it runs, which
/// would otherwise be charged to whichever cell comes first.
fn warm_up(w: &mut dyn Worker) {
    for _ in 0..20 {
        w.run();
    }
}

/// dmalab (over `queues` queues) and NVMe warmed up at every size.
fn warm_up_both(queues: usize) -> Result<(), String> {
    for len in SIZES {
        warm_up(&mut DmalabWorker::new(len, queues, 0)?);
        warm_up(&mut NvmeWorker::new(NVME_ZEROES, len, 0)?);
    }
    Ok(())
}

/// The whole table: every size and depth through dmalab on one queue and on all queues, QEMU's
/// NVMe on both namespaces, edu at 4 KiB, and the guest's own memcpy.
pub fn matrix(module: &str) -> Result<(), String> {
    let queues = Dev::open(0)?.info()?.queues as usize;
    warm_up_both(1)?;
    // dmalab in each data path: the driver reloaded with that `dma_mode`
    for (mode, threads_name, batch_name, read_name) in MODES {
        reload(module, mode)?;
        for len in SIZES {
            warm_up(&mut DmalabWorker::new(len, 1, 0)?);
        }
        for len in SIZES {
            for depth in DEPTHS {
                let cell = |queues| Cell {
                    device: threads_name,
                    len,
                    depth,
                    queues,
                    threads: depth,
                };
                let batched = |queues| Cell {
                    device: batch_name,
                    len,
                    depth,
                    queues,
                    threads: 1,
                };
                measure(cell(1), |t| DmalabWorker::new(len, 1, t))?;
                let read = Cell {
                    device: read_name,
                    ..cell(1)
                };
                measure(read, |t| DmalabWorker::read(len, 1, t))?;
                if depth > 1 {
                    measure(cell(queues), |t| DmalabWorker::new(len, queues, t))?;
                    for q in [1, queues] {
                        measure(batched(q), |_| BatchWorker::new(len, q, depth))?;
                    }
                }
            }
        }
        for len in CROSSOVER {
            let cell = Cell {
                device: threads_name,
                len,
                depth: 1,
                queues: 1,
                threads: 1,
            };
            measure(cell, |t| DmalabWorker::new(len, 1, t))?;
        }
    }
    // what clearing the bounce pages before a device write costs: the same READs without it
    reload_with(module, abi::DMA_MODE_BOUNCE, "dma_bug=15")?;
    for len in SIZES {
        for depth in [1, 8] {
            let cell = Cell {
                device: UNCLEARED_READ,
                len,
                depth,
                queues: 1,
                threads: depth,
            };
            measure(cell, |t| DmalabWorker::read(len, 1, t))?;
        }
    }
    // back to the parameters the boot asked for
    crate::dev::rmmod("dmalab")?;
    crate::dev::insmod_with(module, &crate::kmod::module_params())?;
    for len in SIZES {
        for depth in DEPTHS {
            let cell = |device, queues| Cell {
                device,
                len,
                depth,
                queues,
                threads: depth,
            };
            measure(cell("nvme", 1), |t| NvmeWorker::new(NVME_ZEROES, len, t))?;
            measure(cell("nvme-nodata", 1), |t| {
                NvmeWorker::new(NVME_NODATA, len, t)
            })?;
        }
        measure(
            Cell {
                device: "guest-memcpy",
                len,
                depth: 1,
                queues: 1,
                threads: 1,
            },
            |_| {
                Ok(MemcpyWorker {
                    src: data(len, 9),
                    dst: vec![0u8; len],
                })
            },
        )?;
    }
    measure(
        Cell {
            device: "edu",
            len: edu::LEN,
            depth: 1,
            queues: 1,
            threads: 1,
        },
        |_| edu::Edu::new(),
    )
}

/// `make bench`'s vCPU scaling boots (one vCPU, then two under MTTCG): dmalab in the driver's
/// default data path over all queues, each request on the queue of the CPU it is submitted
/// on, COPY and READ, and QEMU's NVMe read (whose blk-mq does the same), at every size and
/// depth. The same load in both boots, so that their ratio is what a second CPU buys.
pub fn scaling() -> Result<(), String> {
    let queues = Dev::open(0)?.info()?.queues as usize;
    warm_up_both(queues)?;
    for len in SIZES {
        for depth in DEPTHS {
            let cell = |device, queues| Cell {
                device,
                len,
                depth,
                queues,
                threads: depth,
            };
            measure(cell("dmalab", queues), |t| {
                DmalabWorker::new(len, queues, t)
            })?;
            measure(cell("dmalab-read", queues), |t| {
                DmalabWorker::read(len, queues, t)
            })?;
            measure(cell("nvme", 1), |t| NvmeWorker::new(NVME_ZEROES, len, t))?;
        }
    }
    Ok(())
}

/// Where `make bench-streaming` puts the driver built on the kernel's own
/// `kernel::dma::streaming` (kernel-patches/streaming/); the boot's module is the same driver
/// with its own copy of the abstraction.
const IN_TREE_MODULE: &str = "/lib/modules/dmalab-intree.ko";

/// `make bench-streaming`: the zero-copy path (which is where the streaming abstraction runs)
/// with the driver's own copy of the abstraction and with the kernel's, in one boot: four rounds
/// in the order A B, B A, A B, B A, so that neither drift nor going first or second in a round
/// favours a side. Cells `zero-copy-module[-read]` and `zero-copy-in-tree[-read]`, four of each,
/// in round order.
pub fn module_pair(module: &str) -> Result<(), String> {
    // (the module to load, `None` for the boot's own; the cells' names)
    const SIDES: [(Option<&str>, &str, &str); 2] = [
        (None, "zero-copy-module", "zero-copy-module-read"),
        (
            Some(IN_TREE_MODULE),
            "zero-copy-in-tree",
            "zero-copy-in-tree-read",
        ),
    ];
    for round in 0..4 {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for (path, copy_name, read_name) in order.map(|i| SIDES[i]) {
            reload(path.unwrap_or(module), abi::DMA_MODE_ZERO_COPY)?;
            for len in SIZES {
                warm_up(&mut DmalabWorker::new(len, 1, 0)?);
            }
            for len in SIZES {
                for depth in [1, 8] {
                    let cell = |device| Cell {
                        device,
                        len,
                        depth,
                        queues: 1,
                        threads: depth,
                    };
                    measure(cell(copy_name), |t| DmalabWorker::new(len, 1, t))?;
                    measure(cell(read_name), |t| DmalabWorker::read(len, 1, t))?;
                }
            }
        }
    }
    crate::dev::rmmod("dmalab")?;
    crate::dev::insmod_with(module, &crate::kmod::module_params())
}

/// QEMU's `edu` (docs/specs/edu.rst), driven the way its teaching drivers do: program source,
/// destination and count, start, poll until the run bit clears; 4 KiB from memory into the
/// device's buffer and back out to a second page, checked. No kernel driver exists for it, so
/// the agent maps its BAR through sysfs and gives it physical addresses from
/// `/proc/self/pagemap` (no IOMMU in this boot, so bus addresses are physical).
mod edu {
    use super::*;

    pub const LEN: usize = 4096;
    const DMA_SRC: usize = 0x80;
    const DMA_DST: usize = 0x88;
    const DMA_CNT: usize = 0x90;
    const DMA_CMD: usize = 0x98;
    const CMD_RUN: u64 = 1;
    const CMD_TO_RAM: u64 = 2;
    /// Where edu's 4 KiB buffer sits in its DMA address space.
    const BUF: u64 = 0x40000;

    fn find() -> Result<String, String> {
        for e in std::fs::read_dir("/sys/bus/pci/devices").map_err(|e| e.to_string())? {
            let p = e.map_err(|e| e.to_string())?.path();
            let id = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            if id("vendor").trim() == "0x1234" && id("device").trim() == "0x11e8" {
                return Ok(p.display().to_string());
            }
        }
        Err("no edu device (VmOptions::peers adds one)".into())
    }

    /// One DMA: program, start, poll (edu runs it 100 ms of virtual time later).
    fn dma(bar: &MappedBar, src: u64, dst: u64, cmd: u64) -> bool {
        bar.write(DMA_SRC, src);
        bar.write(DMA_DST, dst);
        bar.write(DMA_CNT, LEN as u64);
        bar.write(DMA_CMD, cmd | CMD_RUN);
        let t = Instant::now();
        while bar.read::<u64>(DMA_CMD) & CMD_RUN != 0 {
            if t.elapsed() > Duration::from_secs(10) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// edu, mapped and bus-mastering, with a source page and a destination page locked.
    pub struct Edu {
        bar: MappedBar,
        /// Page 0: the source, page 1: the destination.
        pages: Pages,
    }

    impl Edu {
        pub fn new() -> Result<Self, String> {
            let dev = find()?;
            enable_bus_master(&dev)?;
            let bar = MappedBar::open(&dev, 0)?;
            let pages = Pages::new(2)?;
            pages.write(0, 0, &data(LEN, 11));
            pages.fill(1, 0);
            Ok(Self { bar, pages })
        }
    }

    impl Worker for Edu {
        fn run(&mut self) -> bool {
            let (src, dst) = (self.pages.phys[0], self.pages.phys[1]);
            dma(&self.bar, src, BUF, 0) && dma(&self.bar, BUF, dst, CMD_TO_RAM)
        }

        fn verify(&mut self) -> bool {
            let want = data(LEN, 11);
            (0..LEN).all(|i| self.pages.byte(1, i) == want[i])
        }
    }
}
