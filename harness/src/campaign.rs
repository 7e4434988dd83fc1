//! Fault campaigns: many requests under seeded random faults, judged fault by fault.
//!
//! A campaign of `ops` requests is cut into units of `unit` requests. Before a unit the agent
//! writes its number to the device's `FAULT_EPOCH` register, which restarts the fault injector
//! for that unit (docs/datasheet.md, "Fault epochs"), and request `i`'s opcode, size and queue
//! follow from the seed and `i` alone. So a unit's faults and outcomes do not depend on which
//! VM runs it or what ran before: units can be spread over VMs (`--jobs`), machines
//! (`--shard I/N`), and interrupted runs (`--resume`), and [`merge`] puts the judged units back
//! together into the very report one VM would have written (docs/campaigns.md).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use dmalab_device::eventlog::{Event, Injected, Record};
use dmalab_report::{DmaApi, Done, Report, UnitDone, Xfer};
use serde::{Deserialize, Serialize};

use crate::verdict::{judge, unexplained_failures, Verdict};
use crate::vm::{run, Run, VmOptions};

/// What a campaign is: everything its results depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    /// Requests in the whole campaign.
    pub ops: u64,
    /// Requests per unit (the device's fault epoch restarts at each unit).
    pub unit: u64,
    /// One request at a time (exact reproduction of every rule); otherwise one thread per
    /// queue keeps a request in flight on every queue.
    pub serial: bool,
    /// The fault rules (TOML), with the seed in force.
    pub rules: String,
    /// The driver's `dma_mode` (`abi::DMA_MODE_*`); `None`: its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dma_mode: Option<u32>,
}

impl Plan {
    pub fn new(seed: u64, ops: u64, rules: &str) -> Self {
        Self {
            seed,
            ops,
            unit: 20,
            serial: false,
            rules: with_seed(rules, seed),
            dma_mode: None,
        }
    }

    /// A short name for the plan (FNV-1a of its JSON): VM run directories carry it, so a
    /// resumed run only salvages runs of the same campaign.
    pub fn id(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let h = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{:08x}", h >> 32)
    }

    pub fn units(&self) -> u64 {
        self.ops.div_ceil(self.unit.max(1))
    }

    /// Shard `i` of `n`: a contiguous, deterministic slice of the units (empty when there are
    /// more shards than units).
    pub fn shard(&self, i: u64, n: u64) -> Range<u64> {
        let u = self.units();
        let n = n.max(1);
        u * i / n..u * (i + 1) / n
    }

    /// The agent's kernel command line for running `units` (docs/campaigns.md).
    pub fn append(&self, units: &[Range<u64>]) -> String {
        let list: Vec<String> = units
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        format!(
            "dmalab.seed={} dmalab.ops={} dmalab.unit={} dmalab.units={} dmalab.mode={}",
            self.seed,
            self.ops,
            self.unit,
            list.join(","),
            if self.serial { "serial" } else { "concurrent" }
        ) + &self
            .dma_mode
            .map(|m| format!(" dmalab_module.dma_mode={m}"))
            .unwrap_or_default()
    }
}

/// One request as judged, without what differs between VMs (tags, times).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The campaign's request number.
    pub op: u64,
    /// 0; 1 for the READ half of a WRITE + READ pair.
    pub half: u8,
    pub opcode: String,
    pub queue: u8,
    pub len: u32,
    pub errno: i32,
    pub status: u32,
    pub bytes: u32,
    pub verified: bool,
    /// It failed and no fault (on it or its pair's other half) explains it.
    pub unexplained: bool,
}

/// One injected fault's verdict, located by request number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultVerdict {
    pub op: u64,
    pub half: u8,
    pub rule: String,
    pub kind: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

/// A unit, judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitResult {
    pub unit: u64,
    pub requests: Vec<Request>,
    pub verdicts: Vec<FaultVerdict>,
    /// Faults that hit no request the agent reported.
    pub orphan_faults: u64,
}

/// What one VM run showed beyond its units' verdicts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub kernel_log_problems: u64,
    pub dma_api_errors: u64,
    pub device_errors_unexplained: u64,
    pub oracle_violations: u64,
    /// Runs that did not reach the agent's end (crashed, hung, interrupted).
    pub runs_incomplete: u64,
}

impl Health {
    fn of(run: &Run) -> Self {
        Self {
            kernel_log_problems: crate::kernel_log::problems(&run.console).len() as u64,
            dma_api_errors: run
                .all::<DmaApi>()
                .iter()
                .filter_map(|d| d.errors)
                .max()
                .unwrap_or(0),
            device_errors_unexplained: run.unexplained_device_errors().len() as u64,
            oracle_violations: run.oracle.as_ref().map_or(0, |o| o.violations.len() as u64),
            runs_incomplete: u64::from(!run.all::<Done>().first().is_some_and(|d| d.completed)),
        }
    }

    fn add(&mut self, o: &Health) {
        self.kernel_log_problems += o.kernel_log_problems;
        self.dma_api_errors += o.dma_api_errors;
        self.device_errors_unexplained += o.device_errors_unexplained;
        self.oracle_violations += o.oracle_violations;
        self.runs_incomplete += o.runs_incomplete;
    }

    pub fn clean(&self) -> bool {
        *self == Health::default()
    }
}

/// The campaign's own requests among everything the agent reported.
/// The faults the device injected into the campaign's units: those after its first `epoch`
/// event. (Before it, another process seeds the driver's buffers with a secret, and the
/// faults its requests meet are not the campaign's: the first epoch write restarts the
/// injector as if its rules had just been loaded.)
pub fn campaign_faults(run: &Run) -> Vec<&Injected> {
    run.events
        .iter()
        .skip_while(|r| !matches!(r.event, Event::Epoch { .. }))
        .filter_map(|r| match &r.event {
            Event::Fault(f) => Some(f),
            _ => None,
        })
        .collect()
}

pub fn campaign_xfers(run: &Run) -> Vec<&Xfer> {
    run.all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "campaign")
        .collect()
}

fn half(x: &Xfer) -> u8 {
    u8::from(x.partner_tag.is_some() && x.op == "read")
}

/// Judges every unit the run finished (those the agent reported `unit_done` for): its faults
/// are the device's fault events after its `epoch` event and before the next one.
pub fn judge_units(reports: &[Report], events: &[Record]) -> Vec<UnitResult> {
    let mut faults: HashMap<u64, Vec<&Injected>> = HashMap::new();
    let mut epoch = None;
    for r in events {
        match &r.event {
            Event::Epoch { epoch: e } => epoch = Some(u64::from(*e)),
            Event::Fault(f) => {
                if let Some(u) = epoch {
                    faults.entry(u).or_default().push(f);
                }
            }
            _ => {}
        }
    }
    let xfers: Vec<&Xfer> = reports
        .iter()
        .filter_map(|r| match r {
            Report::Xfer(x) if x.scenario == "campaign" => Some(x),
            _ => None,
        })
        .collect();
    reports
        .iter()
        .filter_map(|r| match r {
            Report::UnitDone(u) => Some(u),
            _ => None,
        })
        .map(|&UnitDone { unit, first, ops }| {
            let f = faults.get(&unit).cloned().unwrap_or_default();
            let mine: Vec<&Xfer> = xfers
                .iter()
                .copied()
                .filter(|x| {
                    x.op_index
                        .is_some_and(|i| (first..first + ops).contains(&i))
                })
                .collect();
            judge_unit(unit, &f, &mine)
        })
        .collect()
}

fn judge_unit(unit: u64, faults: &[&Injected], xfers: &[&Xfer]) -> UnitResult {
    let at = |queue: u64, tag: u64| {
        xfers
            .iter()
            .find(|x| u64::from(x.queue) == queue && u64::from(x.tag) == tag)
            .map(|x| (x.op_index.unwrap_or(0), half(x)))
    };
    let mut orphan_faults = 0;
    let mut verdicts: Vec<FaultVerdict> = judge(faults, xfers)
        .into_iter()
        .filter_map(|v: Verdict| {
            let Some((op, half)) = at(v.queue, v.tag) else {
                orphan_faults += 1;
                return None;
            };
            Some(FaultVerdict {
                op,
                half,
                rule: v.rule,
                kind: v.kind,
                expected: v.expected.to_string(),
                observed: v.observed,
                pass: v.pass,
            })
        })
        .collect();
    verdicts.sort_by(|a, b| (a.op, a.half, &a.rule).cmp(&(b.op, b.half, &b.rule)));
    let unexplained = unexplained_failures(faults, xfers);
    let mut requests: Vec<Request> = xfers
        .iter()
        .map(|x| Request {
            op: x.op_index.unwrap_or(0),
            half: half(x),
            opcode: x.op.clone(),
            queue: x.queue,
            len: x.len,
            errno: x.errno,
            status: x.status,
            bytes: x.bytes,
            verified: x.verified,
            unexplained: unexplained.iter().any(|u| std::ptr::eq(*u, *x)),
        })
        .collect();
    requests.sort_by_key(|r| (r.op, r.half));
    UnitResult {
        unit,
        requests,
        verdicts,
        orphan_faults,
    }
}

/// The most queues that had a request in flight at once (fetched, not yet completed), from the
/// device's event log: what shows that a campaign really overlapped its requests.
pub fn max_queues_in_flight(events: &[Record]) -> usize {
    let mut open: HashMap<u16, usize> = HashMap::new();
    let mut most = 0;
    for r in events {
        match r.event {
            Event::Fetch { queue, .. } => *open.entry(queue).or_default() += 1,
            Event::Complete { queue, .. } => {
                if let Some(n) = open.get_mut(&queue) {
                    *n = n.saturating_sub(1);
                }
            }
            Event::Reset { .. } => open.clear(),
            _ => {}
        }
        most = most.max(open.values().filter(|&&n| n > 0).count());
    }
    most
}

/// How a campaign shows its progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Not at all (tests).
    Off,
    /// A line for people after every unit.
    Human,
    /// The agent's progress reports as JSON lines, for tools.
    Json,
}

/// Boots one VM that runs `units` of `plan`.
pub fn run_units(
    plan: &Plan,
    name: &str,
    units: &[Range<u64>],
    echo: Echo,
    oracle: bool,
    customize: impl FnOnce(&mut VmOptions),
) -> Run {
    let mut o = VmOptions::new(name, "load,campaign,stats,unload");
    o.oracle = oracle;
    // zero-copy: the memory the device owns is the application's, so its accesses count too
    o.oracle_user = oracle && plan.dma_mode == Some(dmalab_abi::DMA_MODE_ZERO_COPY);
    o.faults = Some(plan.rules.clone());
    o.append = plan.append(units);
    // a campaign may run long: an hour per 2,000 requests is far beyond any healthy pace
    o.timeout = std::time::Duration::from_secs(600 + plan.ops.min(1_000_000) * 2);
    if echo != Echo::Off {
        o.echo = vec!["progress"];
        o.echo_json = echo == Echo::Json;
        o.echo_prefix = name.to_string();
    }
    customize(&mut o);
    run(&o)
}

/// What a campaign in one VM came to (the tests' and `dmalab check`'s view).
pub struct Campaign {
    pub run: Run,
    pub verdicts: Vec<Verdict>,
    /// Requests that failed although no fault touched them.
    pub unexplained: Vec<Xfer>,
    /// The units, judged.
    pub units: Vec<UnitResult>,
    /// The injected faults by request: (rule, fault kind, request number, half), in request
    /// order (the same for the same seed, whatever the interleaving of queues).
    pub sequence: Vec<(String, String, u64, u8)>,
}

impl Campaign {
    /// What the ownership oracle caught (empty when it was off).
    pub fn oracle_violations(&self) -> &[crate::oracle::Violation] {
        self.run
            .oracle
            .as_ref()
            .map_or(&[], |o| o.violations.as_slice())
    }

    /// The campaign's requests, in the order the agent reported them.
    pub fn xfers(&self) -> Vec<&Xfer> {
        campaign_xfers(&self.run)
    }

    /// Passed: every verdict passes, nothing failed unexplained, the kernel log is clean,
    /// DMA-API debug saw no error, and every device-side error is explained by a fault.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
            && self.unexplained.is_empty()
            && Health::of(&self.run).clean()
    }
}

/// `rules` with its seed replaced by `seed`.
pub fn with_seed(rules: &str, seed: u64) -> String {
    let body: Vec<&str> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("seed"))
        .collect();
    format!("seed = {seed}\n{}\n", body.join("\n"))
}

/// Runs the whole of `plan` in one VM.
pub fn campaign(name: &str, plan: &Plan, progress: Echo, oracle: bool) -> Campaign {
    let all = 0..plan.units();
    let run = run_units(
        plan,
        name,
        std::slice::from_ref(&all),
        progress,
        oracle,
        |_| {},
    );
    let faults = campaign_faults(&run);
    let xfers = campaign_xfers(&run);
    let verdicts = judge(&faults, &xfers);
    let unexplained = unexplained_failures(&faults, &xfers)
        .into_iter()
        .cloned()
        .collect();
    let units = judge_units(&run.reports, &run.events);
    let sequence = units
        .iter()
        .flat_map(|u| &u.verdicts)
        .map(|v| (v.rule.clone(), v.kind.clone(), v.op, v.half))
        .collect();
    Campaign {
        run,
        verdicts,
        unexplained,
        units,
        sequence,
    }
}

/// A campaign's results on disk: `plan.json`, one `unit-NNNNNN.json` per judged unit and one
/// `run-NAME.json` (its [`Health`]) per VM run. Shards write their own stores; [`merge`] reads
/// any number of them.
pub struct Store {
    pub dir: PathBuf,
}

impl Store {
    /// Opens (resume) or starts afresh the store in `dir` for `plan`. Resuming a store made
    /// for another plan is refused: its units would not be this campaign's.
    pub fn open(dir: &Path, plan: &Plan, resume: bool) -> Result<Self, String> {
        let s = Self {
            dir: dir.to_path_buf(),
        };
        if resume {
            if let Some(p) = read_plan(dir)? {
                if &p != plan {
                    return Err(format!(
                        "{} holds another campaign (seed {}, {} requests, unit {}, {}): not resuming it",
                        dir.display(),
                        p.seed,
                        p.ops,
                        p.unit,
                        if p.serial { "serial" } else { "concurrent" }
                    ));
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_json(&dir.join("plan.json"), plan)?;
        Ok(s)
    }

    pub fn save_unit(&self, u: &UnitResult) -> Result<(), String> {
        write_json(&self.dir.join(format!("unit-{:06}.json", u.unit)), u)
    }

    pub fn save_health(&self, run_name: &str, h: &Health) -> Result<(), String> {
        write_json(&self.dir.join(format!("run-{run_name}.json")), h)
    }

    /// The units already judged and saved.
    pub fn done(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                n.strip_prefix("unit-")?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Judges the units a VM run finished and saves them with the run's health; returns them.
    pub fn record(&self, run_name: &str, run: &Run) -> Result<Vec<UnitResult>, String> {
        self.record_logs(run_name, &run.reports, &run.events, Some(Health::of(run)))
    }

    /// As [`record`](Self::record), from the logs an interrupted run left in its directory
    /// (`reports.log`, `events.jsonl`, `console.log`): the units it finished are kept, the rest
    /// run again. Its health is what its logs show (kernel log problems, DMA-API errors); that
    /// it was cut short is not held against the campaign, which finishes on resume.
    pub fn salvage(&self, run_name: &str, dir: &Path) -> Result<Vec<UnitResult>, String> {
        let record = self.dir.join(format!("run-{run_name}.json"));
        let finished = std::fs::read_to_string(&record)
            .ok()
            .and_then(|t| serde_json::from_str::<Health>(&t).ok())
            .is_some_and(|h| h.runs_incomplete == 0);
        if finished {
            return Ok(Vec::new()); // recorded whole when it ended
        }
        let reports: Vec<Report> = std::fs::read_to_string(dir.join("reports.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| Report::in_line(l)?.ok())
            .collect();
        let events: Vec<Record> = crate::vm::events_in(&dir.join("events.jsonl"), None).collect();
        let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        let health = Health {
            kernel_log_problems: crate::kernel_log::problems(&console).len() as u64,
            dma_api_errors: reports
                .iter()
                .filter_map(|r| match r {
                    Report::DmaApi(d) => d.errors,
                    _ => None,
                })
                .max()
                .unwrap_or(0),
            ..Health::default()
        };
        let units = self.record_logs(run_name, &reports, &events, None)?;
        // replaces the interrupted run's own record, if it made one; the resumed VM reuses
        // the name, so the salvaged part is kept under its own
        let _ = std::fs::remove_file(record);
        self.save_health(&format!("{run_name}-salvaged"), &health)?;
        Ok(units)
    }

    fn record_logs(
        &self,
        run_name: &str,
        reports: &[Report],
        events: &[Record],
        health: Option<Health>,
    ) -> Result<Vec<UnitResult>, String> {
        let units = judge_units(reports, events);
        for u in &units {
            self.save_unit(u)?;
        }
        if let Some(h) = health {
            self.save_health(run_name, &h)?;
        }
        Ok(units)
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n";
    // written whole, then renamed: an interruption never leaves half a file
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read_plan(dir: &Path) -> Result<Option<Plan>, String> {
    match std::fs::read_to_string(dir.join("plan.json")) {
        Err(_) => Ok(None),
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| format!("{}/plan.json: {e}", dir.display())),
    }
}

/// A whole campaign, put together from one or more stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Merged {
    pub plan: Plan,
    pub units: Vec<UnitResult>,
    pub health: Health,
}

/// Puts stores together: they must hold the same plan, every unit exactly once (a unit found
/// twice must have been judged the same both times), and nothing may be missing.
pub fn merge(dirs: &[PathBuf]) -> Result<Merged, String> {
    let mut plan: Option<Plan> = None;
    let mut units: BTreeMap<u64, UnitResult> = BTreeMap::new();
    let mut health = Health::default();
    for dir in dirs {
        let p = read_plan(dir)?.ok_or_else(|| format!("{}: no plan.json", dir.display()))?;
        match &plan {
            Some(q) if *q != p => {
                return Err(format!(
                    "{} holds another campaign than {}",
                    dir.display(),
                    dirs[0].display()
                ))
            }
            _ => plan = Some(p),
        }
        for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let path = e.map_err(|e| e.to_string())?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            if name.starts_with("unit-") {
                let u: UnitResult =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if let Some(prev) = units.get(&u.unit) {
                    if *prev != u {
                        return Err(format!(
                            "unit {} was judged differently in two stores",
                            u.unit
                        ));
                    }
                }
                units.insert(u.unit, u);
            } else if name.starts_with("run-") {
                let h: Health =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                health.add(&h);
            }
        }
    }
    let plan = plan.ok_or("no stores to merge")?;
    let missing: Vec<u64> = (0..plan.units())
        .filter(|u| !units.contains_key(u))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} of {} units missing (first: {:?}): run the missing shards or --resume",
            missing.len(),
            plan.units(),
            &missing[..missing.len().min(10)]
        ));
    }
    Ok(Merged {
        plan,
        units: units.into_values().collect(),
        health,
    })
}

impl Merged {
    pub fn verdicts(&self) -> impl Iterator<Item = &FaultVerdict> {
        self.units.iter().flat_map(|u| &u.verdicts)
    }

    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.units.iter().flat_map(|u| &u.requests)
    }

    pub fn passed(&self) -> bool {
        self.verdicts().all(|v| v.pass)
            && self.requests().all(|r| !r.unexplained)
            && self.units.iter().all(|u| u.orphan_faults == 0)
            && self.health.clean()
    }

    /// The report as JSON: the same bytes for the same campaign, however it was run.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// (fault kind, injected, handled), by kind.
    pub fn by_kind(&self) -> BTreeMap<String, (u64, u64)> {
        let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for v in self.verdicts() {
            let e = m.entry(v.kind.clone()).or_default();
            e.0 += 1;
            e.1 += u64::from(v.pass);
        }
        m
    }

    /// The HTML report (docs/campaigns.md): requests are named by their number (`op`, twice
    /// plus one for the READ half of a pair) where a single VM's report would show tags.
    pub fn html(&self, title: &str, extra: &[(String, String)]) -> String {
        let id = |op: u64, half: u8| (op * 2 + u64::from(half)) as u32;
        let xfers: Vec<Xfer> = self
            .requests()
            .map(|r| Xfer {
                scenario: "campaign".into(),
                op: r.opcode.clone(),
                queue: r.queue,
                len: r.len,
                status: r.status,
                errno: r.errno,
                bytes: r.bytes,
                tag: id(r.op, r.half),
                verified: r.verified,
                op_index: Some(r.op),
                ..Default::default()
            })
            .collect();
        let verdicts: Vec<Verdict> = self
            .verdicts()
            .map(|v| Verdict {
                rule: v.rule.clone(),
                kind: v.kind.clone(),
                queue: self
                    .requests()
                    .find(|r| r.op == v.op && r.half == v.half)
                    .map_or(0, |r| u64::from(r.queue)),
                tag: u64::from(id(v.op, v.half)),
                expected: leak(&v.expected),
                observed: v.observed.clone(),
                pass: v.pass,
            })
            .collect();
        let mut summary = vec![
            ("seed".to_string(), self.plan.seed.to_string()),
            (
                "requests".to_string(),
                format!(
                    "{} ({} units of {}, {})",
                    self.plan.ops,
                    self.plan.units(),
                    self.plan.unit,
                    if self.plan.serial {
                        "serial"
                    } else {
                        "concurrent: a request in flight on every queue"
                    }
                ),
            ),
            (
                "faults injected".to_string(),
                self.verdicts().count().to_string(),
            ),
            (
                "verdicts passed".to_string(),
                format!(
                    "{}/{}",
                    self.verdicts().filter(|v| v.pass).count(),
                    self.verdicts().count()
                ),
            ),
            (
                "requests failed without a fault".to_string(),
                self.requests().filter(|r| r.unexplained).count().to_string(),
            ),
            (
                "kernel log problems".to_string(),
                self.health.kernel_log_problems.to_string(),
            ),
            (
                "DMA-API debug errors".to_string(),
                self.health.dma_api_errors.to_string(),
            ),
            (
                "device-side errors no fault explains".to_string(),
                self.health.device_errors_unexplained.to_string(),
            ),
            (
                "request ids".to_string(),
                "the tag column shows request number × 2 (+1: the READ of a WRITE + READ pair), the same in every shard".to_string(),
            ),
        ];
        summary.extend(extra.iter().cloned());
        let x: Vec<&Xfer> = xfers.iter().collect();
        let queues = xfers.iter().map(|x| u64::from(x.queue)).max().unwrap_or(0) + 1;
        crate::html::report(title, &summary, &x, &verdicts, &[], queues)
    }
}

/// The verdict table wants `&'static str` expectations: they come from a small fixed set.
fn leak(s: &str) -> &'static str {
    crate::verdict::EXPECTATIONS
        .iter()
        .copied()
        .find(|e| *e == s)
        .unwrap_or("(see the JSON report)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xfer(op: &str, queue: u8, tag: u32, i: u64, partner: Option<u32>, ok: bool) -> Report {
        Report::Xfer(Xfer {
            scenario: "campaign".into(),
            op: op.into(),
            queue,
            len: 64,
            tag,
            verified: ok,
            bytes: 64,
            op_index: Some(i),
            partner_tag: partner,
            ..Default::default()
        })
    }

    #[test]
    fn a_plan_names_its_data_path_and_an_old_plan_keeps_its_id() {
        let plain = Plan::new(7, 100, "");
        let zero_copy = Plan {
            dma_mode: Some(dmalab_abi::DMA_MODE_ZERO_COPY),
            ..plain.clone()
        };
        assert!(!plain.append(&[0..5, 5..9]).contains("dma_mode"));
        assert!(zero_copy
            .append(&[0..5, 5..9])
            .ends_with(" dmalab_module.dma_mode=2"));
        // plans saved before the field existed load, and keep their id
        let old: Plan = serde_json::from_str(&serde_json::to_string(&plain).unwrap()).unwrap();
        assert_eq!(old.id(), plain.id());
        assert!(!serde_json::to_string(&plain).unwrap().contains("dma_mode"));
        assert_ne!(zero_copy.id(), plain.id());
    }

    #[test]
    fn units_are_judged_from_their_own_epoch_and_named_by_request_number() {
        let reports = vec![
            xfer("copy", 0, 100, 0, None, true),
            xfer("write", 1, 200, 1, Some(201), false),
            xfer("read", 1, 201, 1, Some(200), false),
            Report::UnitDone(UnitDone {
                unit: 0,
                first: 0,
                ops: 2,
            }),
            xfer("copy", 0, 101, 2, None, false),
            Report::UnitDone(UnitDone {
                unit: 1,
                first: 2,
                ops: 1,
            }),
        ];
        let at = |event| Record { t_us: 0, event };
        let corrupt = |queue, tag| {
            at(Event::Fault(Injected {
                queue,
                index: 0,
                tag,
                rule: "c".into(),
                fault: dmalab_device::faults::FaultKind::Corrupt { bits: 1 },
            }))
        };
        let events = vec![
            at(Event::Epoch { epoch: 0 }),
            corrupt(1, 200),
            at(Event::Epoch { epoch: 1 }),
        ];
        let u = judge_units(&reports, &events);
        assert_eq!(u.len(), 2);
        // the corrupted WRITE is caught through its READ, which the WRITE's fault explains
        assert_eq!(u[0].verdicts.len(), 1);
        assert!(u[0].verdicts[0].pass, "{:?}", u[0].verdicts[0]);
        assert_eq!((u[0].verdicts[0].op, u[0].verdicts[0].half), (1, 0));
        assert!(
            u[0].requests.iter().all(|r| !r.unexplained),
            "{:?}",
            u[0].requests
        );
        assert_eq!(u[0].requests[2].half, 1);
        // unit 1: a failure with no fault in its epoch is unexplained (the fault in unit 0's
        // epoch on another tag does not count)
        assert!(u[1].requests[0].unexplained);
    }

    #[test]
    fn shards_cover_every_unit_once() {
        let p = Plan {
            ops: 95,
            ..Plan::new(1, 95, "")
        };
        assert_eq!(p.units(), 5);
        let mut all: Vec<u64> = (0..3).flat_map(|i| p.shard(i, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(Plan::new(1, 20, "").shard(0, 4).is_empty());
        assert_eq!(Plan::new(1, 20, "").shard(3, 4), 0..1);
    }

    #[test]
    fn merge_refuses_missing_units_and_mixed_plans() {
        let tmp = std::env::temp_dir().join(format!("dmalab-merge-{}", std::process::id()));
        let plan = Plan::new(1, 40, "");
        let a = Store::open(&tmp.join("a"), &plan, false).unwrap();
        let unit = |n| UnitResult {
            unit: n,
            requests: Vec::new(),
            verdicts: Vec::new(),
            orphan_faults: 0,
        };
        a.save_unit(&unit(0)).unwrap();
        let err = merge(std::slice::from_ref(&a.dir)).unwrap_err();
        assert!(err.contains("1 of 2 units missing"), "{err}");
        let b = Store::open(&tmp.join("b"), &plan, false).unwrap();
        b.save_unit(&unit(1)).unwrap();
        let m = merge(&[a.dir.clone(), b.dir.clone()]).unwrap();
        assert_eq!(m.units.len(), 2);
        assert!(m.passed());
        let c = Store::open(&tmp.join("c"), &Plan::new(2, 40, ""), false).unwrap();
        assert!(merge(&[a.dir.clone(), c.dir.clone()]).is_err());
        assert!(
            Store::open(&c.dir, &plan, true).is_err(),
            "resume of another plan"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
