//! One test VM: the device server plus QEMU, run to completion under a timeout.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashSet;

use dmalab_device::eventlog::{CountersSnapshot, Event, Injected, Record};
use dmalab_device::faults::FaultKind;
use dmalab_report::{DmaApi, Done, Kind, ModuleSymbols, Refused, Report, ScenarioError};

use crate::artifacts;
use crate::conditions::Conditions;

/// The guest CPU model. `max` without FSRM and ERMS: a CPU that advertises them gets
/// `rep movsb` from the kernel's memcpy and copy_{to,from}_user and from glibc, which TCG runs
/// one byte at a time: about 8x slower copies than the `rep movsq` and unrolled loops used
/// otherwise (docs/performance.md has the profile). `DMALAB_CPU=max` restores them.
pub const GUEST_CPU: &str = "max,fsrm=off,erms=off";

/// What backs the guest's RAM. QEMU hands the device server the same file for its DMA
/// mappings: a sealed memfd by default, a file that can shrink with the others
/// (docs/reliability.md: unsealed backing files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RamBackend {
    /// `memory-backend-memfd` (sealed against shrinking).
    Memfd,
    /// `memory-backend-file` in this directory (QEMU creates and unlinks a file in it): tmpfs
    /// such as /dev/shm, or a hugetlbfs mount for huge pages.
    File(PathBuf),
}

impl RamBackend {
    /// The `-object` argument for `mb` MiB of RAM with the id `mem`.
    pub fn qemu_object(&self, mb: u32) -> String {
        match self {
            RamBackend::Memfd => format!("memory-backend-memfd,id=mem,size={mb}M,share=on"),
            RamBackend::File(dir) => format!(
                "memory-backend-file,id=mem,size={mb}M,share=on,mem-path={}",
                dir.display()
            ),
        }
    }
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Name of the run (its log directory).
    pub name: String,
    /// Agent scenarios, in order.
    pub scenarios: String,
    /// Queue pairs the device server offers.
    pub queues: u16,
    /// Put the device behind an emulated Intel IOMMU (guest `intel_iommu=on`).
    pub iommu: bool,
    /// Guest RAM in MiB.
    pub memory_mb: u32,
    /// Kill the VM after this long. Generous: a slow shared machine must never fail a test.
    pub timeout: Duration,
    /// Extra kernel command line.
    pub append: String,
    /// Fault rules (TOML) the device server starts with.
    pub faults: Option<String>,
    /// Kill the device server (surprise removal) once the console shows this text.
    pub kill_device_on: Option<String>,
    /// Report kinds printed (to stderr) as they arrive, e.g. "progress".
    pub echo: Vec<&'static str>,
    /// Echo reports as their raw JSON lines, also `progress` (otherwise a progress report is
    /// echoed as a line for people: done/total, rate, failures and faults so far, time left).
    pub echo_json: bool,
    /// Put before every echoed line (several VMs echoing at once: `--jobs`).
    pub echo_prefix: String,
    /// Device-side error events the test provokes on purpose beyond those an injected fault or
    /// a deliberately refused request explains: (text the event's `what` contains, why it is
    /// expected). Every other device error fails the run.
    pub expected_device_errors: Vec<(&'static str, &'static str)>,
    /// Run the DMA ownership oracle: the device publishes its windows, QEMU loads the oracle
    /// plugin, and any guest CPU access to memory the device owns fails the run.
    pub oracle: bool,
    /// With the oracle: also count kernel instructions per request (submit and complete
    /// paths; meaningful for one request at a time).
    pub count_instructions: bool,
    /// Boot this initramfs instead of the built one (`dmalab check` puts a driver under test
    /// in it).
    pub initramfs: Option<PathBuf>,
    /// Boot this kernel image instead of the built one (`dmalab check --kernel`).
    pub kernel: Option<PathBuf>,
    /// Also attach the peers `make bench` compares with (docs/performance.md): QEMU's NVMe
    /// with two RAM-less `null-co` namespaces (nsid 1 writes zeroes into every read's buffer,
    /// nsid 2 moves no data) and QEMU's edu.
    pub peers: bool,
    /// The driver's `dma_mode` (`abi::DMA_MODE_*`: auto, bounce, zero-copy); `None`: its
    /// default.
    pub dma_mode: Option<u32>,
    /// With the oracle: also check user-mode accesses (`user=on`): on the zero-copy path the
    /// memory the device owns is the application's own.
    pub oracle_user: bool,
    /// Keep only the device events whose kind is listed in [`Run::events`] (a benchmark's log
    /// holds tens of millions of events: scan it from the file instead); `None`: all.
    pub event_kinds: Option<&'static [&'static str]>,
    /// The guest kernel has DMA-API debug (the tests' kernel; `make bench-kernel`'s has not):
    /// its error count is then required to be 0.
    pub dma_api_debug: bool,
    /// The platform the VM imitates: vCPUs, where DMA addresses lie, the IOMMU's mode, bounce
    /// buffering, the device's address width ([`Conditions`]).
    pub conditions: Conditions,
    /// What backs the guest's RAM (and so the device's DMA mappings).
    pub ram: RamBackend,
}

impl VmOptions {
    pub fn new(name: &str, scenarios: &str) -> Self {
        Self {
            name: name.into(),
            scenarios: scenarios.into(),
            queues: 4,
            iommu: false,
            memory_mb: 512,
            // DMALAB_VM_TIMEOUT (seconds): a shorter limit for experiments that boot many VMs
            timeout: Duration::from_secs(
                std::env::var("DMALAB_VM_TIMEOUT")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(600),
            ),
            append: String::new(),
            faults: None,
            kill_device_on: None,
            echo: Vec::new(),
            echo_json: false,
            echo_prefix: String::new(),
            expected_device_errors: Vec::new(),
            oracle: false,
            count_instructions: false,
            initramfs: None,
            kernel: None,
            peers: false,
            dma_mode: None,
            oracle_user: false,
            event_kinds: None,
            dma_api_debug: true,
            conditions: Conditions::GENTLE,
            ram: RamBackend::Memfd,
        }
    }
}

/// Children that are killed whatever happens to the test.
struct Reaper {
    children: Vec<(String, Child)>,
}

impl Reaper {
    fn stop(&mut self, name: &str, grace: Duration) -> Option<ExitStatus> {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name)?;
        let deadline = Instant::now() + grace;
        let mut signalled = false;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                if signalled {
                    let _ = child.kill();
                    return child.wait().ok();
                }
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                signalled = true;
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// What a run left behind.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    /// The agent's report lines, parsed.
    pub reports: Vec<Report>,
    /// Report lines that did not parse (mangled on the console, or agent and harness disagree).
    pub unparsed: Vec<String>,
    /// The whole serial console.
    pub console: String,
    /// The device's event log, read back as the device's own events.
    pub events: Vec<Record>,
    pub timed_out: bool,
    /// The harness killed the device server (surprise removal).
    pub device_killed: bool,
    pub qemu_status: Option<ExitStatus>,
    pub device_status: Option<ExitStatus>,
    /// From [`VmOptions::expected_device_errors`].
    pub expected_device_errors: Vec<(&'static str, &'static str)>,
    /// From [`VmOptions::dma_api_debug`].
    pub dma_api_debug: bool,
    /// What the ownership oracle found, when it was on.
    pub oracle: Option<crate::oracle::OracleRun>,
}

fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name))
        .unwrap_or_else(|e| panic!("cannot create {}/{name}: {e}", dir.display()))
}

/// The console as it grows: each byte is read from the file once; complete lines are handed
/// out as they arrive, and the whole text is kept for the verdict.
struct ConsoleTail {
    file: Option<File>,
    path: PathBuf,
    text: String,
    /// Bytes of `text` already handed out as complete lines.
    consumed: usize,
    pending: Vec<u8>,
}

impl ConsoleTail {
    fn new(path: PathBuf) -> Self {
        Self {
            file: None,
            path,
            text: String::new(),
            consumed: 0,
            pending: Vec::new(),
        }
    }

    /// Reads what QEMU appended since the last call; returns the new complete lines.
    fn poll(&mut self) -> Vec<String> {
        use std::io::Read;
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        if let Some(f) = &mut self.file {
            let _ = f.read_to_end(&mut self.pending);
        }
        // Only whole UTF-8 text up to the last newline moves into `text`.
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let chunk: Vec<u8> = self.pending.drain(..=end).collect();
        self.text.push_str(&String::from_utf8_lossy(&chunk));
        let new = self.text[self.consumed..]
            .lines()
            .map(str::to_owned)
            .collect();
        self.consumed = self.text.len();
        new
    }

    /// Everything, including a last line without its newline.
    fn finish(mut self) -> String {
        self.poll();
        self.text.push_str(&String::from_utf8_lossy(&self.pending));
        self.text
    }
}

/// Starts the device server and waits until its socket exists.
fn start_device(opts: &VmOptions, dir: &Path, reaper: &mut Reaper) -> PathBuf {
    let device = artifacts::path("device").unwrap_or_else(|e| panic!("{e}"));
    let sock = dir.join("dev.sock");
    let mut dev = Command::new(&device);
    if let Some(rules) = &opts.faults {
        let p = dir.join("faults.toml");
        std::fs::write(&p, rules).expect("write faults.toml");
        dev.arg("--faults").arg(p);
    }
    if opts.oracle {
        dev.arg("--oracle").arg(dir.join("ownership.table"));
    }
    if opts.conditions.dma_bits != 0 {
        dev.arg("--dma-bits")
            .arg(opts.conditions.dma_bits.to_string());
    }
    let dev = dev
        .arg("--socket")
        .arg(&sock)
        .arg("--queues")
        .arg(opts.queues.to_string())
        .arg("--event-log")
        .arg(dir.join("events.jsonl"))
        .stdin(Stdio::null())
        .stdout(log_file(dir, "device.log"))
        .stderr(log_file(dir, "device.err"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", device.display()));
    reaper.children.push(("device".into(), dev));
    let deadline = Instant::now() + Duration::from_secs(30);
    // The server renames its socket into place once it listens.
    while !sock.exists() {
        if let Some((_, d)) = reaper.children.iter_mut().find(|(n, _)| n == "device") {
            if let Ok(Some(st)) = d.try_wait() {
                panic!(
                    "device server exited ({st}) before listening; see {}",
                    dir.join("device.err").display()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "device server did not create {} in 30 s",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sock
}

/// The `System.map` of the kernel the VM boots: beside `opts.kernel`'s build (its bzImage is
/// `<build>/arch/x86/boot/bzImage`), else the default kernel's. The oracle finds the kernel's
/// functions by it, so it must be the booted kernel's own.
fn system_map(opts: &VmOptions) -> Option<PathBuf> {
    let build = match &opts.kernel {
        Some(k) => k.ancestors().nth(4)?.to_path_buf(),
        None => artifacts::path("kbuild").ok()?,
    };
    Some(build.join("System.map")).filter(|m| m.exists())
}

/// Starts QEMU with the device attached over `sock`.
fn start_qemu(opts: &VmOptions, dir: &Path, sock: &Path, reaper: &mut Reaper) {
    let need = |n| artifacts::path(n).unwrap_or_else(|e| panic!("{e}"));
    let qemu = need("qemu");
    let kernel = opts.kernel.clone().unwrap_or_else(|| need("kernel"));
    let initramfs = opts.initramfs.clone().unwrap_or_else(|| need("initramfs"));
    // no_timer_check: the kernel's check that the IO-APIC timer ticks gives up, and panics
    // ("IO-APIC + timer doesn't work!"), when a loaded host runs the emulated CPU too slowly
    // for its few-tick window; the timer works, only the window is too short under TCG.
    let mut append = format!(
        "console=ttyS0 panic=-1 no_timer_check dmalab.run={} {}",
        opts.scenarios, opts.append
    );
    if let Some(m) = opts.dma_mode {
        append.push_str(&format!(" dmalab_module.dma_mode={m}"));
    }
    let c = &opts.conditions;
    append.push(' ');
    append.push_str(&c.kernel_args());
    let mut machine = String::from("q35,memory-backend=mem");
    if c.ram_high {
        // most of the RAM above 4 GiB: the driver's buffers land there unless its DMA mask
        // keeps them below
        machine.push_str(&format!(",max-ram-below-4g={}M", Conditions::LOW_RAM_MB));
    }
    let smp = c.smp.max(1);
    if smp > 1 {
        // TCG derives every vCPU's TSC from one host clock, so the TSCs agree: tell the guest,
        // which otherwise runs its clocksource watchdog and TSC checks across vCPU threads that
        // do not run in lockstep. Without it about one 2-vCPU boot in 40 froze its clock right
        // at the switch to tsc-early (both vCPUs idle, no timer ever firing again); with it, 0
        // in 80 (docs/contract.md#platform-conditions).
        append.push_str(" tsc=reliable");
    }
    let mut cmd = Command::new(&qemu);
    // -nodefaults: q35's default CD-ROM costs ~30 s of firmware probing under TCG.
    cmd.args([
        "-nodefaults",
        "-M",
        &machine,
        "-accel",
        // one host thread per vCPU: with several, they really run at once
        if smp > 1 { "tcg,thread=multi" } else { "tcg" },
        "-cpu",
        &std::env::var("DMALAB_CPU").unwrap_or(GUEST_CPU.into()),
        "-smp",
        &smp.to_string(),
    ])
    .args(["-m", &format!("{}M", opts.memory_mb)])
    .args(["-object", &opts.ram.qemu_object(opts.memory_mb)])
    .args(["-display", "none", "-no-reboot"])
    .arg("-serial")
    .arg(format!("file:{}", dir.join("console.log").display()))
    // ttyS1: the agent's reports, apart from kernel messages
    .arg("-serial")
    .arg(format!("file:{}", dir.join("reports.log").display()))
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initramfs);
    if opts.iommu || c.needs_iommu() {
        cmd.args(["-device", "intel-iommu,caching-mode=on"]);
        append.push_str(" intel_iommu=on");
    }
    if opts.oracle {
        let plugin = need("oracle");
        // DMALAB_ORACLE_ARGS: extra plugin arguments, e.g. debug=on (docs/oracle.md)
        let extra = std::env::var("DMALAB_ORACLE_ARGS")
            .map(|a| format!(",{a}"))
            .unwrap_or_default();
        let ranges = |f: fn(&Path) -> String| system_map(opts).map(|m| f(&m)).unwrap_or_default();
        let mut helpers = String::new();
        if opts.oracle_user {
            helpers.push_str(",user=on");
        }
        let dma = ranges(crate::oracle::dma_api_args);
        if !dma.is_empty() {
            helpers.push_str(&format!(",{dma}"));
        }
        let syscall = if opts.count_instructions {
            ranges(crate::oracle::syscall_entry)
        } else {
            String::new()
        };
        if !syscall.is_empty() {
            helpers.push_str(&format!(",count=on,syscall={syscall}"));
        }
        for (key, value) in [
            ("bulk", ranges(crate::oracle::helper_ranges)),
            ("io", ranges(crate::oracle::io_ranges)),
        ] {
            if !value.is_empty() {
                helpers.push_str(&format!(",{key}={value}"));
            }
        }
        cmd.arg("-plugin").arg(format!(
            "{},table={},out={}{helpers}{extra}",
            plugin.display(),
            dir.join("ownership.table").display(),
            dir.join("oracle.jsonl").display()
        ));
    }
    cmd.args([
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
    ])
    .arg("-device")
    .arg(
        serde_json::json!({
            "driver": "vfio-user-pci", "id": "dma0", "bus": "rp1",
            "socket": {"type": "unix", "path": sock.to_str().unwrap()}
        })
        .to_string(),
    );
    if opts.peers {
        for (node, zeroes) in [("nvz", "on"), ("nvn", "off")] {
            cmd.arg("-blockdev").arg(format!(
                "driver=null-co,node-name={node},size=1073741824,read-zeroes={zeroes}"
            ));
        }
        cmd.args(["-device", "nvme,id=nvme0,serial=dmalab-peer"])
            .args(["-device", "nvme-ns,bus=nvme0,drive=nvz,nsid=1"])
            .args(["-device", "nvme-ns,bus=nvme0,drive=nvn,nsid=2"])
            // edu's default DMA mask is 28 bits; guest RAM reaches past it
            .args(["-device", "edu,dma_mask=0xffffffff"]);
    }
    cmd.arg("-append").arg(append.trim());
    std::fs::write(dir.join("qemu.cmdline"), format!("{cmd:?}\n")).ok();
    let q = cmd
        .stdin(Stdio::null())
        .stdout(log_file(dir, "qemu.log"))
        .stderr(log_file(dir, "qemu.err"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", qemu.display()));
    reaper.children.push(("qemu".into(), q));
}

/// How watching the guest ended.
struct Watched {
    console: String,
    /// The agent's report channel (the second serial port).
    reports: String,
    qemu_status: Option<ExitStatus>,
    timed_out: bool,
    device_killed: bool,
    /// Seconds from QEMU's start to the agent's first report.
    boot: Option<f64>,
    /// Each scenario's end, in seconds from QEMU's start.
    scenario_ends: Vec<(String, f64)>,
}

/// A progress report for people: `[  42s] 120/300 (40%)  2.9 req/s  3 failed  5 faults  ~62 s
/// left`, the rate from the guest's own clock (reports arrive in bursts).
fn progress_line(p: &dmalab_report::Progress, t0: Instant, dir: &Path) -> String {
    let pct = p.done * 100 / p.total.max(1);
    let rate = p.done as f64 / (p.ms as f64 / 1000.0).max(1e-3);
    let left = if rate > 0.0 {
        format!(
            "~{:.0} s left",
            (p.total - p.done.min(p.total)) as f64 / rate
        )
    } else {
        String::new()
    };
    // The device's log as written so far (it flushes whenever a queue goes idle).
    let faults = std::fs::read_to_string(dir.join("events.jsonl"))
        .map(|t| t.matches("\"event\":\"fault\"").count())
        .unwrap_or(0);
    format!(
        "  [{:>4}s] {}/{} ({pct}%)  {rate:.1} req/s  {} failed  {faults} faults  {left}",
        t0.elapsed().as_secs(),
        p.done,
        p.total,
        p.failed
    )
}

/// Follows the console and the report channel until QEMU exits (the guest powered off or
/// panicked: -no-reboot) or the timeout: echoes chosen reports, and kills the device server
/// when the surprise-removal marker appears.
fn watch(opts: &VmOptions, dir: &Path, reaper: &mut Reaper) -> Watched {
    let t0 = Instant::now();
    let mut tail = ConsoleTail::new(dir.join("console.log"));
    let mut report_tail = ConsoleTail::new(dir.join("reports.log"));
    let mut device_killed = false;
    let mut timed_out = false;
    let mut boot = None;
    let mut scenario_ends = Vec::new();
    let qemu_status = loop {
        let exited = reaper
            .children
            .iter_mut()
            .find(|(n, _)| n == "qemu")
            .and_then(|(_, q)| q.try_wait().ok().flatten());
        // Reports arrive on their own port and, as a copy for people, on the console: they are
        // echoed from their port only (once), markers are looked for in both.
        let reports = report_tail.poll();
        let echo = reports.len();
        for line in &reports {
            match Report::in_line(line) {
                Some(Ok(Report::ScenarioEnd(e))) => {
                    scenario_ends.push((e.scenario, t0.elapsed().as_secs_f64()));
                }
                Some(_) if boot.is_none() => boot = Some(t0.elapsed().as_secs_f64()),
                _ => {}
            }
        }
        for (n, line) in reports.into_iter().chain(tail.poll()).enumerate() {
            if let Some(Ok(r)) =
                Report::in_line(&line).filter(|_| n < echo && !opts.echo.is_empty())
            {
                let kind = r.kind();
                if opts.echo.iter().any(|k| *k == kind) {
                    match &r {
                        Report::Progress(p) if !opts.echo_json => {
                            eprintln!("{}{}", opts.echo_prefix, progress_line(p, t0, dir));
                        }
                        Report::Bench(b) if !opts.echo_json => eprintln!(
                            "{}  [{:>4}s] {:<12} {:>8} B  depth {:>2}  {} queue(s): {:>7.1} MB/s {:>7.0} ops/s  p50 {:.0} us{}",
                            opts.echo_prefix,
                            t0.elapsed().as_secs(),
                            if b.device.is_empty() { "dmalab" } else { &b.device },
                            b.len,
                            b.depth,
                            b.queues.max(1),
                            b.mb_per_s,
                            b.ops_per_s,
                            b.p50_us,
                            if b.failed > 0 { format!("  {} FAILED", b.failed) } else { String::new() }
                        ),
                        _ => eprintln!(
                            "{}  [{:>4}s] {}",
                            opts.echo_prefix,
                            t0.elapsed().as_secs(),
                            r.line()
                        ),
                    }
                }
            }
            if !device_killed
                && opts
                    .kill_device_on
                    .as_ref()
                    .is_some_and(|m| line.contains(m.as_str()))
            {
                // Surprise removal: the device vanishes under the running guest.
                if let Some((_, dev)) = reaper.children.iter_mut().find(|(n, _)| n == "device") {
                    if let Ok(None) = dev.try_wait() {
                        let _ = dev.kill();
                    }
                }
                device_killed = true;
            }
        }
        if exited.is_some() {
            break exited;
        }
        if t0.elapsed() > opts.timeout {
            timed_out = true;
            break reaper.stop("qemu", Duration::ZERO);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Watched {
        console: tail.finish(),
        reports: report_tail.finish(),
        qemu_status,
        timed_out,
        device_killed,
        boot,
        scenario_ends,
    }
}

/// Boots a VM as `opts` says and waits for it to power off (or for the timeout). Waits first
/// for a VM slot ([`crate::slots`]): no more VMs run at once than the machine has cores.
pub fn run(opts: &VmOptions) -> Run {
    let (r, agent_started) = run_once(opts);
    let aborted = std::fs::read_to_string(r.dir.join("qemu.err")).unwrap_or_default();
    let Some(why) = qemu_boot_abort(&aborted).filter(|_| !agent_started) else {
        return r;
    };
    // QEMU 10.2's own race, not the guest's or ours: nothing of the run had started
    let kept = r.dir.with_file_name(format!("{}.qemu-abort", opts.name));
    let _ = std::fs::remove_dir_all(&kept);
    let _ = std::fs::rename(&r.dir, &kept);
    eprintln!(
        "dmalab: {}: QEMU aborted while the guest booted ({why}); booting once more (the first attempt's logs: {})",
        opts.name,
        kept.display()
    );
    run_once(opts).0
}

/// The assertion QEMU aborted on, if `qemu_err` (its stderr) shows one. Under MTTCG, QEMU 10.2
/// can abort in `iotlb_to_section` while the guest kernel maps PCI BARs on one vCPU and another
/// vCPU's access looks up the memory map being replaced: a boot that never reached the agent.
fn qemu_boot_abort(qemu_err: &str) -> Option<String> {
    qemu_err
        .lines()
        .find(|l| l.contains(": Assertion `") && l.ends_with("failed."))
        .map(|l| l.trim().to_string())
}

/// One VM run; also whether the guest agent started (its first report arrived).
fn run_once(opts: &VmOptions) -> (Run, bool) {
    let e2e = artifacts::root().join("target/e2e");
    let dir = e2e.join(&opts.name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create run directory");
    assert!(
        !(opts.oracle && opts.conditions.ram_high),
        "the ownership oracle does not follow guest RAM above 4 GiB yet (ram>4G)"
    );
    assert!(
        !(opts.iommu && opts.conditions.ram_high),
        "ram>4G is a machine without an IOMMU"
    );
    let asked = Instant::now();
    let slot = crate::slots::acquire(&e2e.join(".slots"));
    let waited = asked.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut reaper = Reaper {
        children: Vec::new(),
    };
    let sock = start_device(opts, &dir, &mut reaper);
    start_qemu(opts, &dir, &sock, &mut reaper);
    let w = watch(opts, &dir, &mut reaper);
    // The server leaves by itself when the client disconnects.
    let device_status = reaper.stop("device", Duration::from_secs(20));
    drop(reaper);
    drop(slot);
    let mut since = w.boot.unwrap_or(0.0);
    let scenarios = w
        .scenario_ends
        .iter()
        .map(|(s, end)| {
            let took = end - since;
            since = *end;
            (s.clone(), took)
        })
        .collect();
    crate::timings::append(
        &e2e.join("timings.jsonl"),
        &crate::timings::VmTiming {
            name: opts.name.clone(),
            waited,
            boot: w.boot,
            scenarios,
            total: started.elapsed().as_secs_f64(),
        },
    );

    // Reports come on their own serial port, where no kernel message can cut into a line;
    // an agent without that port writes them on the console only.
    let channel = if w.reports.contains(dmalab_report::PREFIX) {
        &w.reports
    } else {
        &w.console
    };
    let (mut reports, mut unparsed) = (Vec::new(), Vec::new());
    for line in channel.lines() {
        match Report::in_line(line) {
            Some(Ok(r)) => reports.push(r),
            Some(Err(e)) => unparsed.push(format!("{e}: {line}")),
            None => {}
        }
    }
    let events = events_in(&dir.join("events.jsonl"), opts.event_kinds).collect();
    let oracle = opts.oracle.then(|| {
        let modules: Vec<(&str, &[(u64, String)])> = reports
            .iter()
            .filter_map(ModuleSymbols::of)
            .map(|m| (m.module.as_str(), m.symbols.as_slice()))
            .collect();
        let symbols = crate::oracle::Symbols::new(system_map(opts).as_deref(), &modules);
        crate::oracle::read(&dir, &symbols).unwrap_or_default()
    });
    let run = Run {
        dir,
        reports,
        unparsed,
        console: w.console,
        events,
        timed_out: w.timed_out,
        device_killed: w.device_killed,
        qemu_status: w.qemu_status,
        device_status,
        expected_device_errors: opts.expected_device_errors.clone(),
        dma_api_debug: opts.dma_api_debug,
        oracle,
    };
    (run, w.boot.is_some())
}

#[cfg(test)]
mod boot_abort_tests {
    use super::qemu_boot_abort;

    #[test]
    fn only_qemus_own_assertion_counts() {
        let err = "qemu-system-x86_64: -device {...}: warning: vfio vfio-user:/x/dev.sock: Could not enable error recovery for the device\nqemu-system-x86_64: ../system/physmem.c:760: iotlb_to_section: Assertion `section_index < d->map.sections_nb' failed.\n";
        assert!(qemu_boot_abort(err).is_some_and(|w| w.contains("iotlb_to_section")));
        assert_eq!(
            qemu_boot_abort("qemu-system-x86_64: terminating on signal 15\n"),
            None
        );
        assert_eq!(qemu_boot_abort(""), None);
    }
}

impl Run {
    /// Panics with `msg`, where the logs are, and the end of the console.
    pub fn fail(&self, msg: &str) -> ! {
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{msg}\n  logs kept in {} (console.log, device.log, device.err, events.jsonl, qemu.err)\n  console tail:\n    {}",
            self.dir.display(),
            tail.join("\n    ")
        );
    }

    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            self.fail(msg);
        }
    }

    /// Reports of one kind, in order: `r.all::<Xfer>()`.
    pub fn all<K: Kind>(&self) -> Vec<&K> {
        self.reports.iter().filter_map(K::of).collect()
    }

    /// The single (or last) report of a kind.
    pub fn one<K: Kind>(&self) -> &K {
        self.all::<K>().pop().unwrap_or_else(|| {
            self.fail(&format!(
                "the agent reported no '{}' (report lines that did not parse: {:?})",
                K::NAME,
                self.unparsed
            ))
        })
    }

    /// Device events of one kind (`"fetch"`, `"error"`, ... as in the log's `event` field).
    pub fn events(&self, kind: &str) -> Vec<&Event> {
        self.events
            .iter()
            .map(|r| &r.event)
            .filter(|e| e.kind() == kind)
            .collect()
    }

    /// The faults the device injected, in order.
    pub fn faults(&self) -> Vec<&Injected> {
        self.events
            .iter()
            .filter_map(|r| match &r.event {
                Event::Fault(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    /// The device's error events: (queue, tag, status, what).
    pub fn device_errors(&self) -> Vec<DeviceError<'_>> {
        self.events
            .iter()
            .filter_map(|r| match &r.event {
                Event::Error {
                    queue,
                    tag,
                    status,
                    what,
                } => Some(DeviceError {
                    queue: *queue,
                    tag: *tag,
                    status: *status,
                    what,
                }),
                _ => None,
            })
            .collect()
    }

    /// The device's error events (refused doorbells and register writes, refused descriptors,
    /// DMA outside the mappings, rings unmapped while enabled, ...) that nothing explains: not
    /// an injected fault on the same request (queue and tag), not a request the agent had
    /// refused on purpose, not an expectation the test declared.
    pub fn unexplained_device_errors(&self) -> Vec<DeviceError<'_>> {
        // a fault that only changes timing (a late start or completion, a lost or spurious
        // interrupt) explains no error of the device's
        let faulted: HashSet<(u16, u32)> = self
            .faults()
            .iter()
            .filter(|f| {
                !matches!(
                    f.fault,
                    FaultKind::DelayCompletion { .. }
                        | FaultKind::DelayStart { .. }
                        | FaultKind::SpuriousIrq
                        | FaultKind::LostIrq
                        | FaultKind::Mark
                )
            })
            .map(|f| (f.queue, f.tag))
            .collect();
        let refused: HashSet<(u16, u32)> = self
            .all::<Refused>()
            .iter()
            .map(|r| (u16::from(r.queue), r.tag))
            .collect();
        self.device_errors()
            .into_iter()
            .filter(|e| {
                !e.key()
                    .is_some_and(|k| faulted.contains(&k) || refused.contains(&k))
            })
            .filter(|e| {
                !self
                    .expected_device_errors
                    .iter()
                    .any(|(text, _)| e.what.contains(text))
            })
            .collect()
    }

    /// The device's final counters (written when the client disconnects).
    pub fn device_counters(&self) -> CountersSnapshot {
        self.events
            .iter()
            .rev()
            .find_map(|r| match r.event {
                Event::Counters(c) => Some(c),
                _ => None,
            })
            .unwrap_or_else(|| self.fail("the device wrote no final counters"))
    }

    /// [`Run::assert_ran_cleanly`], and, when the ownership oracle was on, it saw no guest CPU
    /// access to memory the device owned.
    pub fn assert_clean(&self) {
        self.assert_ran_cleanly();
        if let Some(o) = &self.oracle {
            self.check(
                o.violations.is_empty(),
                &format!(
                    "the ownership oracle saw the guest touch memory the device owned:\n    {}",
                    o.violations
                        .iter()
                        .take(10)
                        .map(|v| format!(
                            "{} by {} (queue {} tag {:#x}, {} bytes at {:#x}, {} time(s))",
                            v.kind,
                            v.site(),
                            v.queue,
                            v.tag,
                            v.size,
                            v.gpa,
                            v.count
                        ))
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ),
            );
        }
    }

    /// The run ended normally: the agent finished every scenario, the VM powered off in time,
    /// the kernel log is clean, DMA-API debug saw no error, the device reports no error nothing
    /// explains, the device server exited 0, and an ownership oracle that was on watched the
    /// whole run (its plugin closed its account, no register store lost its synchronization,
    /// the table never overflowed).
    pub fn assert_ran_cleanly(&self) {
        if let Some(o) = &self.oracle {
            let s = o.summary.as_ref().unwrap_or_else(|| {
                self.fail("the oracle plugin wrote no summary (was it loaded? see qemu.err)")
            });
            self.check(
                s["sync_timeouts"] == 0 && s["table_overflow"] == 0,
                &format!("the oracle lost track: {s}"),
            );
        }
        self.check(
            !self.timed_out,
            "the VM did not power off before the timeout",
        );
        let done = self.one::<Done>();
        if let Some(e) = self.all::<ScenarioError>().first() {
            self.fail(&format!(
                "the agent's scenario '{}' stopped: {}",
                e.scenario, e.error
            ));
        }
        self.check(done.completed, "the agent did not complete every scenario");
        let problems = crate::kernel_log::problems(&self.console);
        self.check(
            problems.is_empty(),
            &format!("kernel log problems:\n    {}", problems.join("\n    ")),
        );
        let unexplained = self.unexplained_device_errors();
        self.check(
            unexplained.is_empty(),
            &format!(
                "the device reports {} error(s) nothing in the test explains (events.jsonl):\n    {}",
                unexplained.len(),
                unexplained
                    .iter()
                    .take(10)
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n    ")
            ),
        );
        for d in self.all::<DmaApi>() {
            match d.errors {
                None if !self.dma_api_debug => {}
                None => self.fail("DMA-API debug is not available in the guest"),
                Some(n) => self.check(n == 0, &format!("DMA-API debug errors: {d:?}")),
            }
        }
        self.check(
            self.device_status.is_some_and(|s| s.success()) || self.device_killed,
            &format!("device server exit: {:?}", self.device_status),
        );
    }
}

/// An error event of the device, borrowed from a [`Run`]'s log.
#[derive(Debug, Clone, Copy)]
pub struct DeviceError<'a> {
    pub queue: Option<u16>,
    pub tag: Option<u32>,
    /// The completion status written for the request, if any.
    pub status: Option<u16>,
    pub what: &'a str,
}

impl DeviceError<'_> {
    /// The request it concerns: (queue, tag).
    pub fn key(&self) -> Option<(u16, u32)> {
        Some((self.queue?, self.tag?))
    }
}

impl std::fmt::Display for DeviceError<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((q, t)) = self.key() {
            write!(f, "queue {q} tag {t:#x}: ")?;
        }
        if let Some(s) = self.status {
            let name = dmalab_abi::Status::from_raw(s).map_or("?", |s| s.name());
            write!(f, "status {name}: ")?;
        }
        f.write_str(self.what)
    }
}

/// The device's event log at `path`, line by line as the device wrote it (only the `kinds`
/// listed, when given: lines of other kinds are not even parsed, so a benchmark's log of tens
/// of millions of events streams through in little memory). A missing file has no events.
pub fn events_in<'a>(
    path: &Path,
    kinds: Option<&'a [&'a str]>,
) -> impl Iterator<Item = Record> + 'a {
    use std::io::BufRead;
    let lines = File::open(path)
        .map(|f| std::io::BufReader::new(f).lines().map_while(Result::ok))
        .into_iter()
        .flatten();
    lines
        .filter(move |line| {
            kinds.is_none_or(|k| {
                k.iter()
                    .any(|k| line.contains(&format!("\"event\":\"{k}\"")))
            })
        })
        .filter_map(|l| Record::parse(&l))
}
