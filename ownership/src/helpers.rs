//! The kernel's copy and fill helpers as the oracle checks them: which registers name the
//! memory each touches. The harness writes the plugin's `bulk=` argument from [`HELPERS`] and
//! the kernel's `System.map`; the plugin parses it back with [`Helpers::parse`].

/// Kernel helpers that copy or fill memory for their caller, with how their arguments name
/// that memory (the `bulk=` kinds: `copy`, `fill`, `ucopy`, `ufill`).
pub const HELPERS: &[(&str, &str)] = &[
    ("memcpy", "copy"),
    ("__memcpy", "copy"),
    // where `memcpy` and `memset` jump on CPUs without fast `rep movsb`/`stosb` (the guest
    // runs with them off: docs/performance.md)
    ("memcpy_orig", "copy"),
    ("memset_orig", "fill"),
    ("memmove", "copy"),
    ("__memmove", "copy"),
    ("memset", "fill"),
    ("__memset", "fill"),
    ("rep_movs_alternative", "ucopy"),
    ("rep_stos_alternative", "ufill"),
];

/// How a helper's arguments (rdi, rsi, rdx, rcx) name the memory it touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `memcpy`, `memmove`: dst rdi, src rsi, length rdx.
    Copy,
    /// `memset`: dst rdi, length rdx.
    Fill,
    /// `rep_movs_alternative` (`copy_{to,from}_user`): dst rdi, src rsi, length rcx.
    UserCopy,
    /// `rep_stos_alternative` (`clear_user`): dst rdi, length rcx.
    UserFill,
}

impl Kind {
    /// The kind named `s` in a `bulk=` entry.
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "copy" => Kind::Copy,
            "fill" => Kind::Fill,
            "ucopy" => Kind::UserCopy,
            "ufill" => Kind::UserFill,
            _ => return None,
        })
    }

    /// (destination, source if any, length) of a call with arguments `args`.
    pub fn ranges(self, args: &[u64; 4]) -> (u64, Option<u64>, u64) {
        let [rdi, rsi, rdx, rcx] = *args;
        match self {
            Kind::Copy => (rdi, Some(rsi), rdx),
            Kind::Fill => (rdi, None, rdx),
            Kind::UserCopy => (rdi, Some(rsi), rcx),
            Kind::UserFill => (rdi, None, rcx),
        }
    }
}

/// The helpers' code ranges `[start, end)`, with their kinds.
#[derive(Debug, Default)]
pub struct Helpers(Vec<(u64, u64, Kind)>);

impl Helpers {
    /// Parses `kind@start-end:...` (hex, `0x` optional); the error names the entry it refuses.
    pub fn parse(s: &str) -> Result<Helpers, String> {
        let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
        let mut v = Vec::new();
        for entry in s.split(':').filter(|e| !e.is_empty()) {
            let parsed = entry.split_once('@').and_then(|(k, r)| {
                let (a, b) = r.split_once('-')?;
                Some((hex(a)?, hex(b)?, Kind::parse(k)?))
            });
            match parsed {
                Some((a, b, k)) if a < b => v.push((a, b, k)),
                _ => {
                    return Err(format!(
                        "{entry}: expected kind@start-end, kind one of copy, fill, ucopy, ufill"
                    ))
                }
            }
        }
        // aliases (`memcpy` and `__memcpy`) share a range: keep one
        v.sort_by_key(|&(a, b, _)| (a, b));
        v.dedup_by_key(|&mut (a, b, _)| (a, b));
        Ok(Helpers(v))
    }

    /// The helper whose code holds `pc`, and whether `pc` is its first instruction.
    pub fn at(&self, pc: u64) -> Option<(Kind, bool)> {
        self.0
            .iter()
            .find(|&&(a, b, _)| (a..b).contains(&pc))
            .map(|&(a, _, k)| (k, pc == a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_helper_has_a_kind() {
        assert!(HELPERS.iter().all(|(_, k)| Kind::parse(k).is_some()));
    }

    #[test]
    fn parses_kinds_and_drops_aliases() {
        let h = Helpers::parse("copy@ff00-ff40:copy@0xff00-0xff40:ufill@1000-1010").unwrap();
        assert_eq!(h.0.len(), 2);
        assert_eq!(h.at(0xff00), Some((Kind::Copy, true)));
        assert_eq!(h.at(0xff3f), Some((Kind::Copy, false)));
        assert_eq!(h.at(0xff40), None);
        assert_eq!(h.at(0x1000), Some((Kind::UserFill, true)));
        assert!(Helpers::parse("move@1-2").is_err());
        assert!(Helpers::parse("copy@2-1").is_err());
        assert!(Helpers::parse("copy1-2").is_err());
    }

    #[test]
    fn each_kind_takes_its_registers() {
        let args = [0xd, 0x5, 0x10, 0x20];
        assert_eq!(Kind::Copy.ranges(&args), (0xd, Some(0x5), 0x10));
        assert_eq!(Kind::Fill.ranges(&args), (0xd, None, 0x10));
        assert_eq!(Kind::UserCopy.ranges(&args), (0xd, Some(0x5), 0x20));
        assert_eq!(Kind::UserFill.ranges(&args), (0xd, None, 0x20));
    }
}
