//! The DMA API's streaming mappings as the oracle plugin tracks them (`oracle/src/dma_api.rs`):
//! a mapped range and who owns it, and how a guest `struct scatterlist` list becomes
//! guest-physical ranges. Here, outside the plugin, so it can be tested without QEMU.

/// `DMA_TO_DEVICE`: the device only reads, so the CPU reading is harmless.
pub const DMA_TO_DEVICE: u64 = 1;
/// `struct scatterlist` on x86-64: page_link, offset, length, dma_address, dma_length, flags.
pub const SG_ENTRY: u64 = 32;
/// `SG_CHAIN` and `SG_END` in `page_link`.
pub const SG_CHAIN: u64 = 1;
pub const SG_END: u64 = 2;
/// `sizeof(struct page)` on x86-64 (the kernel keeps it at 64 bytes).
pub const STRUCT_PAGE: u64 = 64;
/// `vmemmap_base` without KASLR of memory regions.
pub const VMEMMAP_DEFAULT: u64 = 0xffff_ea00_0000_0000;
/// Scatter-gather entries walked at most per call (a corrupt list must not hang the guest).
pub const MAX_ENTRIES: usize = 4096;

/// One mapped range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// The mapping's scatter-gather list (its identity across calls).
    pub sgl: u64,
    /// The mapping's number, in map order (named in reports).
    pub id: u32,
    pub start: u64,
    pub len: u64,
    /// The device owns it now (mapped or synced for the device, not synced for the CPU).
    pub device: bool,
    /// The device only reads it (`DMA_TO_DEVICE`): the CPU may read it meanwhile.
    pub to_device: bool,
}

impl Range {
    /// Whether a CPU access of `size` bytes at `gpa` (a store when `store`) breaks the DMA
    /// API's ownership of this range.
    pub fn forbids(&self, gpa: u64, size: u64, store: bool) -> bool {
        self.device && (store || !self.to_device) && crate::Span::overlaps(self, gpa, size)
    }
}

/// The (guest-physical start, length) of the first `n` entries of the scatter-gather list at
/// guest-virtual `sg`, following chain entries; `read` reads 8 bytes of guest memory.
/// `vmemmap` is the guest's `vmemmap_base`: a `struct page *` is `vmemmap + pfn * 64`.
pub fn walk(
    read: impl Fn(u64) -> Option<u64>,
    mut sg: u64,
    n: usize,
    vmemmap: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut steps = 0;
    while out.len() < n && steps < MAX_ENTRIES {
        steps += 1;
        let Some(link) = read(sg) else { break };
        if link & SG_CHAIN != 0 {
            sg = link & !(SG_CHAIN | SG_END);
            continue;
        }
        let Some(ol) = read(sg + 8) else { break };
        let (offset, len) = (ol & 0xffff_ffff, ol >> 32);
        let page = link & !(SG_CHAIN | SG_END);
        if page >= vmemmap {
            let pfn = (page - vmemmap) / STRUCT_PAGE;
            out.push(((pfn << 12) + offset, len));
        }
        if link & SG_END != 0 {
            break;
        }
        sg += SG_ENTRY;
    }
    out
}

/// Parses `a:b:...` (hex addresses, `0x` optional).
pub fn parse_addresses(s: &str) -> Vec<u64> {
    s.split(':')
        .filter_map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn range(device: bool, to_device: bool) -> Range {
        Range {
            sgl: 0x1000,
            id: 0,
            start: 0x10_000,
            len: 0x2000,
            device,
            to_device,
        }
    }

    #[test]
    fn a_device_owned_range_forbids_what_its_direction_says() {
        let from = range(true, false);
        assert!(
            from.forbids(0x10_000, 8, false),
            "read of a device-written buffer"
        );
        assert!(from.forbids(0x11_ff8, 8, true), "write at its last bytes");
        assert!(!from.forbids(0x12_000, 8, false), "just past it");
        assert!(!from.forbids(0xf_ff8, 8, true), "just before it");
        assert!(from.forbids(0xf_ffc, 8, false), "straddling its start");
        let to = range(true, true);
        assert!(
            !to.forbids(0x10_000, 8, false),
            "reading what the device only reads"
        );
        assert!(to.forbids(0x10_000, 8, true), "writing it");
        // synced for the CPU: nothing is forbidden
        assert!(!range(false, false).forbids(0x10_000, 8, true));
    }

    #[test]
    fn a_chained_list_becomes_physical_ranges() {
        let vm = VMEMMAP_DEFAULT;
        let page = |pfn: u64| vm + pfn * STRUCT_PAGE;
        let mut mem = HashMap::new();
        let mut entry = |at: u64, link: u64, offset: u64, len: u64| {
            mem.insert(at, link);
            mem.insert(at + 8, offset | len << 32);
        };
        // two entries, then a chain link to a second array holding the last (SG_END)
        entry(0x1000, page(5), 0x100, 0xf00);
        entry(0x1020, page(6), 0, 0x1000);
        entry(0x1040, 0x2000 | SG_CHAIN, 0, 0);
        entry(0x2000, page(9) | SG_END, 0, 0x200);
        let got = walk(|a| mem.get(&a).copied(), 0x1000, 3, vm);
        assert_eq!(
            got,
            vec![
                (5 * 4096 + 0x100, 0xf00),
                (6 * 4096, 0x1000),
                (9 * 4096, 0x200)
            ]
        );
        // a list that ends early, or memory that cannot be read, stops the walk
        assert_eq!(walk(|a| mem.get(&a).copied(), 0x1000, 1, vm).len(), 1);
        assert!(walk(|_| None, 0x1000, 3, vm).is_empty());
        // a list that chains to itself stops after MAX_ENTRIES steps
        let looped = walk(
            |a| Some(if a == 0x3000 { 0x3000 | SG_CHAIN } else { 0 }),
            0x3000,
            3,
            vm,
        );
        assert!(looped.is_empty());
    }

    #[test]
    fn addresses_parse_as_hex_lists() {
        assert_eq!(
            parse_addresses("ffffffff810e5740:0xffffffff81279900"),
            vec![0xffff_ffff_810e_5740, 0xffff_ffff_8127_9900]
        );
        assert_eq!(parse_addresses(""), Vec::<u64>::new());
    }
}
