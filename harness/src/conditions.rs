//! Platform conditions: the machine a test VM imitates. A driver that is right on a gentle
//! machine (one CPU, every DMA address below 4 GiB, a lazy IOMMU, no bounce buffering) can be
//! wrong on a production one; each condition here is one way production machines differ, and
//! what it exposes (docs/contract.md#platform-conditions).
//!
//! Every condition is a name (`smp2`, `iova>4G`, ...) so that `dmalab check --conditions` and
//! the report card speak of them the same way. The tests' guest kernel is always built with
//! full preemption (`CONFIG_PREEMPT`), so every VM booted on it runs `preempt`.

use std::fmt;

/// The conditions of one VM. [`Conditions::GENTLE`] is the machine every VM ran on before:
/// one vCPU, memory below 4 GiB, no IOMMU unless a test asks for one, no bounce buffering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    /// Guest vCPUs (multi-threaded TCG above 1): interrupt handlers run on another CPU than
    /// the submitter. The tests' kernel takes up to 4.
    pub smp: u8,
    /// The vIOMMU with `iommu.forcedac=1`: every IOVA the driver is given is above 4 GiB.
    pub iova_high: bool,
    /// No IOMMU, and most guest RAM above 4 GiB (`max-ram-below-4g`): the driver's DMA
    /// addresses are physical addresses above 4 GiB wherever its DMA mask allows them.
    pub ram_high: bool,
    /// The vIOMMU in strict mode (`iommu.strict=1`): an unmap is effective at once, so a
    /// device access after it is refused, not served by a stale translation.
    pub strict: bool,
    /// `swiotlb=force`: every streaming mapping bounces through the kernel's swiotlb, so a
    /// missing or misdirected sync gives wrong bytes.
    pub swiotlb: bool,
    /// The device drives only this many address bits (`CAP_DMA_BITS`); 0: all 64.
    pub dma_bits: u8,
}

/// Every condition's name and what it means, for `--conditions` and the docs.
pub const NAMES: &[(&str, &str)] = &[
    (
        "smp2",
        "2 vCPUs (MTTCG): interrupts on another CPU than the submitter",
    ),
    ("smp4", "4 vCPUs (MTTCG; on 2 host cores they interleave)"),
    (
        "iova>4G",
        "the vIOMMU hands out IOVAs above 4 GiB only (iommu.forcedac=1)",
    ),
    (
        "ram>4G",
        "no IOMMU, guest RAM above 4 GiB: DMA addresses above 4 GiB",
    ),
    (
        "strict",
        "the vIOMMU unmaps at once (iommu.strict=1), no stale translations",
    ),
    ("swiotlb", "every streaming mapping bounces (swiotlb=force)"),
    (
        "dma32",
        "the device drives 32 address bits (CAP_DMA_BITS = 32)",
    ),
    (
        "dma40",
        "the device drives 40 address bits (CAP_DMA_BITS = 40)",
    ),
];

impl Conditions {
    /// One vCPU, nothing else: the machine every VM ran on before.
    pub const GENTLE: Conditions = Conditions {
        smp: 1,
        iova_high: false,
        ram_high: false,
        strict: false,
        swiotlb: false,
        dma_bits: 0,
    };

    /// Parses a comma-separated list of [`NAMES`] (`gentle` or an empty list: none). `iova-high`
    /// and `ram-high` are accepted for `iova>4G` and `ram>4G` (no shell quoting needed).
    pub fn parse(list: &str) -> Result<Conditions, String> {
        let mut c = Conditions::GENTLE;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "gentle" | "none" => {}
                "smp1" => c.smp = 1,
                "smp2" => c.smp = 2,
                "smp4" => c.smp = 4,
                "iova>4G" | "iova-high" => c.iova_high = true,
                "ram>4G" | "ram-high" => c.ram_high = true,
                "strict" => c.strict = true,
                "swiotlb" => c.swiotlb = true,
                "dma32" => c.dma_bits = 32,
                "dma40" => c.dma_bits = 40,
                other => {
                    let known: Vec<_> = NAMES.iter().map(|(n, _)| *n).collect();
                    return Err(format!(
                        "unknown condition '{other}' (known: gentle, {})",
                        known.join(", ")
                    ));
                }
            }
        }
        if c.ram_high && c.needs_iommu() {
            return Err(
                "ram>4G is a machine without an IOMMU: it cannot go with iova>4G or strict".into(),
            );
        }
        Ok(c)
    }

    /// The VM needs the vIOMMU for these conditions.
    pub fn needs_iommu(&self) -> bool {
        self.iova_high || self.strict
    }

    /// These conditions and `other`'s together (the larger vCPU count, every flag of either).
    pub fn with(self, other: Conditions) -> Conditions {
        Conditions {
            smp: self.smp.max(other.smp).max(1),
            iova_high: self.iova_high || other.iova_high,
            ram_high: self.ram_high || other.ram_high,
            strict: self.strict || other.strict,
            swiotlb: self.swiotlb || other.swiotlb,
            dma_bits: match (self.dma_bits, other.dma_bits) {
                (0, b) | (b, 0) => b,
                (a, b) => a.min(b),
            },
        }
    }

    /// The guest kernel command line these conditions add.
    pub fn kernel_args(&self) -> String {
        let mut a = Vec::new();
        if self.iova_high {
            a.push("iommu.forcedac=1");
        }
        if self.strict {
            a.push("iommu.strict=1");
        }
        if self.swiotlb {
            a.push("swiotlb=force");
        }
        a.join(" ")
    }

    /// Guest RAM below 4 GiB when `ram_high` (the rest is above), in MiB.
    pub const LOW_RAM_MB: u32 = 256;
}

impl Conditions {
    /// `smp2, preempt, iova>4G, strict`: the names of the conditions, with `preempt` when
    /// the guest kernel preempts (the tests' kernel does).
    pub fn label(&self, preempt: bool) -> String {
        let mut names = vec![format!("smp{}", self.smp.max(1))];
        if preempt {
            names.push("preempt".into());
        }
        for (on, name) in [
            (self.iova_high, "iova>4G"),
            (self.ram_high, "ram>4G"),
            (self.strict, "strict"),
            (self.swiotlb, "swiotlb"),
        ] {
            if on {
                names.push(name.into());
            }
        }
        if self.dma_bits != 0 {
            names.push(format!("dma{}", self.dma_bits));
        }
        names.join(", ")
    }
}

impl fmt::Display for Conditions {
    /// `smp2, iova>4G, strict` (`smp1` when nothing else holds).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for (name, _) in NAMES {
            let c = Conditions::parse(name).unwrap();
            assert!(c.to_string().contains(name), "{name} -> {c}");
        }
        let c = Conditions::parse("smp2, iova-high,strict").unwrap();
        assert_eq!(c.to_string(), "smp2, iova>4G, strict");
        assert_eq!(c.label(true), "smp2, preempt, iova>4G, strict");
        assert!(c.needs_iommu());
        assert_eq!(c.kernel_args(), "iommu.forcedac=1 iommu.strict=1");
        assert_eq!(Conditions::parse("gentle").unwrap(), Conditions::GENTLE);
        assert_eq!(Conditions::parse("").unwrap().to_string(), "smp1");
        let e = Conditions::parse("smp3").unwrap_err();
        assert!(
            e.contains("unknown condition 'smp3'") && e.contains("swiotlb"),
            "{e}"
        );
        assert!(Conditions::parse("ram>4G,strict").is_err());
    }

    #[test]
    fn combining_keeps_every_condition_of_both() {
        let a = Conditions::parse("smp2,dma40").unwrap();
        let b = Conditions::parse("smp4,swiotlb,dma32").unwrap();
        assert_eq!(a.with(b).to_string(), "smp4, swiotlb, dma32");
        assert_eq!(
            Conditions::GENTLE.with(Conditions::GENTLE),
            Conditions::GENTLE
        );
    }
}
