//! Fault campaigns: many requests under seeded random faults, judged fault by fault.

use dmalab_report::{DmaApi, Done, Xfer};

use crate::verdict::{judge, unexplained_failures, Verdict};
use crate::vm::{run, Run, VmOptions};

/// What a campaign came to.
pub struct Campaign {
    pub run: Run,
    pub verdicts: Vec<Verdict>,
    /// Requests that failed although no fault touched them.
    pub unexplained: Vec<Xfer>,
    /// The injected sequence: (rule, fault kind, queue, ring index), in order.
    pub sequence: Vec<(String, String, u64, u64)>,
}

/// The campaign's own requests among everything the agent reported.
pub fn campaign_xfers(run: &Run) -> Vec<&Xfer> {
    run.all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == "campaign")
        .collect()
}

impl Campaign {
    /// What the ownership oracle caught (empty when it was off).
    pub fn oracle_violations(&self) -> &[crate::oracle::Violation] {
        self.run
            .oracle
            .as_ref()
            .map_or(&[], |o| o.violations.as_slice())
    }

    /// The campaign's requests, in the order the agent ran them.
    pub fn xfers(&self) -> Vec<&Xfer> {
        campaign_xfers(&self.run)
    }

    /// Passed: every verdict passes, nothing failed unexplained, the kernel log is clean,
    /// DMA-API debug saw no error, and every device-side error is explained by a fault.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass)
            && self.unexplained.is_empty()
            && crate::kernel_log::problems(&self.run.console).is_empty()
            && self.run.all::<DmaApi>().iter().all(|d| d.errors == Some(0))
            && self.run.unexplained_device_errors().is_empty()
            && self.oracle_violations().is_empty()
            && self.run.all::<Done>().first().is_some_and(|d| d.completed)
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

/// How a campaign shows its progress on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Not at all (tests).
    Off,
    /// A line for people every tenth of the way.
    Human,
    /// The agent's progress reports as JSON lines, for tools.
    Json,
}

/// Boots a VM whose device starts with `rules` (seeded with `seed`) and whose agent runs `ops`
/// requests drawn from the same seed.
pub fn campaign(
    name: &str,
    seed: u64,
    ops: u32,
    rules: &str,
    progress: Echo,
    oracle: bool,
) -> Campaign {
    let mut o = VmOptions::new(name, "load,campaign,stats,unload");
    o.oracle = oracle;
    o.faults = Some(with_seed(rules, seed));
    o.append = format!("dmalab.seed={seed} dmalab.ops={ops}");
    if progress != Echo::Off {
        o.echo = vec!["progress"];
        o.echo_json = progress == Echo::Json;
    }
    let run = run(&o);
    let faults = run.events("fault");
    let xfers = campaign_xfers(&run);
    let verdicts = judge(&faults, &xfers);
    let unexplained = unexplained_failures(&faults, &xfers)
        .into_iter()
        .cloned()
        .collect();
    let sequence = faults
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap_or("?").to_string(),
                f["fault"]["kind"].as_str().unwrap_or("?").to_string(),
                f["queue"].as_u64().unwrap_or(0),
                f["index"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Campaign {
        run,
        verdicts,
        unexplained,
        sequence,
    }
}
