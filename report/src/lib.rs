//! What the guest agent tells the host: one [`Report`] per console line, as JSON after
//! [`PREFIX`]. The agent builds these types and the harness parses them back, so a field renamed
//! on one side fails to compile on the other instead of failing a test.
//!
//! Reports are facts (what was asked, what came back, whether bytes matched); verdicts are the
//! harness's job. A value the guest could not measure is `None` (for example DMA-API entries
//! without `CONFIG_DMA_API_DEBUG`), never a made-up number.
#![forbid(unsafe_code)]

use dmalab_abi as abi;
use serde::{Deserialize, Serialize};

/// Marker in front of every report line on the console.
pub const PREFIX: &str = "@@DMALAB ";

/// In an [`Xfer`]'s `detail`: the request handed back another process's data (the agent seeded
/// the driver's buffers with a secret first; docs/faults.md, stale bytes).
pub const STALE_DETAIL: &str = "bytes of another process's data";

/// One report line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    /// The agent started and will run these scenarios.
    Start(Start),
    /// A scenario could not run to its end.
    Error(ScenarioError),
    /// A scenario ended.
    ScenarioEnd(ScenarioEnd),
    /// Every scenario ended; the agent powers the VM off next.
    Done(Done),
    /// The driver module was loaded.
    Insmod(Insmod),
    /// The driver module was unloaded.
    Rmmod(Rmmod),
    /// Which driver the dmalab device is bound to, and its PCI command register.
    Bound(Bound),
    /// The driver's lines of `/proc/interrupts`.
    Interrupts(Interrupts),
    /// A request the device stalls, and the queue afterwards.
    Stalled(Stalled),
    /// What kmemleak found.
    Leaks(Leaks),
    /// The DMA-API debug error count at some point.
    DmaApi(DmaApi),
    /// `IOC_INFO`.
    Info(Info),
    /// One request and its checked outcome.
    Xfer(Xfer),
    /// The device's CRC32C of some data against the guest's own.
    CrcCheck(CrcCheck),
    /// Threads submitting on every queue at once.
    Concurrent(Concurrent),
    /// `IOC_STATS`, summed over queues and per queue.
    Stats(Stats),
    /// A request the driver or device must refuse, and how it was refused.
    Refused(Refused),
    /// Progress of a long scenario.
    Progress(Progress),
    /// One load of the module with `probe_fail_step` set.
    ProbeStep(ProbeStep),
    /// The probe error-path scenario's totals.
    ProbeUnwind(ProbeUnwind),
    /// The agent asks the host to make the device vanish now.
    RemoveMe,
    /// A request after the device vanished.
    AfterRemoval(AfterRemoval),
    /// Unbinding the driver failed.
    UnbindError(UnbindError),
    /// Unbind with requests in flight on every queue.
    UnbindBusy(UnbindBusy),
    /// Unbind while a request waits on a stalled device.
    UnbindStalled(UnbindStalled),
    /// `IOC_RESET`.
    Reset(ResetOutcome),
    /// One throughput measurement.
    Bench(Bench),
    /// A campaign unit ran to its end (its faults and requests are all reported).
    UnitDone(UnitDone),
    /// The hostile-guest scenario's findings.
    Hostile(Hostile),
    /// `IOC_DMA_SELFTEST`: one streaming mapping handed between CPU and device.
    DmaSelfTest(DmaSelfTest),
    /// Where the driver module's functions are, right after a load (`/proc/kallsyms`), so the
    /// host can name the function behind a guest PC.
    ModuleSymbols(ModuleSymbols),
    /// READs the device shortens silently, after another process's requests left a secret in
    /// the driver's buffers: did any caller get the secret back?
    StaleBytes(StaleBytes),
    /// Unbind while another process holds `/dev/dmalab0` open and keeps calling it.
    UnbindHeld(UnbindHeld),
}

/// See [`Report::Start`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// Comma-separated scenario names.
    pub scenarios: String,
    /// The guest kernel's release string.
    pub kernel: String,
}

/// See [`Report::Error`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioError {
    /// The scenario.
    pub scenario: String,
    /// Why it stopped.
    pub error: String,
}

/// See [`Report::ScenarioEnd`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioEnd {
    /// The scenario.
    pub scenario: String,
    /// It ran to its end.
    pub completed: bool,
}

/// See [`Report::Done`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// Every scenario ran to its end.
    pub completed: bool,
}

/// See [`Report::Insmod`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insmod {
    /// `finit_module` succeeded.
    pub ok: bool,
    /// Its error, empty on success.
    pub error: String,
    /// How long it took, in microseconds.
    pub us: u64,
}

/// See [`Report::Rmmod`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rmmod {
    /// `delete_module` succeeded.
    pub ok: bool,
    /// Its error, empty on success.
    pub error: String,
    /// The module is still listed in `/proc/modules` afterwards.
    pub still_loaded: bool,
}

/// See [`Report::Bound`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// When it was looked at (`loaded`, `unloaded`).
    pub when: String,
    /// The PCI address of the dmalab device (`0000:00:03.0`).
    pub bdf: String,
    /// The name of the driver bound to it, if any.
    pub driver: Option<String>,
    /// Its PCI command register (bit 1 memory space, bit 2 bus master).
    pub command: u16,
    /// The kernel's count of enables of the device (sysfs `enable`: `pci_enable_device_mem`
    /// and friends, which the firmware's settings do not count); `None` if unreadable.
    #[serde(default)]
    pub enable_count: Option<u32>,
}

impl Bound {
    /// The command register enables memory decoding and bus mastering.
    pub fn enabled(&self) -> bool {
        self.command & 0b110 == 0b110
    }
}

/// See [`Report::Leaks`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaks {
    /// Unreferenced objects kmemleak reports; `None` when kmemleak is off.
    pub suspects: Option<u64>,
    /// The first one's report, folded onto one line.
    pub first: String,
}

/// See [`Report::Stalled`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stalled {
    /// The stalled request returned within 20 s (its timeout is 2 s).
    pub returned: bool,
    /// Its errno, if it returned.
    pub errno: i32,
    /// How long it took, in milliseconds (20000 if it never returned).
    pub ms: u64,
}

/// See [`Report::Interrupts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interrupts {
    /// Each `/proc/interrupts` line naming `dmalab`: (IRQ number, interrupts summed over CPUs,
    /// the line's last word: the handler's name).
    pub lines: Vec<(String, u64, String)>,
}

/// See [`Report::DmaApi`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DmaApi {
    /// When it was read (`loaded`, `unloaded`).
    pub when: String,
    /// DMA-API debug's error count; `None` when DMA-API debug is not available.
    pub errors: Option<u64>,
    /// Live coherent allocations and mappings of the dmalab device then (DMA-API debug's
    /// dump); `None` when DMA-API debug is not available.
    #[serde(default)]
    pub entries: Option<usize>,
}

/// See [`Report::Info`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The ID register.
    pub magic: u32,
    /// The VERSION register.
    pub version: u32,
    /// Queue pairs the driver uses.
    pub queues: u32,
    /// Interrupt vectors the driver got.
    pub vectors: u32,
    /// `msix`, `msi` or `intx`.
    pub irq_mode: String,
    /// Ring entries per queue.
    pub ring_size: u32,
    /// Width of the DMA mask the driver says it set (IOC_INFO).
    pub dma_mask_bits: u32,
    /// Width of the DMA mask the kernel holds for the device (sysfs `dma_mask_bits`): what the
    /// driver really set, whatever it says. 0: not read.
    #[serde(default)]
    pub kernel_dma_mask_bits: u32,
    /// The device's internal memory in bytes.
    pub mem_size: u64,
    /// The PCI bus/device/function.
    pub bdf: u32,
    /// How requests reach user memory (`abi::DMA_MODE_*`).
    #[serde(default)]
    pub dma_mode: u32,
    /// Auto mode: the smallest request that goes zero-copy.
    #[serde(default)]
    pub zero_copy_min: u32,
}

/// See [`Report::Xfer`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Xfer {
    /// The scenario (or step of one) that ran it.
    pub scenario: String,
    /// `copy`, `write`, `read`, `fill` or `checksum`.
    pub op: String,
    /// The queue it ran on.
    pub queue: u8,
    /// Bytes asked for.
    pub len: u32,
    /// Scatter-gather segments the driver used (0: one contiguous buffer).
    pub segments: u32,
    /// The completion status the driver passed back (`abi::Status`).
    pub status: u32,
    /// The ioctl's errno, 0 on success.
    pub errno: i32,
    /// The completion's result word (CHECKSUM: the CRC32C).
    pub result: u32,
    /// Bytes the device says it moved.
    pub bytes: u32,
    /// The descriptor tag the driver used.
    pub tag: u32,
    /// Every byte the request produced was checked and right.
    pub verified: bool,
    /// What was wrong, when something was.
    pub detail: String,
    /// How the driver reached the caller's memory (`abi::PATH_*`: none, bounce, zero-copy).
    #[serde(default)]
    pub path: u32,
    /// A campaign's request number (its opcode and size follow from the seed and this number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_index: Option<u64>,
    /// The other half's tag of a WRITE + READ pair (same queue): a WRITE is only verified by
    /// reading it back, so a fault on either half can explain the other's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner_tag: Option<u32>,
}

impl Xfer {
    /// Submitted, completed with OK and verified byte for byte.
    pub fn ok(&self) -> bool {
        self.errno == 0 && self.status == u32::from(abi::Status::Ok.raw()) && self.verified
    }
}

/// See [`Report::CrcCheck`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrcCheck {
    /// The errno of the two requests (0: both succeeded).
    pub errno: i32,
    /// The device's CRC32C.
    pub device_crc: u32,
    /// The guest's CRC32C of the same bytes.
    pub guest_crc: u32,
    /// The two agree.
    #[serde(rename = "match")]
    pub matches: bool,
}

/// See [`Report::Concurrent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concurrent {
    /// Submitting threads.
    pub threads: u64,
    /// Queues they were spread over.
    pub queues: u64,
    /// Requests verified.
    pub verified: u64,
    /// Requests that failed.
    pub failed: u64,
}

/// See [`Report::Stats`]: `IOC_STATS` as the driver answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Queues the driver uses: the first `queues` entries of `ioctl.queue` are live.
    pub queues: u32,
    /// The ioctl's answer (boxed: it is 0.5 KiB, every other report is small).
    pub ioctl: Box<abi::Stats>,
}

impl Stats {
    /// The counters of the queues in use.
    pub fn per_queue(&self) -> &[abi::QueueStats] {
        let n = (self.queues as usize).min(abi::MAX_QUEUES);
        &self.ioctl.queue[..n]
    }

    /// The per-queue counters summed over all queues.
    pub fn total(&self) -> abi::QueueStats {
        self.ioctl
            .queue
            .iter()
            .fold(abi::QueueStats::default(), |t, q| abi::QueueStats {
                submitted: t.submitted + q.submitted,
                completed: t.completed + q.completed,
                errors: t.errors + q.errors,
                timeouts: t.timeouts + q.timeouts,
                irqs: t.irqs + q.irqs,
                stray_completions: t.stray_completions + q.stray_completions,
                resets: t.resets + q.resets,
                bytes: t.bytes + q.bytes,
            })
    }
}

/// See [`Report::Refused`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    /// Which bad request.
    pub case: String,
    /// The queue it was sent to.
    pub queue: u8,
    /// The tag the driver gave it (0 when the driver refused it before the device saw it): the
    /// device's error event for it carries the same queue and tag.
    pub tag: u32,
    /// The ioctl's errno.
    pub errno: i32,
    /// The completion status (0 when the driver refused it before the device saw it).
    pub status: u32,
}

/// See [`Report::Progress`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done.
    pub done: u64,
    /// Steps in all.
    pub total: u64,
    /// Steps done that failed.
    #[serde(default)]
    pub failed: u64,
    /// Milliseconds since the first step started (in the guest).
    #[serde(default)]
    pub ms: u64,
}

/// See [`Report::ProbeStep`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStep {
    /// The `probe_fail_step` value.
    pub step: u32,
    /// The driver bound (the probe succeeded).
    pub bound: bool,
    /// `/dev/dmalab0` exists.
    pub node: bool,
    /// DMA-API debug entries (coherent allocations, mappings) of the device; `None` without
    /// DMA-API debug.
    pub dma_entries: Option<u64>,
    /// The DMA-API debug error count after the step (failed steps only).
    #[serde(default)]
    pub dma_errors: Option<u64>,
}

/// See [`Report::ProbeUnwind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeUnwind {
    /// Probe steps made to fail.
    pub failed_steps: u32,
    /// New DMA-API debug errors over the whole scenario.
    pub dma_errors: Option<u64>,
    /// kmemleak suspects at the end; `None` when kmemleak is off.
    pub kmemleak: Option<u64>,
}

/// See [`Report::AfterRemoval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AfterRemoval {
    /// The ioctl's errno.
    pub errno: i32,
    /// How long it took, in milliseconds.
    pub ms: u64,
}

/// See [`Report::UnbindError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnbindError {
    /// The errno of the sysfs write.
    pub errno: i32,
}

/// See [`Report::DmaSelfTest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DmaSelfTest {
    /// Bytes mapped (half copied onto the other half each round).
    pub len: u32,
    /// Rounds asked for.
    pub rounds: u32,
    /// Rounds whose result the driver read back after syncing for the CPU and found right.
    pub verified: u32,
    /// The ioctl's errno, 0 on success.
    pub errno: i32,
}

/// See [`Report::UnbindBusy`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnbindBusy {
    /// Submitting threads.
    pub threads: u64,
    /// Requests completed before the unbind.
    pub completed_before: u64,
    /// Threads whose request failed with ENODEV.
    pub enodev: u64,
    /// Threads that saw any other error.
    pub other_errors: u64,
    /// How long the unbind took, in microseconds.
    pub unbind_us: u64,
}

/// See [`Report::UnbindStalled`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnbindStalled {
    /// The waiting request's errno.
    pub errno: i32,
    /// How long it waited, in milliseconds.
    pub waited_ms: u64,
}

/// See [`Report::StaleBytes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleBytes {
    /// READs submitted (each silently shortened by the device).
    pub reads: u32,
    /// READs that completed OK.
    pub completed: u32,
    /// READs that handed back bytes of the other process's secret.
    pub leaked: u32,
    /// Of the first such READ: how many of its bytes were the secret's, of how many.
    pub secret_bytes: u32,
    pub len: u32,
    /// The other process's requests that seeded the secret (0: seeding failed).
    pub seeded: u32,
}

/// See [`Report::UnbindHeld`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnbindHeld {
    /// The holder's calls (IOC_INFO, IOC_SUBMIT) after the unbind returned.
    pub calls_after: u64,
    /// Of those, the ones that failed with ENODEV.
    pub enodev: u64,
    /// The errno of the first that did anything else (0: none).
    pub other_errno: i32,
    /// The device's live DMA-API debug entries after the unbind, while the file was still
    /// open (`None` without DMA-API debug): 0 when the driver released its DMA memory at
    /// unbind.
    pub entries_while_held: Option<usize>,
    /// The same after the holder closed the file.
    pub entries_after_close: Option<usize>,
}

/// See [`Report::Reset`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetOutcome {
    /// The ioctl succeeded.
    pub ok: bool,
    /// Its error, empty on success.
    pub error: String,
}

/// See [`Report::UnitDone`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitDone {
    /// The unit (also the device's fault epoch while it ran).
    pub unit: u64,
    /// Its first request's number.
    pub first: u64,
    /// Requests it ran (numbers `first..first + ops`).
    pub ops: u64,
}

/// See [`Report::Bench`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bench {
    /// The opcode measured.
    pub op: String,
    /// Bytes per request.
    pub len: u64,
    /// Requests in flight.
    pub depth: u64,
    /// Requests completed.
    pub ops: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Wall time of the measurement.
    pub seconds: f64,
    /// Throughput in MB/s.
    pub mb_per_s: f64,
    /// Requests per second.
    pub ops_per_s: f64,
    /// What was measured: `dmalab` (this project's driver), `nvme` (QEMU's NVMe through the
    /// kernel's driver, a namespace whose reads write zeroes into the buffer), `nvme-nodata`
    /// (reads that move no data), `edu` (QEMU's edu, 4 KiB to the device and back),
    /// `guest-memcpy` (a user-space memcpy of `len` bytes in the guest: what one bounce copy
    /// costs). Empty in older reports means `dmalab`.
    #[serde(default)]
    pub device: String,
    /// Queues the requests were spread over (0 in older reports: one).
    #[serde(default)]
    pub queues: u64,
    /// Latency of one request as the submitting thread saw it, in microseconds: median.
    #[serde(default)]
    pub p50_us: f64,
    /// 99th percentile.
    #[serde(default)]
    pub p99_us: f64,
    /// 99.9th percentile.
    #[serde(default)]
    pub p999_us: f64,
}

/// See [`Report::ModuleSymbols`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModuleSymbols {
    /// The module.
    pub module: String,
    /// (address, name) of each text symbol, as the kernel lists them.
    pub symbols: Vec<(u64, String)>,
}

/// See [`Report::Hostile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hostile {
    /// Legitimate FILLs that completed between the hostile programming.
    pub legit_done: u32,
    /// Their data arrived.
    pub legit_data: bool,
    /// Canary pages watched.
    pub canary_pages: u64,
    /// Bytes changed in canary pages.
    pub stray_bytes: u64,
    /// Where the first changed byte was.
    pub first_stray: String,
    /// The ERROR register afterwards.
    pub error_bits: u32,
    /// The DEV_STATUS register afterwards.
    pub status: u32,
}

impl Report {
    /// The console line for this report (with [`PREFIX`], without a newline).
    pub fn line(&self) -> String {
        // Serializing these plain structs cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{PREFIX}{json}")
    }

    /// The `kind` name on the wire (`xfer`, `remove_me`, ...).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("kind")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The report in a console line, if it holds one: `None` for other lines, `Some(Err)` for a
    /// report line that does not parse (a harness/agent mismatch, or a line mangled by kernel
    /// messages written at the same time).
    pub fn in_line(line: &str) -> Option<Result<Report, serde_json::Error>> {
        let at = line.find(PREFIX)?;
        Some(serde_json::from_str(line[at + PREFIX.len()..].trim()))
    }
}

/// Picks reports of one kind out of a list: `Xfer::of(report)`.
pub trait Kind: Sized {
    /// The `kind` name on the wire.
    const NAME: &'static str;
    /// This report, if it is of this kind.
    fn of(report: &Report) -> Option<&Self>;
}

macro_rules! kinds {
    ($($ty:ident => $variant:ident, $name:literal;)*) => {$(
        impl Kind for $ty {
            const NAME: &'static str = $name;
            fn of(report: &Report) -> Option<&Self> {
                match report {
                    Report::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    )*};
}

kinds! {
    Start => Start, "start";
    ScenarioError => Error, "error";
    ScenarioEnd => ScenarioEnd, "scenario_end";
    Done => Done, "done";
    Insmod => Insmod, "insmod";
    Rmmod => Rmmod, "rmmod";
    Bound => Bound, "bound";
    Interrupts => Interrupts, "interrupts";
    Stalled => Stalled, "stalled";
    Leaks => Leaks, "leaks";
    DmaApi => DmaApi, "dma_api";
    Info => Info, "info";
    Xfer => Xfer, "xfer";
    CrcCheck => CrcCheck, "crc_check";
    Concurrent => Concurrent, "concurrent";
    Stats => Stats, "stats";
    Refused => Refused, "refused";
    Progress => Progress, "progress";
    ProbeStep => ProbeStep, "probe_step";
    ProbeUnwind => ProbeUnwind, "probe_unwind";
    AfterRemoval => AfterRemoval, "after_removal";
    UnbindError => UnbindError, "unbind_error";
    UnbindBusy => UnbindBusy, "unbind_busy";
    UnbindStalled => UnbindStalled, "unbind_stalled";
    ResetOutcome => Reset, "reset";
    Bench => Bench, "bench";
    UnitDone => UnitDone, "unit_done";
    Hostile => Hostile, "hostile";
    DmaSelfTest => DmaSelfTest, "dma_self_test";
    ModuleSymbols => ModuleSymbols, "module_symbols";
    StaleBytes => StaleBytes, "stale_bytes";
    UnbindHeld => UnbindHeld, "unbind_held";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_console_round_trip() {
        let r = Report::ProbeStep(ProbeStep {
            step: 3,
            bound: false,
            node: false,
            dma_entries: Some(0),
            dma_errors: None,
        });
        let line = format!("[    3.1] noise {}\r", r.line());
        assert_eq!(Report::in_line(&line).unwrap().unwrap(), r);
        assert!(r.line().contains("\"kind\":\"probe_step\""));
        assert!(Report::in_line("[    3.1] dmalab: probe").is_none());
        assert!(Report::in_line("@@DMALAB {\"kind\":\"nonsense\"}")
            .unwrap()
            .is_err());
    }

    #[test]
    fn unit_and_flattened_reports_round_trip() {
        for r in [
            Report::RemoveMe,
            Report::Stats(Stats {
                queues: 2,
                ioctl: Box::new(abi::Stats {
                    error_bits: 4,
                    ..Default::default()
                }),
            }),
        ] {
            assert_eq!(Report::in_line(&r.line()).unwrap().unwrap(), r);
        }
    }

    #[test]
    fn every_kind_name_is_the_wire_name() {
        let x = Report::Done(Done { completed: true });
        assert!(x.line().contains(&format!("\"kind\":\"{}\"", Done::NAME)));
        assert_eq!(Done::of(&x), Some(&Done { completed: true }));
        assert_eq!(Xfer::of(&x), None);
    }
}
