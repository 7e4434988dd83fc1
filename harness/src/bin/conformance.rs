//! `make conformance [KERNEL_SRC=/path/to/tree]`: the conformance suite of the kernel's Rust DMA
//! abstraction (docs/conformance.md). Builds the conformance module against a kernel build
//! directory (each API's tests on their own, so a tree whose API differs loses only those),
//! boots it under each platform condition with the real device, and prints the table of API ×
//! condition with every failure's reason; `target/conformance/report.html` and `results.json`
//! next to it. The exit status says whether everything built and passed.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use dmalab_harness::conformance::{self, Built, ConditionRun};
use dmalab_harness::Conditions;

#[derive(clap::Parser, Debug)]
#[command(about = "Conformance suite of the kernel's Rust DMA abstraction (docs/conformance.md)")]
struct Args {
    /// The kernel build directory (O=) to build the module against and boot; default: the one
    /// `make kernel` built (KERNEL_SRC= makes that one from your tree)
    #[arg(long)]
    kbuild: Option<PathBuf>,
    /// The platform conditions to run under, `;`-separated sets of `--conditions` names
    /// (default: gentle; smp2; strict; iova>4G,strict; swiotlb)
    #[arg(long)]
    conditions: Option<String>,
    /// Name of this run: its VMs' logs are target/e2e/NAME_<condition>, its report target/NAME
    #[arg(long, default_value = "conformance")]
    run_name: String,
    /// Use the module and initramfs already built into target/NAME (apis.json, initramfs):
    /// for builds that had to happen elsewhere (`make conformance-selftest` builds in a mount
    /// namespace where the patched tree stands in for the original)
    #[arg(long)]
    prebuilt: bool,
}

/// Which APIs' tests built (`apis.json`, written by scripts/build-conformance.sh into `out`).
fn built_apis(out: &std::path::Path) -> Built {
    std::fs::read_to_string(out.join("apis.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// Builds the module against `kbuild` (scripts/build-conformance.sh) and its initramfs into
/// `out`: which APIs' tests built, and the initramfs.
fn build(
    root: &std::path::Path,
    kbuild: &std::path::Path,
    agent: &std::path::Path,
    out: &std::path::Path,
) -> Result<(Built, PathBuf), String> {
    let built = Command::new(root.join("scripts/build-conformance.sh"))
        .arg(kbuild)
        .arg(out)
        .output()
        .map_err(|e| format!("build-conformance.sh: {e}"))?;
    eprint!("{}", String::from_utf8_lossy(&built.stderr));
    if !built.status.success() {
        return Err("the module does not build".into());
    }
    let module = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    let apis = built_apis(out);
    let initramfs = Command::new(root.join("scripts/build-initramfs.sh"))
        .arg(kbuild)
        .arg(agent)
        .arg(&module)
        .arg(out)
        .output()
        .map_err(|e| format!("build-initramfs.sh: {e}"))?;
    if !initramfs.status.success() {
        return Err(format!(
            "initramfs: {}",
            String::from_utf8_lossy(&initramfs.stderr)
        ));
    }
    Ok((
        apis,
        PathBuf::from(String::from_utf8_lossy(&initramfs.stdout).trim()),
    ))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    // A run that is not clean is reported on the table (see `conformance::run_under`), not as
    // a panic.
    std::panic::set_hook(Box::new(|_| {}));
    let need = |n: &str| dmalab_harness::artifacts::path(n).unwrap_or_else(|e| panic!("{e}"));
    let kbuild = args.kbuild.clone().unwrap_or_else(|| need("kbuild"));
    let agent = need("agent");
    let root = dmalab_harness::artifacts::root();
    let out = root.join("target").join(&args.run_name);
    let tree = std::fs::read_link(kbuild.join("source"))
        .unwrap_or_else(|_| kbuild.clone())
        .display()
        .to_string();

    let (apis, initramfs) = if args.prebuilt {
        let apis = built_apis(&out);
        (apis, out.join("initramfs.cpio"))
    } else {
        match build(&root, &kbuild, &agent, &out) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("dmalab conformance: {e} ({tree})");
                return ExitCode::FAILURE;
            }
        }
    };
    let kernel = args
        .kbuild
        .as_ref()
        .map(|k| k.join("arch/x86/boot/bzImage"));

    let sets: Vec<String> = match &args.conditions {
        Some(list) => list.split(';').map(|s| s.trim().to_string()).collect(),
        None => conformance::DEFAULT_CONDITIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    let mut parsed = Vec::new();
    for s in &sets {
        match Conditions::parse(s) {
            Ok(c) => parsed.push((s.clone(), c)),
            Err(e) => {
                eprintln!("dmalab conformance: conditions '{s}': {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let total = parsed.len();
    // the kernel series of the tree (`7.3`), for its known failures
    let series = Command::new("make")
        .args(["-s", "-C"])
        .arg(&kbuild)
        .arg("kernelversion")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."))
        .unwrap_or_default();
    let known = match conformance::known(&root, &series) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("dmalab conformance: {e}");
            return ExitCode::FAILURE;
        }
    };
    let known = &known;
    // the VMs side by side, as many as the machine's slots allow (dmalab_harness::slots)
    let runs: Vec<ConditionRun> = std::thread::scope(|s| {
        let handles: Vec<_> = parsed
            .iter()
            .enumerate()
            .map(|(i, (name, c))| {
                let (initramfs, kernel, run_name) = (&initramfs, kernel.clone(), &args.run_name);
                s.spawn(move || {
                    eprintln!("dmalab conformance: {}/{} under {name} ...", i + 1, total);
                    conformance::run_under(run_name, name, *c, initramfs, kernel, known)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let text = conformance::text(&tree, &apis, &runs);
    print!("{text}");
    let _ = std::fs::write(out.join("report.txt"), &text);
    let _ = std::fs::write(
        out.join("report.html"),
        conformance::html(&tree, &apis, &runs),
    );
    let _ = std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({ "tree": tree, "apis": apis, "runs": runs }),
        )
        .unwrap_or_default(),
    );
    println!("report: {}", out.join("report.html").display());
    if conformance::passed(&apis, &runs) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
