//! Fault injection: rules that make the device misbehave on command, precisely and
//! reproducibly. docs/faults.md describes every kind and what a correct driver does about it.
//!
//! A rule has a kind (what goes wrong), filters (which descriptors it applies to), a trigger
//! (which of the matching occurrences fire) and an optional predecessor (`after_rule`): a rule
//! with a predecessor is armed only once that rule has fired, and counts its occurrences afresh
//! every time the predecessor fires again, so "the second WRITE after each reset" can be said.
//! Probabilities draw from seeded generators, one stream per queue (and one for resets), so a
//! seed reproduces the injected sequence, and the faults one queue meets do not depend on how
//! its requests interleave with other queues'. [`Injector::begin_epoch`] restarts the counters
//! and streams for a campaign's unit (the `FAULT_EPOCH` register).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dmalab_abi as abi;
use serde::{Deserialize, Serialize};

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Reading the source fails: the descriptor completes with `DMA_FAULT`, nothing is written.
    DmaReadError,
    /// Writing the destination fails: the descriptor completes with `DMA_FAULT`.
    DmaWriteError,
    /// The descriptor completes with this status (default `DEVICE_ERROR`) and moves nothing.
    ErrorStatus {
        /// The status code to complete with (`abi::Status`).
        #[serde(default = "default_status")]
        status: u16,
    },
    /// `bits` bits of the written data (or of a CHECKSUM result) are flipped; status OK.
    Corrupt {
        /// How many bits to flip (1..=64).
        #[serde(default = "one")]
        bits: u32,
    },
    /// Only `bytes` bytes move; the completion says so (`reported`) or claims the full length.
    ShortTransfer {
        /// Bytes actually moved.
        bytes: u32,
        /// The completion reports the short count (`false`: it claims the full length).
        #[serde(default = "yes")]
        reported: bool,
    },
    /// The work is done but no completion is written and no interrupt raised.
    DropCompletion,
    /// The completion is written `ms` milliseconds late.
    DelayCompletion {
        /// How late, in milliseconds (at most one minute).
        ms: u32,
    },
    /// The descriptor's memory is read and written `ms` milliseconds late (then the
    /// completion follows): a slow device, whose DMA can outlive a driver that gave up early.
    DelayStart {
        /// How late, in milliseconds (at most one minute).
        ms: u32,
    },
    /// The completion is written twice.
    DuplicateCompletion,
    /// The completion is held back and written after the next descriptor's.
    OutOfOrder,
    /// An interrupt is raised with no completion behind it (before the descriptor runs).
    SpuriousIrq,
    /// The completion is written but its interrupt is not raised.
    LostIrq,
    /// The queue's vector is raised `count` times.
    IrqStorm {
        /// How many times.
        #[serde(default = "storm")]
        count: u32,
    },
    /// The queue stops (this descriptor never completes) until it or the device is reset.
    Stall,
    /// Fatal device error: `FATAL` is set, every queue halts until a device reset.
    Fatal,
    /// The device tries to write `len` bytes `offset` bytes past the descriptor's destination
    /// (or source): refused, recorded as a DMA violation (`ERR_DMA_VIOLATION`, error vector);
    /// the descriptor itself completes normally.
    DmaOutside {
        /// How far past the buffer the stray write starts, in bytes.
        #[serde(default = "page")]
        offset: u64,
        /// How many bytes it writes.
        #[serde(default = "page")]
        len: u64,
    },
    /// Does nothing but fire: a marker other rules can follow with `after_rule`.
    Mark,
}

impl FaultKind {
    /// The kind's name, as written in rules (`kind = "..."`) and in the event log.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::DmaReadError => "dma_read_error",
            FaultKind::DmaWriteError => "dma_write_error",
            FaultKind::ErrorStatus { .. } => "error_status",
            FaultKind::Corrupt { .. } => "corrupt",
            FaultKind::ShortTransfer { .. } => "short_transfer",
            FaultKind::DropCompletion => "drop_completion",
            FaultKind::DelayCompletion { .. } => "delay_completion",
            FaultKind::DelayStart { .. } => "delay_start",
            FaultKind::DuplicateCompletion => "duplicate_completion",
            FaultKind::OutOfOrder => "out_of_order",
            FaultKind::SpuriousIrq => "spurious_irq",
            FaultKind::LostIrq => "lost_irq",
            FaultKind::IrqStorm { .. } => "irq_storm",
            FaultKind::Stall => "stall",
            FaultKind::Fatal => "fatal",
            FaultKind::DmaOutside { .. } => "dma_outside",
            FaultKind::Mark => "mark",
        }
    }
}

fn default_status() -> u16 {
    abi::CS_DEVICE_ERROR
}
fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn storm() -> u32 {
    100
}
fn page() -> u64 {
    4096
}

/// What a rule listens to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// Each descriptor fetched.
    #[default]
    Descriptor,
    /// Each queue or device reset.
    Reset,
}

/// One rule as written in a rules file or sent over the control socket.
// No `deny_unknown_fields` here: serde cannot combine it with `flatten`; `check_fields` does
// that job (and names the rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique name (default `rule<N>`), used by `after_rule` and in the event log.
    #[serde(default)]
    pub name: Option<String>,
    /// What to inject.
    #[serde(flatten)]
    pub kind: FaultKind,
    /// When the rule may fire (default: on every matching descriptor).
    #[serde(default)]
    pub on: On,
    // filters
    /// Only this queue.
    #[serde(default)]
    pub queue: Option<u16>,
    /// Only this opcode: copy, write, read, fill, checksum.
    #[serde(default)]
    pub opcode: Option<String>,
    /// Only transfer lengths in `[min, max]`.
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    /// Only this submission-ring index.
    #[serde(default)]
    pub index: Option<u32>,
    // triggers
    /// Fire on the nth matching occurrence (1-based).
    #[serde(default)]
    pub nth: Option<u64>,
    /// Fire on every nth matching occurrence.
    #[serde(default)]
    pub every: Option<u64>,
    /// Fire only after this many matching occurrences.
    #[serde(default)]
    pub after: Option<u64>,
    /// Fire at most this many times.
    #[serde(default)]
    pub times: Option<u64>,
    /// Fire with this probability (0..=1), drawn from the seeded generator.
    #[serde(default)]
    pub probability: Option<f64>,
    /// Armed only once the named rule has fired; counts afresh each time it fires.
    #[serde(default)]
    pub after_rule: Option<String>,
}

/// A rules file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Seed of the probability generator (default 0).
    #[serde(default)]
    pub seed: u64,
    /// The rules, in file order (`[[rule]]` tables).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

/// Why a rule was refused: which rule, which field, which value, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The file is not valid TOML or does not have the shape of a rules file.
    #[error("rules file: {0}")]
    Syntax(String),
    /// One rule has a field with a value it may not have.
    #[error("rule {index} ({name}): field `{field}` = {value}: {why}")]
    Field {
        /// Index of the rule in the file (0-based).
        index: usize,
        /// Its name.
        name: String,
        /// The field.
        field: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// More rules than [`MAX_RULES`].
    #[error("{0} rules: at most {MAX_RULES} can be in force")]
    TooMany(usize),
}

/// Most rules in force at once.
pub const MAX_RULES: usize = 256;
/// Longest rule name, in bytes.
pub const MAX_NAME: usize = 64;
/// `corrupt.bits`.
pub const LIMIT_BITS: std::ops::RangeInclusive<u32> = 1..=64;
/// `irq_storm.count`: bounded so that a reset waits for at most this many interrupts.
pub const LIMIT_STORM: std::ops::RangeInclusive<u32> = 1..=10_000;
/// `delay_completion.ms` (one minute; a reset cuts a delay short).
pub const LIMIT_DELAY_MS: u32 = 60_000;
/// `dma_outside.len`.
pub const LIMIT_OUTSIDE_LEN: std::ops::RangeInclusive<u64> = 1..=1 << 20;
/// `dma_outside.offset`.
pub const LIMIT_OUTSIDE_OFFSET: u64 = 1 << 30;

fn opcode_of(name: &str) -> Option<u8> {
    abi::Opcode::from_name(name).map(abi::Opcode::raw)
}

/// Fields every rule may have.
const COMMON_FIELDS: &[&str] = &[
    "name",
    "kind",
    "on",
    "queue",
    "opcode",
    "size",
    "index",
    "nth",
    "every",
    "after",
    "times",
    "probability",
    "after_rule",
];

/// Fields a kind adds.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "error_status" => &["status"],
        "corrupt" => &["bits"],
        "short_transfer" => &["bytes", "reported"],
        "delay_completion" | "delay_start" => &["ms"],
        "irq_storm" => &["count"],
        "dma_outside" => &["offset", "len"],
        _ => &[],
    }
}

fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Rule {
    /// Parses one rule from a TOML table (`index` is 1-based, for messages).
    pub fn from_toml_value(index: usize, v: &toml::Value) -> Result<Self, RuleError> {
        let name = v
            .get("name")
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("rule{index}"), String::from);
        let bad = |field: &str, value: String, why: String| RuleError::Field {
            index,
            name: name.clone(),
            field: field.to_string(),
            value,
            why,
        };
        let table = v
            .as_table()
            .ok_or_else(|| bad("rule", one_line(v), "must be a table".into()))?;
        let kind = table.get("kind").and_then(|k| k.as_str()).ok_or_else(|| {
            bad(
                "kind",
                table.get("kind").map_or("(missing)".into(), one_line),
                "every rule needs a kind".into(),
            )
        })?;
        for (k, val) in table {
            if !COMMON_FIELDS.contains(&k.as_str()) && !kind_fields(kind).contains(&k.as_str()) {
                let mut allowed: Vec<&str> = COMMON_FIELDS.to_vec();
                allowed.extend(kind_fields(kind));
                return Err(bad(
                    k,
                    one_line(val),
                    format!(
                        "unknown field for kind {kind:?} (known: {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Rule::deserialize(v.clone()).map_err(|e| bad("kind", format!("{kind:?}"), one_line(e)))
    }
}

impl RuleSet {
    /// Parses and validates a TOML rules file.
    pub fn from_toml(text: &str) -> Result<Self, RuleError> {
        let doc: toml::Table = text.parse().map_err(|e| RuleError::Syntax(one_line(e)))?;
        let mut set = RuleSet::default();
        for (k, v) in &doc {
            match k.as_str() {
                "seed" => {
                    set.seed = v
                        .as_integer()
                        .and_then(|i| u64::try_from(i).ok())
                        .ok_or_else(|| {
                            RuleError::Syntax(format!(
                                "`seed` = {}: must be a non-negative integer",
                                one_line(v)
                            ))
                        })?;
                }
                "rule" => {
                    let rules = v.as_array().ok_or_else(|| {
                        RuleError::Syntax("`rule` must be written [[rule]]".into())
                    })?;
                    for (i, r) in rules.iter().enumerate() {
                        set.rules.push(Rule::from_toml_value(i + 1, r)?);
                    }
                }
                other => {
                    return Err(RuleError::Syntax(format!(
                        "unknown top-level key `{other}` (known: seed, rule)"
                    )))
                }
            }
        }
        set.validate()?;
        Ok(set)
    }

    /// Checks every rule; the first problem is returned.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.rules.len() > MAX_RULES {
            return Err(RuleError::TooMany(self.rules.len()));
        }
        let names: Vec<String> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule_name(i, r))
            .collect();
        for (i, r) in self.rules.iter().enumerate() {
            let bad = |field: &str, value: String, why: &str| RuleError::Field {
                index: i + 1,
                name: names[i].clone(),
                field: field.to_string(),
                value,
                why: why.into(),
            };
            if names[i].is_empty() || names[i].len() > MAX_NAME {
                return Err(bad(
                    "name",
                    format!("{:?}", names[i]),
                    "a name has 1..=64 bytes",
                ));
            }
            if names[..i].contains(&names[i]) {
                return Err(bad(
                    "name",
                    format!("{:?}", names[i]),
                    "another rule has this name",
                ));
            }
            if let Some(op) = &r.opcode {
                if opcode_of(op).is_none() {
                    return Err(bad(
                        "opcode",
                        format!("{op:?}"),
                        "not one of copy, write, read, fill, checksum",
                    ));
                }
            }
            if let Some(q) = r.queue {
                if q > abi::DIRECT_QUEUE {
                    return Err(bad(
                        "queue",
                        q.to_string(),
                        "beyond the largest queue index (7) and the direct block (8)",
                    ));
                }
            }
            if let Some([lo, hi]) = r.size {
                if lo > hi {
                    return Err(bad(
                        "size",
                        format!("[{lo}, {hi}]"),
                        "minimum above maximum",
                    ));
                }
            }
            for (field, v) in [("nth", r.nth), ("every", r.every), ("times", r.times)] {
                if v == Some(0) {
                    return Err(bad(field, "0".into(), "must be at least 1"));
                }
            }
            if let (Some(_), Some(every)) = (r.nth, r.every) {
                return Err(bad(
                    "every",
                    every.to_string(),
                    "`nth` and `every` exclude each other",
                ));
            }
            if let Some(p) = r.probability {
                if !(0.0..=1.0).contains(&p) || p.is_nan() {
                    return Err(bad("probability", p.to_string(), "must be within 0..=1"));
                }
            }
            if let Some(a) = &r.after_rule {
                if !names.contains(a) {
                    return Err(bad("after_rule", format!("{a:?}"), "no rule has this name"));
                }
                if *a == names[i] {
                    return Err(bad(
                        "after_rule",
                        format!("{a:?}"),
                        "a rule cannot follow itself",
                    ));
                }
            }
            if r.on == On::Reset && (r.opcode.is_some() || r.size.is_some() || r.index.is_some()) {
                return Err(bad(
                    "on",
                    "\"reset\"".into(),
                    "reset rules take no opcode/size/index filter",
                ));
            }
            if r.on == On::Reset && r.kind != FaultKind::Mark {
                return Err(bad(
                    "kind",
                    format!("{:?}", r.kind),
                    "a rule on resets can only be a mark",
                ));
            }
            match r.kind {
                FaultKind::ErrorStatus { status } if status == abi::CS_OK || status > 0x7fff => {
                    return Err(bad(
                        "status",
                        status.to_string(),
                        "an error status must be non-zero",
                    ));
                }
                FaultKind::Corrupt { bits } if !LIMIT_BITS.contains(&bits) => {
                    return Err(bad("bits", bits.to_string(), "must be within 1..=64"))
                }
                FaultKind::ShortTransfer { bytes, .. }
                    if !(1..abi::MAX_TRANSFER).contains(&bytes) =>
                {
                    return Err(bad(
                        "bytes",
                        bytes.to_string(),
                        "a short transfer moves 1..CAP_MAX_XFER-1 bytes",
                    ))
                }
                FaultKind::DmaOutside { offset, len } => {
                    if !LIMIT_OUTSIDE_LEN.contains(&len) {
                        return Err(bad("len", len.to_string(), "must be within 1..=1048576"));
                    }
                    if offset > LIMIT_OUTSIDE_OFFSET {
                        return Err(bad(
                            "offset",
                            offset.to_string(),
                            "must be within 0..=1073741824",
                        ));
                    }
                }
                FaultKind::IrqStorm { count } if !LIMIT_STORM.contains(&count) => {
                    return Err(bad("count", count.to_string(), "must be within 1..=10000"))
                }
                FaultKind::DelayCompletion { ms } | FaultKind::DelayStart { ms }
                    if ms > LIMIT_DELAY_MS =>
                {
                    return Err(bad("ms", ms.to_string(), "must be within 0..=60000"))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn rule_name(i: usize, r: &Rule) -> String {
    r.name.clone().unwrap_or_else(|| format!("rule{}", i + 1))
}

/// What the injector decided for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Injection {
    /// The rule that fired.
    pub rule: String,
    /// What it injects.
    pub kind: FaultKind,
}

/// What a descriptor looks like to the filters.
#[derive(Debug, Clone, Copy)]
pub struct Occurrence {
    /// The queue pair.
    pub queue: u16,
    /// The submission-ring index.
    pub index: u32,
    /// The opcode as written.
    pub opcode: u8,
    /// The transfer length.
    pub len: u32,
}

struct RuleState {
    rule: Rule,
    name: String,
    opcode: Option<u8>,
    /// Matching occurrences counted since arming.
    seen: u64,
    fired: u64,
    /// Armed: no predecessor, or the predecessor has fired.
    armed: bool,
}

/// Random streams: one per queue pair, one for the direct block, one for reset events.
const STREAMS: usize = abi::MAX_QUEUES + 2;

struct State {
    rules: Vec<RuleState>,
    /// The rule set's seed.
    seed: u64,
    rng: [u64; STREAMS],
}

/// Queue `q`'s stream starts here; queue 0's at the seed itself.
fn stream_seeds(seed: u64) -> [u64; STREAMS] {
    std::array::from_fn(|q| seed ^ (q as u64).wrapping_mul(0xd1b5_4a32_d192_ed03))
}

/// The stream an occurrence draws from.
fn stream(o: Option<Occurrence>) -> usize {
    o.map_or(STREAMS - 1, |o| usize::from(o.queue).min(STREAMS - 2))
}

/// The rules in force and their counters. Cheap when empty: one uncontended lock per event.
pub struct Injector {
    state: Mutex<State>,
    /// Rules in force; lets the per-descriptor path skip the lock when there are none.
    count: AtomicUsize,
}

/// splitmix64: small, seedable, the same sequence everywhere.
fn next_random(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Injector {
    /// An injector with `set`'s rules (already validated).
    pub fn new(set: &RuleSet) -> Self {
        let inj = Self {
            state: Mutex::new(State {
                rules: Vec::new(),
                seed: set.seed,
                rng: stream_seeds(set.seed),
            }),
            count: AtomicUsize::new(0),
        };
        for r in &set.rules {
            inj.add(r.clone());
        }
        inj
    }

    /// Adds a rule at runtime; it must be valid together with the rules in force.
    pub fn try_add(&self, rule: Rule) -> Result<String, RuleError> {
        let mut set = RuleSet {
            seed: 0,
            rules: self.rules(),
        };
        set.rules.push(rule.clone());
        set.validate()?;
        Ok(self.add(rule))
    }

    fn add(&self, rule: Rule) -> String {
        let mut st = self.state.lock().unwrap();
        let name = rule_name(st.rules.len(), &rule);
        let opcode = rule.opcode.as_deref().and_then(opcode_of);
        let armed = rule.after_rule.is_none();
        st.rules.push(RuleState {
            rule,
            name: name.clone(),
            opcode,
            seen: 0,
            fired: 0,
            armed,
        });
        self.count.store(st.rules.len(), Ordering::Release);
        name
    }

    /// Removes the named rule; false if there is none.
    pub fn remove(&self, name: &str) -> bool {
        let mut st = self.state.lock().unwrap();
        let before = st.rules.len();
        st.rules.retain(|r| r.name != name);
        self.count.store(st.rules.len(), Ordering::Release);
        st.rules.len() != before
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<Rule> {
        let st = self.state.lock().unwrap();
        st.rules
            .iter()
            .map(|r| Rule {
                name: Some(r.name.clone()),
                ..r.rule.clone()
            })
            .collect()
    }

    /// How often each rule has fired.
    pub fn fired(&self) -> Vec<(String, u64)> {
        let st = self.state.lock().unwrap();
        st.rules.iter().map(|r| (r.name.clone(), r.fired)).collect()
    }

    /// Restarts injection for epoch `epoch` (a campaign's unit): every rule's counters and
    /// arming as freshly loaded, and every stream seeded from the rule set's seed and `epoch`.
    /// Runs of the same epoch and the same per-queue requests meet the same faults, whatever
    /// ran before. Rules added at run time keep their place and restart too.
    pub fn begin_epoch(&self, epoch: u64) {
        let mut st = self.state.lock().unwrap();
        let mut s = st.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        st.rng = stream_seeds(next_random(&mut s));
        for r in &mut st.rules {
            r.seen = 0;
            r.fired = 0;
            r.armed = r.rule.after_rule.is_none();
        }
    }

    /// True when no rule is in force.
    pub fn is_empty(&self) -> bool {
        self.state.lock().unwrap().rules.is_empty()
    }

    /// A descriptor was fetched: the faults to apply to it, in rule order.
    pub fn on_descriptor(&self, o: Occurrence) -> Vec<Injection> {
        self.event(On::Descriptor, Some(o))
    }

    /// A queue or device reset happened (fires `on = "reset"` marks).
    pub fn on_reset(&self) -> Vec<Injection> {
        self.event(On::Reset, None)
    }

    fn event(&self, on: On, o: Option<Occurrence>) -> Vec<Injection> {
        if self.count.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut st = self.state.lock().unwrap();
        if st.rules.is_empty() {
            return Vec::new();
        }
        let State { rules, rng, .. } = &mut *st;
        let rng = &mut rng[stream(o)];
        let mut out = Vec::new();
        let mut fired_names = Vec::new();
        for r in rules.iter_mut() {
            if r.rule.on != on || !r.armed || !matches(r, o) {
                continue;
            }
            r.seen += 1;
            let n = r.seen;
            let rule = &r.rule;
            let mut fire = match (rule.nth, rule.every) {
                (Some(k), _) => n == k,
                (_, Some(k)) => n % k == 0,
                _ => true,
            };
            fire &= rule.after.is_none_or(|a| n > a);
            fire &= rule.times.is_none_or(|t| r.fired < t);
            if fire {
                if let Some(p) = rule.probability {
                    // 53 random bits as a uniform float in [0, 1)
                    fire = ((next_random(rng) >> 11) as f64 / (1u64 << 53) as f64) < p;
                }
            }
            if fire {
                r.fired += 1;
                fired_names.push(r.name.clone());
                if r.rule.kind != FaultKind::Mark {
                    out.push(Injection {
                        rule: r.name.clone(),
                        kind: r.rule.kind,
                    });
                }
            }
        }
        // followers are armed (afresh) by their predecessor's firing
        for r in rules.iter_mut() {
            if let Some(a) = &r.rule.after_rule {
                if fired_names.contains(a) {
                    r.armed = true;
                    r.seen = 0;
                }
            }
        }
        out
    }
}

fn matches(r: &RuleState, o: Option<Occurrence>) -> bool {
    let Some(o) = o else { return true };
    r.rule.queue.is_none_or(|q| q == o.queue)
        && r.opcode.is_none_or(|op| op == o.opcode)
        && r.rule
            .size
            .is_none_or(|[lo, hi]| (lo..=hi).contains(&o.len))
        && r.rule.index.is_none_or(|i| i == o.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(queue: u16, opcode: u8, len: u32) -> Occurrence {
        Occurrence {
            queue,
            index: 0,
            opcode,
            len,
        }
    }

    fn fire_pattern(inj: &Injector, n: usize, o: Occurrence) -> Vec<bool> {
        (0..n).map(|_| !inj.on_descriptor(o).is_empty()).collect()
    }

    #[test]
    fn parses_a_rules_file() {
        let set = RuleSet::from_toml(
            r#"
            seed = 7
            [[rule]]
            name = "slow"
            kind = "delay_completion"
            ms = 50
            queue = 1
            [[rule]]
            kind = "error_status"
            opcode = "write"
            size = [4096, 65536]
            nth = 2
            "#,
        )
        .unwrap();
        assert_eq!(set.seed, 7);
        assert_eq!(set.rules[0].kind, FaultKind::DelayCompletion { ms: 50 });
        assert_eq!(
            set.rules[1].kind,
            FaultKind::ErrorStatus {
                status: abi::CS_DEVICE_ERROR
            }
        );
    }

    #[test]
    fn bad_rules_say_which_rule_field_value_and_why() {
        let cases = [
            (
                "[[rule]]\nkind = \"melt\"",
                "rule 1 (rule1): field `kind` = \"melt\": unknown variant",
            ),
            ("[[rule]]\nqueue = 1", "every rule needs a kind"),
            (
                "[[rule]]\nkind = \"stall\"\nms = 5",
                "field `ms` = 5: unknown field for kind \"stall\"",
            ),
            (
                "[[rule]]\nkind = \"stall\"\nqueue = \"one\"",
                "rule 1 (rule1): field `kind`",
            ),
            ("seed = -1", "`seed` = -1"),
            ("sead = 1", "unknown top-level key `sead`"),
            ("[[rule]\nkind = 1", "rules file"),
            (
                "[[rule]]\nkind = \"stall\"\nqueue = 1\ncolour = 3",
                "field `colour` = 3: unknown field",
            ),
            (
                "[[rule]]\nname = \"x\"\nkind = \"stall\"\nprobability = 1.5",
                "rule 1 (x): field `probability` = 1.5: must be within 0..=1",
            ),
            (
                "[[rule]]\nkind = \"stall\"\nopcode = \"erase\"",
                "field `opcode` = \"erase\"",
            ),
            (
                "[[rule]]\nkind = \"stall\"\nafter_rule = \"nope\"",
                "field `after_rule` = \"nope\": no rule has this name",
            ),
            ("[[rule]]\nkind = \"stall\"\nnth = 0", "field `nth` = 0"),
            (
                "[[rule]]\nkind = \"stall\"\nsize = [10, 1]",
                "minimum above maximum",
            ),
            (
                "[[rule]]\nkind = \"error_status\"\nstatus = 0",
                "field `status` = 0",
            ),
            ("[[rule]]\nkind = \"short_transfer\"", "bytes"),
            (
                "[[rule]]\nname = \"a\"\nkind = \"mark\"\n[[rule]]\nname = \"a\"\nkind = \"stall\"",
                "rule 2 (a): field `name`",
            ),
        ];
        for (text, want) in cases {
            let e = RuleSet::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
        }
    }

    #[test]
    fn nth_every_after_times() {
        let mk = |f: &dyn Fn(&mut Rule)| {
            let mut r = Rule {
                name: None,
                kind: FaultKind::Stall,
                on: On::Descriptor,
                queue: None,
                opcode: None,
                size: None,
                index: None,
                nth: None,
                every: None,
                after: None,
                times: None,
                probability: None,
                after_rule: None,
            };
            f(&mut r);
            Injector::new(&RuleSet {
                seed: 0,
                rules: vec![r],
            })
        };
        let o = occ(0, abi::OP_COPY, 64);
        let t = true;
        let f = false;
        assert_eq!(
            fire_pattern(&mk(&|r| r.nth = Some(3)), 5, o),
            [f, f, t, f, f]
        );
        assert_eq!(
            fire_pattern(&mk(&|r| r.every = Some(2)), 5, o),
            [f, t, f, t, f]
        );
        assert_eq!(
            fire_pattern(&mk(&|r| r.after = Some(3)), 5, o),
            [f, f, f, t, t]
        );
        assert_eq!(
            fire_pattern(&mk(&|r| r.times = Some(2)), 4, o),
            [t, t, f, f]
        );
        assert_eq!(
            fire_pattern(
                &mk(&|r| {
                    r.every = Some(2);
                    r.times = Some(1)
                }),
                6,
                o
            ),
            [f, t, f, f, f, f]
        );
    }

    #[test]
    fn filters_by_queue_opcode_size_and_index() {
        let set = RuleSet::from_toml("[[rule]]\nkind = \"lost_irq\"\nqueue = 2\nopcode = \"read\"\nsize = [100, 200]\nindex = 5").unwrap();
        let inj = Injector::new(&set);
        let o = Occurrence {
            queue: 2,
            index: 5,
            opcode: abi::OP_READ,
            len: 150,
        };
        assert!(inj.on_descriptor(Occurrence { queue: 1, ..o }).is_empty());
        assert!(inj
            .on_descriptor(Occurrence {
                opcode: abi::OP_WRITE,
                ..o
            })
            .is_empty());
        assert!(inj.on_descriptor(Occurrence { len: 201, ..o }).is_empty());
        assert!(inj.on_descriptor(Occurrence { index: 4, ..o }).is_empty());
        assert_eq!(
            inj.on_descriptor(o),
            [Injection {
                rule: "rule1".into(),
                kind: FaultKind::LostIrq
            }]
        );
    }

    #[test]
    fn the_second_write_after_each_reset() {
        let set = RuleSet::from_toml(
            "[[rule]]\nname = \"reset\"\nkind = \"mark\"\non = \"reset\"\n\
             [[rule]]\nname = \"w2\"\nkind = \"error_status\"\nopcode = \"write\"\nnth = 2\nafter_rule = \"reset\"",
        )
        .unwrap();
        let inj = Injector::new(&set);
        let w = occ(0, abi::OP_WRITE, 8);
        assert_eq!(
            fire_pattern(&inj, 3, w),
            [false; 3],
            "not armed before a reset"
        );
        inj.on_reset();
        assert!(
            inj.on_descriptor(occ(0, abi::OP_COPY, 8)).is_empty(),
            "other opcodes do not count"
        );
        assert_eq!(fire_pattern(&inj, 3, w), [false, true, false]);
        inj.on_reset();
        assert_eq!(
            fire_pattern(&inj, 2, w),
            [false, true],
            "counting starts afresh at each reset"
        );
    }

    #[test]
    fn an_epoch_meets_the_same_faults_whatever_ran_before_and_however_queues_interleave() {
        let rules = "seed = 5\n[[rule]]\nkind = \"corrupt\"\nprobability = 0.3\n\
                     [[rule]]\nname = \"stall\"\nkind = \"stall\"\nqueue = 0\nnth = 3\n";
        let inj = Injector::new(&RuleSet::from_toml(rules).unwrap());
        // (queue, fired kinds) for 40 descriptors, alternating queues 0 and 1 in `order`
        let unit = |inj: &Injector, epoch: u64, q1_first: bool| {
            inj.begin_epoch(epoch);
            let mut per_q: [Vec<Vec<String>>; 2] = Default::default();
            for i in 0..40u16 {
                let q = if q1_first { 1 - i % 2 } else { i % 2 };
                let fired = inj.on_descriptor(occ(q, abi::OP_COPY, 8));
                per_q[usize::from(q)].push(fired.iter().map(|f| f.rule.clone()).collect());
            }
            per_q
        };
        let first = unit(&inj, 7, false);
        // other units in between, and the other interleaving: the same faults per queue
        unit(&inj, 3, false);
        let _ = fire_pattern(&inj, 13, occ(0, abi::OP_COPY, 8));
        assert_eq!(unit(&inj, 7, true), first);
        // a fresh injector (another VM) agrees
        let other = Injector::new(&RuleSet::from_toml(rules).unwrap());
        assert_eq!(unit(&other, 7, false), first);
        // (counters such as `nth` count over all queues: exact under interleaving only with a
        // `queue` filter, as here, or in a serial campaign)
        // counters restart: `nth = 3` fires once per unit, in the third matching descriptor
        let stalls = first
            .iter()
            .flatten()
            .filter(|f| f.iter().any(|r| r == "stall"));
        assert_eq!(stalls.count(), 1);
        assert_ne!(unit(&inj, 8, false), first, "another epoch, other faults");
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let text =
            |seed: u64| format!("seed = {seed}\n[[rule]]\nkind = \"corrupt\"\nprobability = 0.3");
        let run = |seed| {
            let inj = Injector::new(&RuleSet::from_toml(&text(seed)).unwrap());
            fire_pattern(&inj, 200, occ(0, abi::OP_COPY, 8))
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let hits = run(1).iter().filter(|&&b| b).count();
        assert!((30..90).contains(&hits), "{hits} of 200 at p=0.3");
    }

    #[test]
    fn runtime_add_and_remove() {
        let inj = Injector::new(&RuleSet::default());
        assert!(inj.is_empty());
        let name = inj
            .try_add(
                RuleSet::from_toml("[[rule]]\nkind = \"fatal\"")
                    .unwrap()
                    .rules[0]
                    .clone(),
            )
            .unwrap();
        assert_eq!(name, "rule1");
        let dup = Rule {
            name: Some("rule1".into()),
            ..inj.rules()[0].clone()
        };
        assert!(inj.try_add(dup).is_err());
        assert!(inj.remove("rule1"));
        assert!(!inj.remove("rule1"));
        assert!(inj.on_descriptor(occ(0, 1, 1)).is_empty());
    }
}
