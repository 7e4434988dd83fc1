//! dmalab's DMA ownership oracle, as a QEMU TCG plugin (plugin API v5, QEMU 10.1 and 10.2).
//!
//! The device publishes which guest-physical memory each posted request owns (the
//! `dmalab-ownership` table); this plugin watches every guest CPU memory access and reports
//! the ones that break that ownership: a write to memory the device reads (a source buffer, a
//! posted descriptor, a scatter-gather list), any access to memory the device writes (a
//! destination buffer). See `docs/oracle.md`.
//!
//! Arguments (`-plugin liboracle.so,table=...,out=...`):
//! - `table`: the ownership table file the device server was started with (`--oracle`);
//! - `out`: where violations go, one JSON object per line;
//! - `user`: also check user-mode instructions (default off: the driver's DMA memory is
//!   kernel memory, and user code is most of the guest's work);
//! - `helpers`: guest-virtual ranges `start-end:start-end...` (hex) of kernel helpers such as
//!   `memcpy`: a violation inside one also records the helper's return address, so the report
//!   names the driver function that called it;
//! - `bulk`: `kind@start-end:...` (hex) of kernel helpers whose arguments name all the memory
//!   they touch: `copy` (dst rdi, src rsi, length rdx: `memcpy`, `memmove`), `fill` (dst rdi,
//!   length rdx: `memset`), `ucopy` and `ufill` (the same with the length in rcx: the user-copy
//!   routines). Their loads and stores are not instrumented one by one: at the helper's first
//!   instruction the plugin reads the arguments and checks the whole ranges at once, page by
//!   page, and a violation records the helper's caller as for `helpers`;
//! - `io`: ranges of the kernel's register accessors (`rust_helper_writel`, `iowrite32`, ...),
//!   through which drivers store to device registers;
//! - `scope`: `driver` (default) checks code in module space, the helpers and the register
//!   accessors, where a driver's accesses to its DMA memory happen; `kernel` checks all
//!   kernel-mode code (slower, for DMA memory that core kernel code touches too);
//! - `count=on` with `syscall=<hex address of entry_SYSCALL_64>`: also count kernel
//!   instructions per request, split at the doorbell (see `counting.rs`).
//! - `dma_map`, `dma_unmap`, `dma_unmap_sg`, `dma_sync_cpu`, `dma_sync_dev`: addresses
//!   (`a:b`, hex) of the DMA API's streaming entry points (`dma_map_sgtable` and its Rust
//!   helper, the Rust helper of `dma_unmap_sgtable`, `dma_unmap_sg_attrs`,
//!   `__dma_sync_sg_for_cpu`, `__dma_sync_sg_for_device`), and `vmemmap` the address of
//!   `vmemmap_base`: what a module maps stays the device's until it syncs it for the CPU or
//!   unmaps it, descriptor or not (see `dma_api.rs`).
//!
//! Doorbell race: a posted MMIO store retires before the device server has handled it. After
//! every store to the device's BAR0 the plugin holds the vCPU until the device reports that it
//! has handled as many BAR0 writes, so the windows of the descriptors a doorbell posts are in
//! the table before the guest runs its next instruction.

#![deny(unsafe_code)]

mod bulk;
mod checker;
mod dma_api;
mod guest;

use std::sync::{Arc, Mutex};

use qemu_plugin::install::{Args, Info, Value};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::{
    CallbackFlags, MemRW, PluginId, RegisterDescriptor, TranslationBlock, VCPUIndex,
};

use checker::{Checker, Config};
use dmalab_ownership::helpers::Helpers;

/// The plugin API this plugin is built for (the `plugin-api-v5` feature of `qemu-plugin`).
const API_VERSION: i64 = 5;

/// Kernel addresses on x86-64: the upper half.
const KERNEL_BASE: u64 = 0xffff_8000_0000_0000;
/// x86-64 module space (`MODULES_VADDR..MODULES_END`): where loadable drivers run.
const MODULES: std::ops::Range<u64> = 0xffff_ffff_a000_0000..0xffff_ffff_ff00_0000;

#[derive(Default)]
struct Oracle {
    checker: Option<Arc<Checker>>,
    user: bool,
    /// Kernel helper functions (`[start, end)`): accesses there also capture the return address.
    helpers: Vec<(u64, u64)>,
    /// Kernel helpers checked once per call, from their arguments.
    bulk: Helpers,
    /// The kernel's register accessors.
    io: Vec<(u64, u64)>,
    /// Check all kernel code, not only the driver's (`scope=kernel`).
    whole_kernel: bool,
    /// Instructions per request (`count=on`), and the system-call entry that starts one.
    counter: Option<(Arc<dmalab_ownership::counting::Counter>, u64)>,
    /// The stack pointer register (the guest has one vCPU).
    rsp: Arc<Mutex<Option<RegisterDescriptor<'static>>>>,
    /// The first four argument registers (rdi, rsi, rdx, rcx), read at a DMA API hook.
    args: Arc<Mutex<Vec<RegisterDescriptor<'static>>>>,
}

/// Parses `start-end:start-end...` (hex, `0x` optional).
fn parse_ranges(s: &str) -> Vec<(u64, u64)> {
    let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
    s.split(':')
        .filter_map(|r| {
            let (a, b) = r.split_once('-')?;
            Some((hex(a)?, hex(b)?))
        })
        .collect()
}

/// The value of a 64-bit register of the current vCPU.
fn read_register(reg: &Mutex<Option<RegisterDescriptor<'static>>>) -> Option<u64> {
    let reg = reg.lock().ok()?;
    let raw = reg.as_ref()?.read().ok()?;
    Some(u64::from_le_bytes(raw.get(..8)?.try_into().ok()?))
}

/// The return address at the top of the guest stack (a leaf helper such as `memcpy` has not
/// pushed anything), read through the vCPU's stack pointer.
fn return_address(rsp: &Mutex<Option<RegisterDescriptor<'static>>>) -> Option<u64> {
    guest::read_u64(read_register(rsp)?)
}

/// An access of `size` bytes at guest-virtual `vaddr` (guest-physical `gpa` for its first
/// byte) as guest-physical pieces: one, or two when it crosses a page, since the next virtual
/// page is in general another physical one (checking `gpa..gpa + size` would blame whatever
/// follows the first page physically).
fn pieces(gpa: u64, vaddr: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    const PAGE: u64 = 4096;
    let first = size.min(PAGE - (vaddr % PAGE));
    let rest = (size > first)
        .then(|| guest::translate(vaddr + first).map(|g| (g, size - first)))
        .flatten();
    std::iter::once((gpa, first)).chain(rest)
}

/// The first four integer arguments of the call whose first instruction is executing.
fn read_args(regs: &Mutex<Vec<RegisterDescriptor<'static>>>) -> Option<dma_api::Call> {
    let regs = regs.lock().ok()?;
    let mut args = [0u64; 4];
    for (a, r) in args.iter_mut().zip(regs.iter()) {
        let raw = r.read().ok()?;
        *a = u64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    }
    (regs.len() == 4).then_some(dma_api::Call { args })
}

fn arg<'a>(args: &'a Args, key: &str) -> Option<&'a Value> {
    args.parsed.get(key)
}

fn string_arg(args: &Args, key: &str) -> Option<String> {
    match arg(args, key)? {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Bool(b) => Some(b.to_string()),
    }
}

impl Register for Oracle {
    fn register(&mut self, id: PluginId, args: &Args, info: &Info) -> qemu_plugin::Result<()> {
        if info.version.current < API_VERSION || info.version.mininum > API_VERSION {
            let msg = format!(
                "dmalab-oracle: built for QEMU plugin API v{API_VERSION}, but this QEMU offers v{}..v{}; rebuild the plugin against this QEMU (make oracle)",
                info.version.mininum, info.version.current
            );
            eprintln!("{msg}");
            return Err(qemu_plugin::Error::PluginInstanceSetError);
        }
        let (Some(table), Some(out)) = (string_arg(args, "table"), string_arg(args, "out")) else {
            eprintln!("dmalab-oracle: needs table=<ownership table> and out=<violations file>");
            return Err(qemu_plugin::Error::PluginInstanceSetError);
        };
        let cfg = Config {
            table: table.into(),
            out: out.into(),
        };
        self.user = matches!(arg(args, "user"), Some(Value::Bool(true)));
        self.helpers = string_arg(args, "helpers")
            .map(|s| parse_ranges(&s))
            .unwrap_or_default();
        self.bulk = match string_arg(args, "bulk").map(|s| Helpers::parse(&s)) {
            None => Helpers::default(),
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                eprintln!("dmalab-oracle: bulk={e}");
                return Err(qemu_plugin::Error::PluginInstanceSetError);
            }
        };
        self.io = string_arg(args, "io")
            .map(|s| parse_ranges(&s))
            .unwrap_or_default();
        self.whole_kernel = match string_arg(args, "scope").as_deref() {
            None | Some("driver") => false,
            Some("kernel") => true,
            Some(other) => {
                eprintln!("dmalab-oracle: scope={other}: expected driver or kernel");
                return Err(qemu_plugin::Error::PluginInstanceSetError);
            }
        };
        let mut checker = Checker::new(cfg).map_err(|e| {
            eprintln!("dmalab-oracle: {e}");
            qemu_plugin::Error::PluginInstanceSetError
        })?;
        for (key, hook) in [
            ("dma_map", dma_api::Hook::MapTable),
            ("dma_unmap", dma_api::Hook::UnmapTable),
            ("dma_unmap_sg", dma_api::Hook::UnmapSg),
            ("dma_sync_cpu", dma_api::Hook::SyncForCpu),
            ("dma_sync_dev", dma_api::Hook::SyncForDevice),
        ] {
            for a in string_arg(args, key)
                .map(|s| dma_api::parse_addresses(&s))
                .unwrap_or_default()
            {
                checker.mappings.hooks.push((a, hook));
            }
        }
        checker.mappings.vmemmap_symbol =
            string_arg(args, "vmemmap").and_then(|s| dma_api::parse_addresses(&s).first().copied());
        if matches!(arg(args, "count"), Some(Value::Bool(true))) {
            let entry = string_arg(args, "syscall")
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok());
            let Some(entry) = entry else {
                eprintln!("dmalab-oracle: count=on needs syscall=<entry_SYSCALL_64 address>");
                return Err(qemu_plugin::Error::PluginInstanceSetError);
            };
            let counter = Arc::new(dmalab_ownership::counting::Counter::default());
            checker.count_with(counter.clone());
            self.counter = Some((counter, entry));
        }
        let checker = Arc::new(checker);
        let at_exit = checker.clone();
        qemu_plugin::qemu_plugin_register_atexit_cb(id, move |_| at_exit.finish())?;
        self.checker = Some(checker);
        Ok(())
    }
}

impl HasCallbacks for Oracle {
    fn on_vcpu_init(&mut self, _id: PluginId, _vcpu: VCPUIndex) -> qemu_plugin::Result<()> {
        let regs = qemu_plugin::qemu_plugin_get_registers()?;
        let find = |name: &str| regs.iter().find(|r| r.name == name).cloned();
        if let Some(r) = find("rsp") {
            *self.rsp.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
        let args: Vec<_> = ["rdi", "rsi", "rdx", "rcx"]
            .into_iter()
            .filter_map(find)
            .collect();
        if args.len() == 4 {
            *self.args.lock().unwrap_or_else(|e| e.into_inner()) = args;
        }
        Ok(())
    }

    fn on_translation_block_translate(
        &mut self,
        _id: PluginId,
        tb: TranslationBlock,
    ) -> qemu_plugin::Result<()> {
        let Some(checker) = &self.checker else {
            return Ok(());
        };
        if let Some((counter, entry)) = &self.counter {
            let c = counter.clone();
            let n = tb.instructions().count() as u64;
            if tb.vaddr() < KERNEL_BASE {
                tb.register_execute_callback(move |_| c.user());
            } else if tb.vaddr() == *entry {
                tb.register_execute_callback(move |_| {
                    c.syscall();
                    c.kernel_block(n);
                });
            } else {
                tb.register_execute_callback(move |_| c.kernel_block(n));
            }
        }
        if !self.user && tb.vaddr() < KERNEL_BASE {
            return Ok(());
        }
        let in_ranges = |r: &[(u64, u64)], pc: u64| r.iter().any(|&(a, b)| (a..b).contains(&pc));
        for insn in tb.instructions() {
            let pc = insn.vaddr();
            if let Some(hook) = checker.mappings.hook_at(pc) {
                // a DMA API entry point: who calls, with what (only calls from modules count)
                let (c, rsp, args) = (checker.clone(), self.rsp.clone(), self.args.clone());
                insn.register_execute_callback_flags(
                    move |_| {
                        if !return_address(&rsp).is_some_and(|r| MODULES.contains(&r)) {
                            return;
                        }
                        if let Some(call) = read_args(&args) {
                            c.mappings.call(hook, &call);
                        }
                    },
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
            }
            if let Some((helper, entry)) = self.bulk.at(pc) {
                // a copy or fill helper: checked once, from its arguments, at its entry; its
                // own loads and stores are not instrumented
                if entry {
                    let (c, rsp, args) = (checker.clone(), self.rsp.clone(), self.args.clone());
                    insn.register_execute_callback_flags(
                        move |_| {
                            if let Some(call) = read_args(&args) {
                                let sp = read_register(&rsp);
                                bulk::check(&c, helper, pc, sp, &call.args);
                            }
                        },
                        CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                    );
                }
                continue;
            }
            let checked = pc < KERNEL_BASE
                || self.whole_kernel
                || MODULES.contains(&pc)
                || in_ranges(&self.helpers, pc)
                || in_ranges(&self.io, pc);
            if !checked {
                continue;
            }
            let c = checker.clone();
            if in_ranges(&self.helpers, pc) {
                // inside a helper: registers are needed to find who called it (costly, so
                // only here)
                let rsp = self.rsp.clone();
                insn.register_memory_access_callback_flags(
                    move |_vcpu: VCPUIndex, mem, vaddr| {
                        if let Some(hw) = mem.hwaddr(vaddr) {
                            let size = 1u64 << mem.size_shift();
                            for (gpa, n) in pieces(hw.hwaddr(), vaddr, size) {
                                c.access(gpa, n, mem.is_store(), pc, &|| return_address(&rsp));
                            }
                        }
                    },
                    MemRW::QEMU_PLUGIN_MEM_RW,
                    CallbackFlags::QEMU_PLUGIN_CB_R_REGS,
                );
                continue;
            }
            insn.register_memory_access_callback(
                move |_vcpu: VCPUIndex, mem, vaddr| {
                    if let Some(hw) = mem.hwaddr(vaddr) {
                        let size = 1u64 << mem.size_shift();
                        for (gpa, n) in pieces(hw.hwaddr(), vaddr, size) {
                            c.access(gpa, n, mem.is_store(), pc, &|| None);
                        }
                    }
                },
                MemRW::QEMU_PLUGIN_MEM_RW,
            );
        }
        Ok(())
    }
}

qemu_plugin::register!(Oracle::default());
