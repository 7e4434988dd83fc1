//! The conformance suite of the kernel's Rust DMA abstraction (docs/conformance.md): its module
//! (conformance/module/) runs every API's tests in probe, against the real device, and prints one
//! result line per test; here those lines become a table of API × platform condition, with the
//! reason and the device's account of each failure, as text and as HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::conditions::Conditions;
use crate::html::esc;
use crate::vm::{run, Run, VmOptions};

/// The prefix of the module's result lines in the kernel log.
pub const PREFIX: &str = "dmalab-conformance: ";

/// One test's result, as the module printed it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Outcome {
    pub api: String,
    pub test: String,
    pub ok: bool,
    pub why: String,
    /// A known failure of this tree (conformance/known.toml) that this failure is: the
    /// finding. Known failures do not fail the suite.
    #[serde(default)]
    pub known: Option<String>,
}

/// A failure the suite found in a tree's abstraction, written down (conformance/known.toml).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    pub series: String,
    pub api: String,
    pub test: String,
    pub shows: String,
    pub why: String,
}

/// The known failures of kernel series `series` (`7.3`).
pub fn known(root: &Path, series: &str) -> Result<Vec<Known>, String> {
    #[derive(serde::Deserialize)]
    struct File {
        known: Vec<Known>,
    }
    let path = root.join("conformance/known.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(f.known.into_iter().filter(|k| k.series == series).collect())
}

/// Marks each failure of `results` that is a known failure as such: one whose every part shows
/// the known finding. A test that failed its own check for another reason is not excused by a
/// known kernel-log line printed beside it (`parse` joins the two as "REASON; the kernel log:
/// LOG"): a known failure never hides a new one.
pub fn mark_known(results: &mut [Outcome], known: &[Known]) {
    const LOG: &str = "the kernel log: ";
    for o in results.iter_mut().filter(|o| !o.ok) {
        let own = match o.why.split_once(&format!("; {LOG}")) {
            Some((own, _)) => Some(own),
            None if o.why.starts_with(LOG) => None,
            None => Some(o.why.as_str()),
        };
        o.known = known
            .iter()
            .find(|k| {
                k.api == o.api
                    && o.test.starts_with(&k.test)
                    && o.why.contains(&k.shows)
                    && own.is_none_or(|own| own.contains(&k.shows))
            })
            .map(|k| k.why.clone());
    }
}

/// Which APIs' tests the tree built (scripts/build-conformance.sh's `apis.json`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct Built {
    pub built: Vec<String>,
    /// API → the first compiler error of its tests on this tree.
    pub failed: BTreeMap<String, String>,
    /// Optional APIs this tree does not have (kernel-patches/ adds them), with the error that
    /// says so: reported, not a failure.
    #[serde(default)]
    pub absent: BTreeMap<String, String>,
}

/// What one VM under one set of conditions made of the suite.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConditionRun {
    /// The conditions, as `--conditions` names them (`gentle`, `swiotlb`, ...).
    pub name: String,
    /// The platform label (`smp1, preempt, swiotlb`).
    pub label: String,
    pub results: Vec<Outcome>,
    /// The module printed its last line: it did not crash or hang mid-way.
    pub finished: bool,
    /// Why the run was not clean, if it was not (kernel log problems, DMA-API debug, the
    /// device's unexplained errors, the agent): a failure of every test's conditions.
    pub unclean: Option<String>,
}

/// The result lines of a kernel log, and whether the suite reached its end. A kernel-log
/// problem (a warning, a DMA-API debug report, a lockdep splat) printed while a test ran, that
/// is after the previous result line and before the test's own, fails that test with the
/// problem as its reason: the module prints each result when the test is over.
pub fn parse(console: &str) -> (Vec<Outcome>, bool) {
    let mut results = Vec::new();
    let mut done = false;
    let mut pending: Vec<String> = Vec::new();
    for line in console.lines() {
        let Some(json) = line.split_once(PREFIX).map(|(_, j)| j.trim()) else {
            if !crate::kernel_log::problems(line).is_empty() {
                let text = line.split_once("] ").map_or(line, |(_, m)| m).trim();
                pending.push(text.to_string());
            }
            continue;
        };
        if let Ok(mut o) = serde_json::from_str::<Outcome>(json) {
            if !pending.is_empty() {
                let log = pending.join(" / ");
                o.why = if o.ok {
                    format!("the kernel log: {log}")
                } else {
                    format!("{}; the kernel log: {log}", o.why)
                };
                o.ok = false;
                pending.clear();
            }
            results.push(o);
        } else if json.contains("\"done\":true") {
            done = true;
        }
    }
    (results, done)
}

/// Whether every kernel-log problem of `console` came while a test ran (and so is on that
/// test's row already).
fn problems_attributed(console: &str) -> bool {
    let mut last_result = None;
    let mut last_problem = None;
    for (i, line) in console.lines().enumerate() {
        if line.contains(PREFIX) && !line.contains("\"start\"") && !line.contains("\"done\"") {
            last_result = Some(i);
        } else if !line.contains(PREFIX) && !crate::kernel_log::problems(line).is_empty() {
            last_problem = Some(i);
        }
    }
    last_problem.is_none_or(|p| last_result.is_some_and(|r| r > p))
}

/// The conditions the suite runs under by default: one vCPU, two, a strict vIOMMU, every IOVA
/// above 4 GiB, every streaming mapping bounced.
pub const DEFAULT_CONDITIONS: &[&str] = &["gentle", "smp2", "strict", "iova>4G,strict", "swiotlb"];

/// Boots the module's initramfs under `conditions` (named `name`) and collects the suite.
pub fn run_under(
    run_name: &str,
    name: &str,
    conditions: Conditions,
    initramfs: &Path,
    kernel: Option<PathBuf>,
    known: &[Known],
) -> ConditionRun {
    let dir = format!(
        "{run_name}_{}",
        name.replace(['>', ','], "_").replace("__", "_")
    );
    let mut o = VmOptions::new(&dir, "bind");
    o.initramfs = Some(initramfs.to_path_buf());
    o.kernel = kernel;
    o.conditions = conditions;
    o.iommu = conditions.needs_iommu();
    let r: Run = run(&o);
    let (mut results, finished) = parse(&r.console);
    mark_known(&mut results, known);
    // problems that came while a test ran fail that test; the run is unclean for the rest
    let unclean = crate::grading::judge::clean(&r)
        .err()
        .filter(|why| !(why.starts_with("kernel log problems") && problems_attributed(&r.console)));
    ConditionRun {
        name: name.to_string(),
        label: conditions.label(true),
        results,
        finished,
        unclean,
    }
}

/// Whether every API built and every test passed under every condition, cleanly.
pub fn passed(built: &Built, runs: &[ConditionRun]) -> bool {
    built.failed.is_empty()
        && runs.iter().all(|r| {
            r.finished && r.unclean.is_none() && r.results.iter().all(|o| o.ok || o.known.is_some())
        })
}

/// The tests in the order the module ran them (the first run that has each).
fn tests(runs: &[ConditionRun]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in runs {
        for o in &r.results {
            let key = (o.api.clone(), o.test.clone());
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

fn cell<'a>(run: &'a ConditionRun, api: &str, test: &str) -> Option<&'a Outcome> {
    run.results.iter().find(|o| o.api == api && o.test == test)
}

/// The report as text: what built, the table (one row per test, one column per condition),
/// then every failure with its reason.
pub fn text(tree: &str, built: &Built, runs: &[ConditionRun]) -> String {
    let mut s = format!("== dmalab conformance: {tree}\n");
    let _ = writeln!(s, "APIs built: {}", built.built.join(", "));
    for (api, err) in &built.failed {
        let _ = writeln!(
            s,
            "  NOT BUILT  {api}: its tests do not compile on this tree: {err}"
        );
    }
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let _ = writeln!(s, "\n{:<16} {:<62} {}", "api", "test", names.join("  "));
    for (api, test) in tests(runs) {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                let mark = match cell(r, &api, &test) {
                    Some(o) if o.ok => "pass",
                    Some(o) if o.known.is_some() => "known",
                    Some(_) => "FAIL",
                    None => "-",
                };
                format!("{mark:<width$}", width = r.name.len())
            })
            .collect();
        let short: String = test.chars().take(62).collect();
        let _ = writeln!(s, "{api:<16} {short:<62} {}", cells.join("  "));
    }
    let mut failures = 0;
    for r in runs {
        if !r.finished {
            let _ = writeln!(s, "  [{}] the suite did not reach its end (a crash or a hang: target/e2e/*/console.log)", r.label);
            failures += 1;
        }
        if let Some(why) = &r.unclean {
            let _ = writeln!(s, "  [{}] the run was not clean: {why}", r.label);
            failures += 1;
        }
        for o in r.results.iter().filter(|o| !o.ok && o.known.is_none()) {
            let _ = writeln!(s, "  FAIL {} · {} [{}]: {}", o.api, o.test, r.label, o.why);
            failures += 1;
        }
    }
    let mut findings: Vec<(&str, &str)> = runs
        .iter()
        .flat_map(|r| &r.results)
        .filter_map(|o| Some((o.api.as_str(), o.known.as_deref()?)))
        .collect();
    findings.sort();
    findings.dedup();
    for (api, why) in findings {
        let _ = writeln!(s, "  known failure of this tree ({api}): {why}");
    }
    let total: usize = runs.iter().map(|r| r.results.len()).sum();
    let _ = writeln!(
        s,
        "\n{} results over {} conditions; {}",
        total,
        runs.len(),
        if failures == 0 && built.failed.is_empty() {
            "all passed".to_string()
        } else {
            format!(
                "{failures} failure(s), {} API(s) not built",
                built.failed.len()
            )
        }
    );
    s
}

/// The same report as one self-contained HTML page.
pub fn html(tree: &str, built: &Built, runs: &[ConditionRun]) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>dmalab conformance</title><style>\
         body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}\
         .pass{background:#dfd}.fail{background:#fcc;font-weight:bold}.known{background:#ffd}.none{color:#888}</style></head><body>",
    );
    let _ = write!(
        h,
        "<h1>Conformance of the Rust DMA abstraction</h1><p>tree: {}</p><p>APIs built: {}</p>",
        esc(tree),
        esc(&built.built.join(", "))
    );
    for (api, err) in &built.failed {
        let _ = write!(h, "<p class=fail>not built: {}: {}</p>", esc(api), esc(err));
    }
    h += "<table><tr><th>api</th><th>test</th>";
    for r in runs {
        let _ = write!(h, "<th>{}</th>", esc(&r.label));
    }
    h += "</tr>";
    for (api, test) in tests(runs) {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(&api), esc(&test));
        for r in runs {
            let _ = match cell(r, &api, &test) {
                Some(o) if o.ok => write!(h, "<td class=pass>pass</td>"),
                Some(o) if o.known.is_some() => write!(
                    h,
                    "<td class=known title=\"{}\">known: {}</td>",
                    esc(&o.why),
                    esc(o.known.as_deref().unwrap_or(""))
                ),
                Some(o) => write!(
                    h,
                    "<td class=fail title=\"{}\">FAIL: {}</td>",
                    esc(&o.why),
                    esc(&o.why)
                ),
                None => write!(h, "<td class=none>-</td>"),
            };
        }
        h += "</tr>";
    }
    h += "</table>";
    for r in runs {
        if let Some(why) = &r.unclean {
            let _ = write!(
                h,
                "<p class=fail>[{}] the run was not clean: {}</p>",
                esc(&r.label),
                esc(why)
            );
        }
        if !r.finished {
            let _ = write!(
                h,
                "<p class=fail>[{}] the suite did not reach its end</p>",
                esc(&r.label)
            );
        }
    }
    h += "</body></html>\n";
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_read_from_the_kernel_log() {
        let log = "[    2.1] dmalab-conformance: {\"start\":true,\"dma_bits\":64}\n\
                   [    2.2] dmalab-conformance: {\"api\":\"coherent\",\"test\":\"zeroed_slice 1 B\",\"ok\":true,\"why\":\"\"}\n\
                   [    2.3] other line\n\
                   [    2.4] dmalab-conformance: {\"api\":\"sgtable\",\"test\":\"x\",\"ok\":false,\"why\":\"byte 3 reads 0x00\"}\n";
        let (r, done) = parse(log);
        assert_eq!(r.len(), 2);
        assert!(!done, "no done line yet");
        assert!(!r[1].ok && r[1].why.contains("byte 3"));
        let (_, done) = parse(&format!(
            "{log}[ 3.0] dmalab-conformance: {{\"done\":true}}\n"
        ));
        assert!(done);
        // a warning while a test ran fails that test
        let warned = "[ 1] DMA-API: dmalab 0000:01:00.0: mapping sg segment longer than device claims to support\n\
                      [ 2] WARNING: CPU: 0 PID: 1 at kernel/dma/debug.c:1234 debug_dma_map_sg\n\
                      [ 3] dmalab-conformance: {\"api\":\"sgtable\",\"test\":\"t\",\"ok\":true,\"why\":\"\"}\n";
        let (r, _) = parse(warned);
        assert!(!r[0].ok && r[0].why.contains("WARNING"), "{:?}", r[0]);
        assert!(problems_attributed(warned));
    }

    #[test]
    fn a_failure_or_an_api_not_built_fails_the_suite() {
        let ok = Outcome {
            api: "a".into(),
            test: "t".into(),
            ok: true,
            why: String::new(),
            known: None,
        };
        let run = |results: Vec<Outcome>| ConditionRun {
            name: "gentle".into(),
            label: "smp1".into(),
            results,
            finished: true,
            unclean: None,
        };
        let built = Built {
            built: vec!["a".into()],
            failed: BTreeMap::new(),
            absent: BTreeMap::from([("streaming".to_string(), "no module".to_string())]),
        };
        assert!(passed(&built, &[run(vec![ok.clone()])]));
        let bad = Outcome {
            ok: false,
            why: "byte 0".into(),
            ..ok.clone()
        };
        assert!(!passed(&built, &[run(vec![bad])]));
        let mut not_built = built.clone();
        not_built.failed.insert("b".into(), "error[E0599]".into());
        assert!(!passed(&not_built, &[run(vec![ok.clone()])]));
        let t = text("tree", &not_built, &[run(vec![ok.clone()])]);
        assert!(t.contains("NOT BUILT  b"), "{t}");
        // a known failure is reported, and does not fail the suite
        let mut known_bad = vec![Outcome {
            ok: false,
            why: "segment longer".into(),
            ..ok.clone()
        }];
        let k = Known {
            series: "7.3".into(),
            api: "a".into(),
            test: "t".into(),
            shows: "segment longer".into(),
            why: "the finding".into(),
        };
        mark_known(&mut known_bad, std::slice::from_ref(&k));
        assert!(passed(&built, &[run(known_bad.clone())]));
        // only in the kernel log beside a test that passed its own check: known too
        let mut logged = vec![Outcome {
            ok: false,
            why: "the kernel log: DMA-API: segment longer".into(),
            ..ok.clone()
        }];
        mark_known(&mut logged, std::slice::from_ref(&k));
        assert!(logged[0].known.is_some());
        // a test that failed its own check is not excused by the known line beside it
        let mut hidden = vec![Outcome {
            ok: false,
            why: "copy of 4096 bytes: the device says OVERLAP; the kernel log: segment longer"
                .into(),
            ..ok.clone()
        }];
        mark_known(&mut hidden, std::slice::from_ref(&k));
        assert!(hidden[0].known.is_none(), "a known failure hid a new one");
        assert!(!passed(&built, &[run(hidden)]));
        assert!(text("tree", &built, &[run(known_bad)])
            .contains("known failure of this tree (a): the finding"));
    }
}
