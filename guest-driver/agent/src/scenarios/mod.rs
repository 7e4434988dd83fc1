//! The scenarios the host can ask for. Each reports facts as JSON lines; an `Err` means the
//! scenario could not run to its end (the host treats that as a failure). One module per topic;
//! `verify` holds the step they are all made of.

mod campaign;
mod faults;
mod lifecycle;
mod transfers;
mod verify;

use dmalab_abi::{self as abi};
use dmalab_report::*;

use crate::dev::{self, Dev};
use crate::kmod::{bound_device, dma_api, load, unload};
use crate::report::report;

use self::campaign::campaign;
use self::faults::{
    dma_bug, error_paths, interrupts, probe, stale_bytes, stall_recovery, timeout_late,
};
use self::lifecycle::{
    bind, info, kmemleak_suspects, probe_unwind, reload, removal, reset, stats, unbind_busy,
    unbind_repeat, unbind_stalled,
};
use self::transfers::{
    basic, batch, bench, concurrent, errors, overlap, queues, scatter_gather, selftest,
    serial_copies, transfers,
};
use self::verify::{report_xfer, verified};

pub fn run(name: &str, module: &str) -> Result<(), String> {
    match name {
        "load" => load(module),
        "bind" => bind(module),
        "basic" => basic(),
        "queues" => queues(),
        "kmemleak_clear" => {
            dev::kmemleak_clear();
            Ok(())
        }
        "kmemleak" => {
            let found = kmemleak_suspects();
            report(Report::Leaks(Leaks {
                suspects: found.as_ref().map(|f| f.0),
                first: found.map(|f| f.1).unwrap_or_default(),
            }));
            Ok(())
        }
        "stall_recovery" => stall_recovery(),
        "error_paths" => error_paths(),
        "stale_bytes" => stale_bytes(),
        "interrupts" => interrupts(),
        "unload" => unload(),
        "firstlight" => {
            load(module)?;
            info()?;
            dma_api("loaded");
            unload()
        }
        "info" => info(),
        "transfers" => transfers(),
        "sg" => scatter_gather(),
        "concurrent" => concurrent(),
        "wrap" => transfers::wrap(),
        "batch" => batch(),
        "selftest" => selftest(),
        "reload" => reload(module),
        "bench" => bench(),
        "bench_matrix" => crate::bench::matrix(module),
        "bench_module_pair" => crate::bench::module_pair(module),
        "bench_scaling" => crate::bench::scaling(),
        "stats" => stats(),
        "errors" => errors(),
        "reset" => reset(),
        "unbind_busy" => unbind_busy(),
        "unbind_repeat" => unbind_repeat(),
        "timeout_late" => timeout_late(),
        "probe" => probe(),
        "removal" => removal(),
        "campaign" => campaign(),
        "unbind_stalled" => unbind_stalled(),
        "unbind_held" => lifecycle::unbind_held(),
        "probe_unwind" => probe_unwind(module),
        "dma_bug" => dma_bug(module),
        "serial_copies" => serial_copies(),
        "overlap" => overlap(),
        "hostile" => {
            crate::hostile::hostile(&bound_device()?)?;
            let o = verified(&Dev::open(0)?, abi::OP_COPY, 0, 65536, 0, 5, 0);
            report_xfer(&o, "after_hostile");
            Ok(())
        }
        other => Err(format!("unknown scenario '{other}'")),
    }
}
