//! Loading, binding and unloading the kernel module, and what it reports of itself.

use std::time::{Duration, Instant};

use dmalab_report::*;

use crate::dev;
use crate::report::report;

pub fn loaded() -> bool {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("dmalab "))
}

/// Loads the module with the kernel command line's parameters and reports how that went and
/// where its functions were loaded.
pub fn insmod(module: &str) -> Result<(), String> {
    let t = Instant::now();
    let r = dev::insmod_with(module, &module_params());
    report(Report::Insmod(Insmod {
        ok: r.is_ok(),
        error: r.as_ref().err().map_or("", |e| e).to_string(),
        us: t.elapsed().as_micros() as u64,
    }));
    r?;
    module_symbols();
    Ok(())
}

pub fn load(module: &str) -> Result<(), String> {
    if loaded() {
        return Ok(());
    }
    insmod(module)?;
    // Probe runs while the module loads (synchronously for a present device); its misc device
    // node appears a little later (devtmpfs). A device left unbound means probe failed: no
    // node will come, so say so now instead of waiting out the deadline.
    if bound_device().is_err() {
        return Err(
            "driver loaded but no device is bound to it: probe failed (see the kernel log)".into(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::path::Path::new("/dev/dmalab0").exists() {
        if Instant::now() > deadline {
            return Err(
                "driver loaded but /dev/dmalab0 did not appear (probe failed? see kernel log)"
                    .into(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Module parameters from the kernel command line: `dmalab_module.NAME=VALUE` becomes
/// `NAME=VALUE` (what modprobe does for `module.param`; the agent loads with finit_module).
pub fn module_params() -> String {
    std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.strip_prefix("dmalab_module."))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn unload() -> Result<(), String> {
    if !loaded() {
        return Ok(());
    }
    let r = dev::rmmod("dmalab");
    report(Report::Rmmod(Rmmod {
        ok: r.is_ok(),
        error: r.as_ref().err().map_or("", |e| e).to_string(),
        still_loaded: loaded(),
    }));
    dma_api("unloaded");
    r
}

/// Reports where the module's functions were loaded (for naming guest PCs on the host).
pub fn module_symbols() {
    let all = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let symbols: Vec<(u64, String)> = all
        .lines()
        .filter(|l| l.ends_with("[dmalab]"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let addr = u64::from_str_radix(f.next()?, 16).ok()?;
            let kind = f.next()?;
            let name = f.next()?;
            (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
        })
        .collect();
    report(Report::ModuleSymbols(ModuleSymbols {
        module: "dmalab".into(),
        symbols,
    }));
}

pub fn dma_api(when: &str) {
    let entries = dev::dmalab_devices()
        .first()
        .and_then(|bdf| dev::dma_api_entries(bdf));
    report(Report::DmaApi(DmaApi {
        when: when.to_string(),
        errors: dev::dma_api_errors(),
        entries,
    }));
}

/// The PCI address of the device bound to dmalab.
pub fn bound_device() -> Result<String, String> {
    std::fs::read_dir("/sys/bus/pci/drivers/dmalab")
        .map_err(|e| format!("dmalab driver not registered: {e}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("0000:"))
        .ok_or_else(|| "no device bound to dmalab".to_string())
}
