//! Grading a driver: one table of named checks ([`checks::table`]) from which `dmalab check`'s
//! contract levels (`--level`) and tutorial ladder (`--step`), its report card and HTML page,
//! and the test that every pointer on the card leads somewhere are all driven.
//!
//! A check names what it looks at (a [`Boot`]: one VM, its scenarios and conditions), when it
//! is graded (a contract level, a ladder step, or both) and where its expected behaviour is
//! explained. A [`Grader`] boots each VM the selected checks need once, in table order, and
//! judges every check on it. Adding a check is one entry in the table.

pub mod boots;
pub mod checks;
pub mod judge;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

use crate::conditions::Conditions;
use crate::vm::{run, Run, VmOptions};

/// One check's outcome: passed, or why not (in the user's terms).
pub type Graded = Result<(), String>;

/// Which ladder steps grade a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    /// Step N and every later one.
    From(u32),
    /// Step N only: the mechanism it checks is replaced by a later step's.
    Only(u32),
}

impl Steps {
    /// Whether grading step `step` runs this check.
    pub fn graded_at(self, step: u32) -> bool {
        match self {
            Steps::From(n) => step >= n,
            Steps::Only(n) => step == n,
        }
    }

    /// The step the check belongs to (its row on the card).
    pub fn first(self) -> u32 {
        match self {
            Steps::From(n) | Steps::Only(n) => n,
        }
    }
}

/// What is graded: a driver against the contract (levels `from..=to`) or a tutorial module
/// against the ladder (steps `1..=step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Levels { from: u32, to: u32 },
    Step(u32),
}

/// A VM some checks look at.
pub struct Boot {
    /// Its name: the VM's log directory is `target/e2e/<grading>_<name>`.
    pub name: &'static str,
    /// What it runs under, for people: shown next to the checks that look at it.
    pub conditions: &'static str,
    /// The platform it imitates by default (`dmalab check --conditions` replaces it): the
    /// conditions under which what it checks can show.
    pub platform: Conditions,
    /// The agent's scenarios (they may depend on the step graded).
    pub scenarios: fn(Mode) -> String,
    /// Fault rules, IOMMU, oracle, kernel command line: everything else about the VM.
    pub tune: fn(&mut VmOptions),
    /// A boot that must have gone a certain way first (a campaign needs a driver that gives
    /// up on a stalled request, or it would hang until the harness gives up on the VM): the
    /// other boot's name and what must hold of its run.
    pub requires: Option<Requires>,
}

/// A boot that must have run first, and what must hold of its run.
pub type Requires = (&'static str, fn(&Run) -> Graded);

/// What a check's judgment can see besides the run.
pub struct Ctx<'a> {
    pub mode: Mode,
    /// The grading's name (its VMs' log directories start with it).
    pub grading: &'a str,
    /// Notes for the card, under the table: (heading, text).
    pub notes: &'a RefCell<Vec<(String, String)>>,
}

/// One named check.
pub struct Check {
    /// A stable identifier (tests and docs refer to checks by it).
    pub id: &'static str,
    /// What the card says.
    pub name: &'static str,
    /// The contract level that grades it (docs/contract.md), if one does.
    pub level: Option<u32>,
    /// The ladder steps that grade it (docs/tutorial/), if any do.
    pub steps: Option<Steps>,
    /// Where the contract explains the expected behaviour.
    pub see: &'static str,
    /// Where the tutorial explains it, when a chapter does (the ladder's card points there).
    pub chapter: Option<&'static str>,
    /// The VM it looks at (a [`Boot`]'s name).
    pub boot: &'static str,
    /// The judgment.
    pub judge: fn(&Run, &Ctx) -> Graded,
}

impl Check {
    /// Whether `mode` grades this check.
    pub fn selected(&self, mode: Mode) -> bool {
        match mode {
            Mode::Levels { from, to } => self.level.is_some_and(|l| (from..=to).contains(&l)),
            Mode::Step(step) => self.steps.is_some_and(|s| s.graded_at(step)),
        }
    }

    /// Its row's number on the card: level, or ladder step.
    pub fn rank(&self, mode: Mode) -> u32 {
        match mode {
            Mode::Levels { .. } => self.level.unwrap_or(0),
            Mode::Step(_) => self.steps.map_or(0, Steps::first),
        }
    }

    /// Where to read up, for `mode`'s reader.
    pub fn pointer(&self, mode: Mode) -> &'static str {
        match mode {
            Mode::Step(_) => self.chapter.unwrap_or(self.see),
            Mode::Levels { .. } => self.see,
        }
    }
}

/// The table for people (`dmalab check --list`): every check's id, where it is graded, the VM
/// it looks at and what it says.
pub fn listing() -> String {
    let mut out = String::from("id                    level  steps  VM (conditions) [platform]\n");
    for c in checks::table() {
        let steps = match c.steps {
            Some(Steps::From(n)) => format!("{n}-{}", crate::tutorial::STEPS),
            Some(Steps::Only(n)) => format!("{n}"),
            None => "-".into(),
        };
        let boot = boots::by_name(c.boot);
        out += &format!(
            "{:<21} {:>5}  {:>5}  {} ({}) [{}]\n    {}  (see {})\n",
            c.id,
            c.level.map_or("-".into(), |l| l.to_string()),
            steps,
            boot.name,
            boot.conditions,
            boot.platform,
            c.name,
            c.see
        );
    }
    out
}

/// One row of the report card.
#[derive(Debug, Clone)]
pub struct Row {
    pub rank: u32,
    pub name: &'static str,
    pub result: Graded,
    pub see: &'static str,
    /// The conditions of the VM it was judged on.
    pub conditions: &'static str,
    /// The platform the VM imitated (`smp2, preempt, strict`).
    pub platform: String,
    /// The boot it was judged on.
    pub boot: &'static str,
    /// Failed only because an earlier check on the same VM failed first and the agent stopped
    /// there: that check's name. The card says "not run" and points at it.
    pub after: Option<&'static str>,
}

/// Boots what the selected checks need, once each, and judges them.
pub struct Grader {
    pub mode: Mode,
    /// The grading's name (default `check`).
    pub name: String,
    pub initramfs: PathBuf,
    pub kernel: Option<PathBuf>,
    /// Extra guest kernel command line.
    pub append: String,
    /// Grade only the checks with these ids (empty: every check the mode selects).
    pub only: Vec<String>,
    /// On the ladder: only the checks the graded step adds (not those of earlier steps).
    pub new_only: bool,
    /// `--conditions`: every boot runs under these instead of its own [`Boot::platform`].
    pub conditions: Option<Conditions>,
    runs: RefCell<HashMap<&'static str, Rc<Result<Run, String>>>>,
    pub notes: RefCell<Vec<(String, String)>>,
}

impl Grader {
    pub fn new(
        mode: Mode,
        name: &str,
        initramfs: PathBuf,
        kernel: Option<PathBuf>,
        append: &str,
    ) -> Self {
        Self {
            mode,
            name: name.into(),
            initramfs,
            kernel,
            append: append.into(),
            only: Vec::new(),
            new_only: false,
            conditions: None,
            runs: RefCell::default(),
            notes: RefCell::default(),
        }
    }

    /// The run of boot `name`, booting it the first time (or why it was not booted).
    pub fn run(&self, name: &'static str) -> Rc<Result<Run, String>> {
        if let Some(r) = self.runs.borrow().get(name) {
            return r.clone();
        }
        let boot = boots::by_name(name);
        let result = match boot.requires {
            Some((first, holds)) => match &*self.run(first) {
                Ok(r) => holds(r).map_err(|why| format!("not run: {why} (the {first} boot)")),
                Err(why) => Err(why.clone()),
            },
            None => Ok(()),
        }
        .map(|()| self.boot(boot));
        let result = Rc::new(result);
        self.runs.borrow_mut().insert(name, result.clone());
        result
    }

    fn boot(&self, boot: &Boot) -> Run {
        let mut o = VmOptions::new(
            &format!("{}_{}", self.name, boots::dir_name(boot, self.mode)),
            &(boot.scenarios)(self.mode),
        );
        o.initramfs = Some(self.initramfs.clone());
        o.kernel = self.kernel.clone();
        o.append = self.append.clone();
        (boot.tune)(&mut o);
        o.conditions = self.platform(boot);
        eprintln!(
            "dmalab check: {} ({}) [{}] ...",
            boots::dir_name(boot, self.mode),
            boot.conditions,
            self.platform_label(boot)
        );
        run(&o)
    }

    /// The platform `boot` runs on in this grading. A boot that needs the vIOMMU or the
    /// oracle keeps its RAM below 4 GiB (`ram>4G` is a machine without an IOMMU, and the
    /// oracle does not follow high RAM yet); the card shows what it ran on.
    pub fn platform(&self, boot: &Boot) -> Conditions {
        let mut c = self.conditions.unwrap_or(boot.platform);
        let mut o = VmOptions::new("", "");
        (boot.tune)(&mut o);
        if o.iommu || o.oracle {
            c.ram_high = false;
        }
        c
    }

    /// The platform as the card names it: the conditions, and `preempt` on the tests' own
    /// kernel (built with full preemption; a `--kernel` may not be).
    pub fn platform_label(&self, boot: &Boot) -> String {
        self.platform(boot).label(self.kernel.is_none())
    }

    /// Whether this grading runs `c`.
    pub fn wants(&self, c: &Check) -> bool {
        let new = match (self.new_only, self.mode, c.steps) {
            (true, Mode::Step(n), Some(s)) => s.first() == n,
            _ => true,
        };
        c.selected(self.mode)
            && new
            && (self.only.is_empty() || self.only.iter().any(|i| i == c.id))
    }

    /// Grades every check `self.mode` selects, in table order: the card's rows.
    pub fn grade(&self) -> Vec<Row> {
        let ctx = Ctx {
            mode: self.mode,
            grading: &self.name,
            notes: &self.notes,
        };
        let mut rows: Vec<Row> = checks::table()
            .iter()
            .filter(|c| self.wants(c))
            .map(|c| {
                let run = self.run(c.boot);
                Row {
                    rank: c.rank(self.mode),
                    name: c.name,
                    result: match &*run {
                        Ok(r) => (c.judge)(r, &ctx),
                        Err(why) => Err(why.clone()),
                    },
                    see: c.pointer(self.mode),
                    conditions: boots::by_name(c.boot).conditions,
                    platform: self.platform_label(boots::by_name(c.boot)),
                    boot: c.boot,
                    after: None,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.rank);
        self.mark_consequences(&mut rows);
        rows
    }

    /// On a VM whose agent stopped at its first failed scenario, the first failing check is the
    /// cause; every later failing check on that VM only saw the agent gone, so it is marked
    /// "not run" after the cause instead of adding a failure of its own.
    fn mark_consequences(&self, rows: &mut [Row]) {
        let mut first_failure: HashMap<&'static str, &'static str> = HashMap::new();
        for row in rows.iter_mut() {
            if row.result.is_ok() {
                continue;
            }
            let stopped = matches!(
                &*self.run(row.boot),
                Ok(r) if !r.all::<dmalab_report::ScenarioError>().is_empty()
            );
            match first_failure.get(row.boot) {
                Some(&cause) if stopped => row.after = Some(cause),
                Some(_) => {}
                None => {
                    first_failure.insert(row.boot, row.name);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selected(g: &Grader) -> Vec<&'static str> {
        checks::table()
            .iter()
            .filter(|c| g.wants(c))
            .map(|c| c.id)
            .collect()
    }

    #[test]
    fn a_grading_selects_by_level_step_id_and_newness() {
        let mut g = Grader::new(Mode::Step(7), "t", PathBuf::new(), None, "");
        let all7 = selected(&g);
        assert!(all7.contains(&"binds") && all7.contains(&"fatal"));
        g.new_only = true;
        let new7 = selected(&g);
        assert!(!new7.contains(&"binds") && new7.contains(&"fatal") && new7.contains(&"removal"));
        g.only = vec!["stall".into()];
        assert_eq!(selected(&g), ["stall"]);
        let mut g = Grader::new(
            Mode::Levels { from: 4, to: 4 },
            "t",
            PathBuf::new(),
            None,
            "",
        );
        g.only = vec!["stall".into(), "binds".into()];
        // `binds` is a ladder check: no level grades it
        assert_eq!(selected(&g), ["stall"]);
    }

    #[test]
    fn the_listing_names_every_check() {
        let l = listing();
        for c in checks::table() {
            assert!(l.contains(c.id) && l.contains(c.name), "{}", c.id);
        }
    }
}
