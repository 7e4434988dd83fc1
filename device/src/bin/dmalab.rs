//! dmalab: the command line for a running device server's control socket, and offline checks.
//!
//! ```text
//! dmalab fault add    --control SOCK kind=drop_completion queue=0 nth=2
//! dmalab fault list   --control SOCK
//! dmalab fault remove --control SOCK NAME
//! dmalab fault check  rules.toml
//! dmalab counters     --control SOCK
//! dmalab events       --control SOCK [--since N]
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dmalab_device::faults::RuleSet;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(version, about = "Control a running dmalab device server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fault rules
    Fault {
        #[command(subcommand)]
        cmd: FaultCmd,
    },
    /// The device's counters
    Counters {
        #[arg(long)]
        control: PathBuf,
    },
    /// Run a fault campaign (boots the VM): dmalab campaign --seed S --ops N --rules mix.toml
    #[command(disable_help_flag = true)]
    Campaign {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Grade a driver you bring (boots the VM with it): dmalab check --driver my.ko [--level N]
    #[command(disable_help_flag = true)]
    Check {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Recent events (JSON lines), after sequence number --since
    Events {
        #[arg(long)]
        control: PathBuf,
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// What the DMA ownership oracle found in a run (its oracle.jsonl), each guest PC named
    Oracle {
        /// The run's log directory (target/e2e/<test>): oracle.jsonl, and reports.log for the
        /// driver module's load addresses
        dir: PathBuf,
        /// The guest kernel's System.map, to name kernel functions
        #[arg(long)]
        system_map: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum FaultCmd {
    /// Add a rule: key=value pairs as in a rules file (kind=stall queue=1 nth=3)
    Add {
        #[arg(long)]
        control: PathBuf,
        #[arg(required = true)]
        fields: Vec<String>,
    },
    /// List the rules in force and how often each fired
    List {
        #[arg(long)]
        control: PathBuf,
    },
    /// Remove a rule by name
    Remove {
        #[arg(long)]
        control: PathBuf,
        name: String,
    },
    /// Check a rules file without a device
    Check { file: PathBuf },
}

/// `key=value` pairs as TOML: values that parse as TOML (numbers, booleans, arrays, quoted
/// strings) stay as they are, anything else becomes a string.
fn pairs_to_toml(fields: &[String]) -> Result<String, String> {
    let mut out = String::new();
    for f in fields {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("'{f}' is not key=value"))?;
        let v = v.trim();
        let literal = format!("x = {v}").parse::<toml::Table>().is_ok();
        let v = if literal {
            v.to_string()
        } else {
            toml::Value::String(v.to_string()).to_string()
        };
        out.push_str(&format!("{} = {v}\n", k.trim()));
    }
    Ok(out)
}

fn ask(control: &PathBuf, req: Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(control)
        .map_err(|e| format!("cannot connect to {}: {e}", control.display()))?;
    writeln!(s, "{req}").map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| format!("receive: {e}"))?;
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("bad answer {line:?}: {e}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(v["error"].as_str().unwrap_or("request failed").to_string())
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Fault {
            cmd: FaultCmd::Add { control, fields },
        } => {
            let v = ask(
                &control,
                json!({"cmd": "add", "rule": pairs_to_toml(&fields)?}),
            )?;
            println!("added rule {}", v["name"].as_str().unwrap_or("?"));
        }
        Cmd::Fault {
            cmd: FaultCmd::List { control },
        } => {
            let v = ask(&control, json!({"cmd": "list"}))?;
            let rules = v["rules"].as_array().cloned().unwrap_or_default();
            if rules.is_empty() {
                println!("no rules");
            }
            for r in rules {
                let name = r["name"].as_str().unwrap_or("?").to_string();
                let fired = v["fired"][&name].as_u64().unwrap_or(0);
                let mut fields: Vec<String> = r
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| {
                        !v.is_null()
                            && *k != "name"
                            && *k != "kind"
                            && !(*k == "on" && *v == "descriptor")
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                fields.sort();
                println!(
                    "{name:<16} {:<22} fired {fired:>5}  {}",
                    r["kind"].as_str().unwrap_or("?"),
                    fields.join(" ")
                );
            }
        }
        Cmd::Fault {
            cmd: FaultCmd::Remove { control, name },
        } => {
            ask(&control, json!({"cmd": "remove", "name": name}))?;
            println!("removed rule {name}");
        }
        Cmd::Fault {
            cmd: FaultCmd::Check { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let set = RuleSet::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            println!(
                "{}: {} rule(s), seed {}: ok",
                file.display(),
                set.rules.len(),
                set.seed
            );
        }
        Cmd::Counters { control } => {
            let v = ask(&control, json!({"cmd": "counters"}))?;
            for (k, n) in v["counters"].as_object().into_iter().flatten() {
                println!("{k:<18} {n}");
            }
        }
        Cmd::Campaign { args } => harness_tool("dmalab-campaign", &args)?,
        Cmd::Check { args } => harness_tool("dmalab-check", &args)?,
        Cmd::Oracle { dir, system_map } => oracle(&dir, system_map.as_deref())?,
        Cmd::Events { control, since } => {
            let v = ask(&control, json!({"cmd": "events", "since": since}))?;
            if v["logging"] == false {
                eprintln!("note: the server runs without --event-log, so it keeps no events");
            }
            for e in v["events"].as_array().into_iter().flatten() {
                println!("{e}");
            }
        }
    }
    Ok(())
}

/// Runs a tool of the VM harness, which lives in the dmalab-harness crate; its binaries are
/// built next to this one (`make artifacts` builds them).
fn harness_tool(name: &str, args: &[String]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tool = exe.with_file_name(name);
    let status = std::process::Command::new(&tool)
        .args(args)
        .status()
        .map_err(|e| {
            format!(
                "cannot run {}: {e} (build it with 'make artifacts')",
                tool.display()
            )
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// Prints the oracle's findings in `dir`.
fn oracle(dir: &std::path::Path, system_map: Option<&std::path::Path>) -> Result<(), String> {
    use dmalab_ownership::findings::{read, Symbols};
    use dmalab_report::{Kind, ModuleSymbols, Report};
    // the agent reports where the module was loaded, after each load
    let reports = std::fs::read_to_string(dir.join("reports.log")).unwrap_or_default();
    let loads: Vec<Report> = reports
        .lines()
        .filter_map(|l| Report::in_line(l)?.ok())
        .collect();
    let modules: Vec<(&str, &[(u64, String)])> = loads
        .iter()
        .filter_map(ModuleSymbols::of)
        .map(|m| (m.module.as_str(), m.symbols.as_slice()))
        .collect();
    let symbols = Symbols::new(system_map, &modules);
    let found = read(dir, &symbols)
        .ok_or_else(|| format!("{}: no oracle.jsonl (was the oracle on?)", dir.display()))?;
    match &found.summary {
        Some(s) => println!(
            "oracle: {} accesses checked, {} register stores synchronized ({} lost), {} violation(s)",
            s["checked"], s["bar_stores"], s["sync_timeouts"], found.violations.len()
        ),
        None => println!("oracle: no summary (QEMU did not exit normally)"),
    }
    for v in &found.violations {
        println!(
            "  {}: queue {} tag {:#x}: {} byte(s) at {:#x} by {} ({} time(s))",
            v.kind,
            v.queue,
            v.tag,
            v.size,
            v.gpa,
            v.site(),
            v.count
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmalab: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `dmalab campaign --help` and `dmalab check --help` reach the tools, which print their
    /// real options; clap must not answer with the forwarding subcommand's own stub.
    #[test]
    fn help_of_a_harness_tool_is_passed_to_the_tool() {
        for tool in ["campaign", "check"] {
            let cli = Cli::try_parse_from(["dmalab", tool, "--help"])
                .unwrap_or_else(|e| panic!("dmalab {tool} --help answered by dmalab: {e}"));
            let args = match cli.cmd {
                Cmd::Campaign { args } | Cmd::Check { args } => args,
                _ => panic!("dmalab {tool} parsed as another command"),
            };
            assert_eq!(args, ["--help"]);
        }
    }
}
