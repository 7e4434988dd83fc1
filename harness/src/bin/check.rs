//! `dmalab check --driver path/to/dmalab.ko`: grades a driver for the dmalab device that you
//! bring (a rewrite, a C driver, a driver on a newer `kernel::dma`). It boots the VM with that
//! module instead of ours, runs the checks of docs/contract.md level by level, and prints a
//! report card; the exit status says pass or fail. `--step N` grades a tutorial module on the
//! ladder instead. The checks themselves are one table (`dmalab_harness::grading::checks`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use dmalab_harness::grading::{Grader, Mode};

#[derive(clap::Parser, Debug)]
#[command(about = "Grade a driver for the dmalab device (docs/contract.md)")]
struct Args {
    /// The module under test, built against the guest kernel (make prints its build directory)
    #[arg(long, required_unless_present = "list")]
    driver: Option<PathBuf>,
    /// Print the table of checks (id, level, ladder steps, the VM each looks at) and exit
    #[arg(long)]
    list: bool,
    /// Grade only this check (its id from --list); repeat for several
    #[arg(long = "check", value_name = "ID", value_parser = check_id)]
    only: Vec<String>,
    /// With --step N: only the checks step N adds, not those of the steps before it
    #[arg(long, requires = "step")]
    new_only: bool,
    /// Run the checks of levels 1..=N only (1 binds, 2 transfers, 3 refusals, 4 faults,
    /// 5 teardown, 6 DMA ownership)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=6))]
    level: u32,
    /// Start at level N instead of 1 (to look at one level of a driver known to pass the
    /// earlier ones)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=6))]
    from: u32,
    /// Grade a tutorial module instead (docs/tutorial/): the checks of ladder steps 1..=N,
    /// which need only the part of the contract those steps build
    #[arg(long, conflicts_with = "level", value_parser = clap::value_parser!(u32).range(1..=dmalab_harness::tutorial::STEPS as i64))]
    step: Option<u32>,
    /// Boot this kernel image (bzImage) instead of the one the build made; the module must be
    /// built against it, and its configuration must have what the checks read (see
    /// guest-kernel/dmalab.config: DMA-API debug, lockdep, kmemleak, the IOMMU)
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Extra guest kernel command line (module parameters as dmalab_module.NAME=VALUE)
    #[arg(long, default_value = "")]
    append: String,
    /// Name of this grading: its VMs keep their logs in target/e2e/NAME_<check>, its initramfs
    /// and report card are in target/NAME (several gradings at once need different names)
    #[arg(long, default_value = "check", value_parser = run_name)]
    run_name: String,
    /// Run every VM under these platform conditions instead of each check's own (comma-
    /// separated: smp2, smp4, iova>4G, ram>4G, strict, swiotlb, dma32, dma40; `gentle` for
    /// one vCPU and nothing else). Default: each check under the conditions that expose what
    /// it checks (docs/contract.md#platform-conditions; --list shows them)
    #[arg(long, value_parser = dmalab_harness::Conditions::parse)]
    conditions: Option<dmalab_harness::Conditions>,
}

/// A check's id, from the table.
fn check_id(s: &str) -> Result<String, String> {
    dmalab_harness::grading::checks::table()
        .iter()
        .any(|c| c.id == s)
        .then(|| s.to_string())
        .ok_or_else(|| format!("no check has the id '{s}' (dmalab check --list)"))
}

/// A grading's name becomes directory names: letters, digits, `-` and `_` only.
fn run_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| s.to_string())
        .ok_or_else(|| "1 to 64 letters, digits, '-' or '_'".into())
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    if args.list {
        print!("{}", dmalab_harness::grading::listing());
        return ExitCode::SUCCESS;
    }
    let Some(driver) = args.driver.clone() else {
        return ExitCode::FAILURE; // clap requires it without --list
    };
    // A failed check is caught and reported on the card (see `clean`), not as a panic.
    std::panic::set_hook(Box::new(|_| {}));
    let need = |n: &str| dmalab_harness::artifacts::path(n).unwrap_or_else(|e| panic!("{e}"));
    let (kbuild, agent) = (need("kbuild"), need("agent"));
    if !driver.exists() {
        eprintln!(
            "dmalab check: {} does not exist. Build your module against the guest kernel: make -C {} M=<your module dir> LLVM=-19 ARCH=x86_64 modules",
            driver.display(),
            kbuild.display()
        );
        return ExitCode::FAILURE;
    }
    let root = dmalab_harness::artifacts::root();
    let dir = root.join("target").join(&args.run_name);
    let built = Command::new(root.join("scripts/build-initramfs.sh"))
        .arg(&kbuild)
        .arg(&agent)
        .arg(&driver)
        .arg(&dir)
        .output();
    let initramfs = match built {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        Ok(o) => {
            eprintln!(
                "dmalab check: initramfs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("dmalab check: initramfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mode = match args.step {
        Some(step) => Mode::Step(step),
        None => Mode::Levels {
            from: args.from,
            to: args.level,
        },
    };
    let mut grader = Grader::new(
        mode,
        &args.run_name,
        initramfs,
        args.kernel.clone(),
        &args.append,
    );
    grader.only = args.only.clone();
    grader.new_only = args.new_only;
    grader.conditions = args.conditions;
    if !dmalab_harness::grading::checks::table()
        .iter()
        .any(|c| grader.wants(c))
    {
        eprintln!("dmalab check: no check is graded at these levels or steps with these ids (dmalab check --list)");
        return ExitCode::FAILURE;
    }
    let rows = grader.grade();
    let mark = if args.step.is_some() { "S" } else { "L" };
    println!("\n== dmalab check: {}", driver.display());
    let mut passed = 0;
    for c in &rows {
        match &c.result {
            Ok(()) => {
                passed += 1;
                println!("  PASS  {mark}{} {} [{}]", c.rank, c.name, c.platform);
            }
            Err(why) => match c.after {
                // a consequence of an earlier failure on the same VM: the cause is above
                Some(cause) => println!(
                    "  NOT RUN  {mark}{} {} [{}]: the agent stopped when \"{cause}\" failed (above); what it saw: {why}",
                    c.rank, c.name, c.platform
                ),
                None => println!(
                    "  FAIL  {mark}{} {} [{}]: {why}  (see {}; the VM: {})",
                    c.rank, c.name, c.platform, c.see, c.conditions
                ),
            },
        }
    }
    let notes = grader.notes.borrow().clone();
    for (heading, text) in &notes {
        println!("  {heading}: {text}");
    }
    let page =
        dmalab_harness::html::report_card(&driver.display().to_string(), mark, &rows, &notes);
    let html = dir.join("report.html");
    match std::fs::write(&html, page) {
        Ok(()) => println!("  report: {}", html.display()),
        Err(e) => eprintln!("dmalab check: cannot write {}: {e}", html.display()),
    }
    println!(
        "  {passed}/{} checks passed; logs in target/e2e/{}_*",
        rows.len(),
        args.run_name
    );
    if passed == rows.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
