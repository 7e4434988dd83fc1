//! The injector: the rules in force, their counters and random streams, and the decision for
//! each descriptor, reset or other event the device reports to it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dmalab_abi as abi;
use serde::Serialize;

use super::rules::*;

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
    /// Queue pairs of the device: a rule's `queue` filter must name one of them, or the
    /// direct block.
    queues: usize,
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
    /// An injector with `set`'s rules (already validated) for a device with every queue
    /// ([`abi::MAX_QUEUES`]).
    pub fn new(set: &RuleSet) -> Self {
        Self::try_new(set, abi::MAX_QUEUES).expect("a validated rule set")
    }

    /// An injector with `set`'s rules (already validated) for a device with `queues` queue
    /// pairs: a rule whose `queue` filter names none of them (nor the direct block) would never
    /// fire, and is refused.
    pub fn try_new(set: &RuleSet, queues: usize) -> Result<Self, RuleError> {
        let inj = Self {
            state: Mutex::new(State {
                rules: Vec::new(),
                seed: set.seed,
                rng: stream_seeds(set.seed),
            }),
            count: AtomicUsize::new(0),
            queues,
        };
        {
            let mut st = inj.state.lock().unwrap();
            for (i, r) in set.rules.iter().enumerate() {
                inj.check_queue(i, r)?;
                let name = rule_name(i, r);
                inj.push(
                    &mut st,
                    Rule {
                        name: Some(name),
                        ..r.clone()
                    },
                );
            }
        }
        Ok(inj)
    }

    /// Adds a rule at runtime; it must be valid together with the rules in force and name a
    /// queue this device has. Checked and added under one lock, so concurrent adds cannot
    /// pass the limit together; an unnamed rule gets the first `ruleN` nobody has.
    pub fn try_add(&self, mut rule: Rule) -> Result<String, RuleError> {
        let mut st = self.state.lock().unwrap();
        if rule.name.is_none() {
            let taken = |n: &str| st.rules.iter().any(|r| r.name == n);
            let free = (st.rules.len() + 1..)
                .map(|i| format!("rule{i}"))
                .find(|n| !taken(n))
                .expect("fewer rules than names");
            rule.name = Some(free);
        }
        let mut set = RuleSet {
            seed: 0,
            rules: st
                .rules
                .iter()
                .map(|r| Rule {
                    name: Some(r.name.clone()),
                    ..r.rule.clone()
                })
                .collect(),
        };
        set.rules.push(rule.clone());
        set.validate()?;
        self.check_queue(st.rules.len(), &rule)?;
        Ok(self.push(&mut st, rule))
    }

    /// A rule's `queue` filter names one of this device's queues or the direct block.
    fn check_queue(&self, index: usize, rule: &Rule) -> Result<(), RuleError> {
        match rule.queue {
            Some(q) if usize::from(q) >= self.queues && q != abi::DIRECT_QUEUE => {
                Err(RuleError::Field {
                    index,
                    name: rule_name(index, rule),
                    field: "queue".into(),
                    value: q.to_string(),
                    why: format!(
                        "this device has {} queues (0..{}) and the direct block ({}): the rule would never fire",
                        self.queues,
                        self.queues,
                        abi::DIRECT_QUEUE
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    fn push(&self, st: &mut State, rule: Rule) -> String {
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
