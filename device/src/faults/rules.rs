//! Fault rules as written (in a rules file or on the control socket) and their validation: a
//! rule is refused whole, with the rule, field and value named, before anything is injected.

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

pub(super) fn opcode_of(name: &str) -> Option<u8> {
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

pub(super) fn rule_name(i: usize, r: &Rule) -> String {
    r.name.clone().unwrap_or_else(|| format!("rule{}", i + 1))
}
