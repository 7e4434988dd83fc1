//! `make kernel-doctests`: boots the kernel `scripts/kernel-doctests.sh` built (the 7.3 tree with
//! the streaming patch, KUnit and the kernel crate's doctests on), where KUnit runs every doctest
//! of the `kernel` crate at boot, and reads their results from the kernel log. Passes when every
//! doctest passed and the streaming module's ran.

use std::path::PathBuf;
use std::process::ExitCode;

use dmalab_harness::vm::{run, VmOptions};

#[derive(clap::Parser, Debug)]
#[command(about = "The kernel crate's doctests (the streaming patch's among them) under KUnit")]
struct Args {
    /// The doctest kernel (scripts/kernel-doctests.sh prints it)
    #[arg(long)]
    kernel: PathBuf,
    /// Its initramfs, with the driver built for it
    #[arg(long)]
    initramfs: PathBuf,
}

/// One doctest's KTAP line (`ok 12 rust_doctest_kernel_dma_rs_3`): whether it passed, its name.
fn result(line: &str) -> Option<(bool, &str)> {
    let t = line.split_once("] ").map_or(line, |(_, m)| m).trim();
    let (ok, rest) = if let Some(r) = t.strip_prefix("not ok ") {
        (false, r)
    } else {
        (true, t.strip_prefix("ok ")?)
    };
    let name = rest.split_once(' ')?.1.split(" #").next()?.trim();
    name.starts_with("rust_doctest_").then_some((ok, name))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let mut o = VmOptions::new("kernel_doctests", "bind");
    o.kernel = Some(args.kernel);
    o.initramfs = Some(args.initramfs);
    o.timeout = std::time::Duration::from_secs(1800);
    eprintln!(
        "dmalab-kernel-doctests: one boot; KUnit runs the kernel crate's doctests before init"
    );
    let r = run(&o);
    let results: Vec<(bool, &str)> = r.console.lines().filter_map(result).collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, n)| *n)
        .collect();
    let streaming: Vec<&(bool, &str)> = results
        .iter()
        .filter(|(_, n)| n.contains("dma_streaming"))
        .collect();
    println!(
        "kernel crate doctests under KUnit: {} run, {} failed; the streaming module's: {} run, {} passed",
        results.len(),
        failed.len(),
        streaming.len(),
        streaming.iter().filter(|(ok, _)| *ok).count()
    );
    for n in &failed {
        println!("  FAIL {n}");
    }
    println!("kernel log: {}", r.dir.join("console.log").display());
    if results.is_empty() || !failed.is_empty() || streaming.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::result;

    #[test]
    fn ktap_lines_of_doctests_are_read() {
        assert_eq!(
            result("[    1.2]     ok 3 rust_doctest_kernel_dma_streaming_rs_0"),
            Some((true, "rust_doctest_kernel_dma_streaming_rs_0"))
        );
        assert_eq!(
            result("    not ok 4 rust_doctest_kernel_alloc_rs_1 # SKIP x"),
            Some((false, "rust_doctest_kernel_alloc_rs_1"))
        );
        assert_eq!(result("ok 1 rust_doctests_kernel"), None);
        assert_eq!(result("[ 1] dmalab: ok"), None);
    }
}
