//! What the oracle found (`oracle.jsonl`, written by the TCG plugin), with each guest PC named
//! after the function it lies in: kernel functions from the kernel's `System.map`, module
//! functions from their load addresses (`/proc/kallsyms` in the guest).

use std::path::Path;

use serde_json::Value;

/// One distinct violation: a guest CPU access to memory a request owned.
#[derive(Debug, Clone)]
pub struct Violation {
    /// `cpu_write_to_read_owned`, `cpu_read_of_write_owned`, `cpu_write_to_write_owned` or
    /// `cpu_write_to_posted_descriptor`.
    pub kind: String,
    /// The request that owned the memory: its queue...
    pub queue: u16,
    /// ...and descriptor tag.
    pub tag: u32,
    /// The guest-physical address of the first access.
    pub gpa: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The guest PC of the access.
    pub pc: u64,
    /// The function the PC lies in (`name+0xoffset`, `[dmalab]` for the module).
    pub function: String,
    /// When the access was made inside a kernel helper such as `memcpy`: the function that
    /// called the helper.
    pub caller: Option<String>,
    /// Accesses with the same kind, request and PC.
    pub count: u64,
}

/// The oracle's account of one run.
#[derive(Debug, Clone, Default)]
pub struct OracleRun {
    /// Each distinct violation.
    pub violations: Vec<Violation>,
    /// The plugin's closing line (accesses checked, register stores synchronized, ...);
    /// `None` if QEMU did not exit through the plugin's exit hook.
    pub summary: Option<Value>,
    /// Instructions per request (`count=on`): requests, submit/complete medians and means.
    pub instructions: Option<Value>,
}

/// Names guest PCs.
pub struct Symbols {
    /// (address, name), sorted by address.
    table: Vec<(u64, String)>,
}

impl Symbols {
    /// Kernel symbols from `system_map` (if readable) and `(module, [(address, name)])` for
    /// each loaded module.
    pub fn new(system_map: Option<&Path>, modules: &[(&str, &[(u64, String)])]) -> Symbols {
        let text = system_map
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mut table: Vec<(u64, String)> = text_symbols(&text)
            .map(|(a, n)| (a, n.to_string()))
            .collect();
        for (module, symbols) in modules {
            for (a, n) in symbols.iter() {
                table.push((*a, format!("{n} [{module}]")));
            }
        }
        table.sort();
        Symbols { table }
    }

    /// `function+0xoffset` for `pc` (Rust names demangled), or the bare address.
    pub fn name(&self, pc: u64) -> String {
        let i = self.table.partition_point(|(a, _)| *a <= pc);
        match i.checked_sub(1).map(|i| &self.table[i]) {
            // a function longer than 64 KiB is not one: the PC is past the last symbol
            Some((a, n)) if pc - a < 0x10000 => {
                let (name, module) = match n.rsplit_once(" [") {
                    Some((name, m)) => (name, format!(" [{m}")),
                    None => (n.as_str(), String::new()),
                };
                format!("{:#}+{:#x}{module}", rustc_demangle::demangle(name), pc - a)
            }
            _ => format!("{pc:#x}"),
        }
    }
}

impl Violation {
    /// Where the access was made: the function, and its caller when that is a kernel helper.
    pub fn site(&self) -> String {
        match &self.caller {
            Some(c) => format!("{} called from {c}", self.function),
            None => self.function.clone(),
        }
    }
}

/// The plugin's `bulk=` argument: `kind@start-end:...` of the kernel's copy and fill helpers
/// ([`crate::helpers::HELPERS`]) in `system_map`: the oracle checks each call once, from its
/// arguments, and names the helper's caller in a violation.
pub fn helper_ranges(system_map: &Path) -> String {
    let kind = |n: &str| {
        crate::helpers::HELPERS
            .iter()
            .find(|(h, _)| *h == n)
            .map(|(_, k)| *k)
    };
    ranges_of(system_map, |n| kind(n).is_some())
        .into_iter()
        .filter_map(|(name, range)| Some(format!("{}@{range}", kind(&name)?)))
        .collect::<Vec<_>>()
        .join(":")
}

/// The plugin's `io=` argument: the kernel's register-store accessors in `system_map`.
pub fn io_ranges(system_map: &Path) -> String {
    ranges_of(system_map, |n| {
        let n = n.strip_prefix("rust_helper_").unwrap_or(n);
        n.starts_with("write") || n.starts_with("iowrite") || n.starts_with("__iowrite")
    })
    .into_iter()
    .map(|(_, range)| range)
    .collect::<Vec<_>>()
    .join(":")
}

/// The plugin's `syscall=` argument for `count=on`: the system-call entry's address (hex).
pub fn syscall_entry(system_map: &Path) -> String {
    let text = std::fs::read_to_string(system_map).unwrap_or_default();
    let entry = text_symbols(&text)
        .find(|(_, n)| *n == "entry_SYSCALL_64")
        .map_or(String::new(), |(a, _)| format!("{a:x}"));
    entry
}

/// The plugin's DMA API hooks (`dma_map=...,dma_unmap=...,...,vmemmap=...`, without a leading
/// comma; empty without `System.map`): the streaming entry points a module calls, and the
/// variable that locates `struct page`s.
pub fn dma_api_args(system_map: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(system_map) else {
        return String::new();
    };
    let find = |names: &[&str]| -> String {
        text.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let a = f.next()?;
                let _kind = f.next()?;
                names.contains(&f.next()?).then_some(a)
            })
            .collect::<Vec<_>>()
            .join(":")
    };
    [
        (
            "dma_map",
            &["dma_map_sgtable", "rust_helper_dma_map_sgtable"][..],
        ),
        ("dma_unmap", &["rust_helper_dma_unmap_sgtable"]),
        ("dma_unmap_sg", &["dma_unmap_sg_attrs"]),
        ("dma_sync_cpu", &["__dma_sync_sg_for_cpu"]),
        ("dma_sync_dev", &["__dma_sync_sg_for_device"]),
        ("vmemmap", &["vmemmap_base"]),
    ]
    .iter()
    .map(|(key, names)| (key, find(names)))
    .filter(|(_, v)| !v.is_empty())
    .map(|(key, v)| format!("{key}={v}"))
    .collect::<Vec<_>>()
    .join(",")
}

/// The (address, name) of each code symbol in a `System.map` text (types t, T, w, W).
fn text_symbols(system_map: &str) -> impl Iterator<Item = (u64, &str)> {
    system_map.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        let a = u64::from_str_radix(f.next()?, 16).ok()?;
        let k = f.next()?;
        let n = f.next()?;
        matches!(k, "t" | "T" | "w" | "W").then_some((a, n))
    })
}

/// The text symbols of `system_map` that `wanted` picks: each with its range `start-end` (hex),
/// up to the next symbol at a higher address.
fn ranges_of(system_map: &Path, wanted: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(system_map) else {
        return Vec::new();
    };
    let mut text_syms: Vec<(u64, &str)> = text_symbols(&text).collect();
    text_syms.sort();
    let mut ranges = Vec::new();
    for (i, (a, n)) in text_syms.iter().enumerate() {
        if wanted(n) {
            if let Some((end, _)) = text_syms[i + 1..].iter().find(|(b, _)| b > a) {
                ranges.push((n.to_string(), format!("{a:x}-{end:x}")));
            }
        }
    }
    ranges
}

/// Reads `dir/oracle.jsonl`, if the run had the oracle on.
pub fn read(dir: &Path, symbols: &Symbols) -> Option<OracleRun> {
    let text = std::fs::read_to_string(dir.join("oracle.jsonl")).ok()?;
    let mut run = OracleRun::default();
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    for v in &lines {
        match v["event"].as_str() {
            Some("violation") => run.violations.push(Violation {
                kind: v["kind"].as_str().unwrap_or("?").to_string(),
                queue: u(&v["queue"]) as u16,
                tag: u(&v["tag"]) as u32,
                gpa: u(&v["gpa"]),
                size: u(&v["size"]),
                pc: u(&v["pc"]),
                function: symbols.name(u(&v["pc"])),
                caller: v["caller"].as_u64().map(|c| symbols.name(c)),
                count: 1,
            }),
            Some("summary") => run.summary = Some(v.clone()),
            Some("instructions") => run.instructions = Some(v.clone()),
            _ => {}
        }
    }
    for v in lines.iter().filter(|v| v["event"] == "repeats") {
        if let Some(x) = run.violations.iter_mut().find(|x| {
            Some(x.kind.as_str()) == v["kind"].as_str()
                && u64::from(x.queue) == u(&v["queue"])
                && u64::from(x.tag) == u(&v["tag"])
                && x.pc == u(&v["pc"])
        }) {
            x.count = u(&v["count"]);
        }
    }
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcs_are_named_by_the_symbol_below_them() {
        let m = vec![
            (
                0xffff_ffff_a000_1000,
                "_RNvNtCs1234_6dmalab4bugs16write_after_post".to_string(),
            ),
            (0xffff_ffff_a000_2000, "other".to_string()),
        ];
        let s = Symbols::new(None, &[("dmalab", &m)]);
        let n = s.name(0xffff_ffff_a000_1010);
        assert!(n.starts_with("dmalab::bugs::write_after_post+0x10"), "{n}");
        assert!(n.ends_with("[dmalab]"), "{n}");
        assert_eq!(s.name(0x1000), "0x1000");
    }
}
