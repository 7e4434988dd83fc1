//! dmalab guest agent: PID 1's helper in the test VM.
//!
//! Loads the driver, runs the scenarios named on the kernel command line
//! (`dmalab.run=firstlight,transfers,...`), and reports every result as one JSON object per line
//! on the console, prefixed with `@@DMALAB ` so the host can pick them out of the kernel's own
//! messages. Verdicts are the host's job; the agent reports facts (what it asked, what came
//! back, whether the bytes matched). Finally it powers the VM off.

mod aligned;
mod bench;
mod dev;
mod hostile;
mod kmod;
mod pattern;
mod pci_user;
mod report;
mod scenarios;

use dmalab_report::{Done, Report, ScenarioEnd, ScenarioError, Start};
use report::report;

pub fn cmdline_param(name: &str) -> Option<String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline.split_whitespace().find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .map(String::from)
    })
}

#[global_allocator]
static ALLOC: aligned::Aligned = aligned::Aligned;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = if args.is_empty() {
        cmdline_param("dmalab.run").unwrap_or_else(|| "firstlight".into())
    } else {
        args.join(",")
    };
    let module = cmdline_param("dmalab.module").unwrap_or_else(|| "/lib/modules/dmalab.ko".into());
    report(Report::Start(Start {
        scenarios: run.to_string(),
        kernel: kernel_release().to_string(),
    }));
    let mut ok = true;
    for name in run.split(',').filter(|s| !s.is_empty()) {
        let result = std::panic::catch_unwind(|| scenarios::run(name, &module));
        let passed = match result {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                report(Report::Error(ScenarioError {
                    scenario: name.to_string(),
                    error: e.to_string(),
                }));
                false
            }
            Err(_) => {
                report(Report::Error(ScenarioError {
                    scenario: name.to_string(),
                    error: "agent panicked".into(),
                }));
                false
            }
        };
        report(Report::ScenarioEnd(ScenarioEnd {
            scenario: name.to_string(),
            completed: passed,
        }));
        ok &= passed;
    }
    report(Report::Done(Done { completed: ok }));
    if std::process::id() == 1 || cmdline_param("dmalab.poweroff").is_some() {
        dev::power_off();
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}
