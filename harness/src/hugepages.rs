//! Huge pages for a test VM's RAM: a hugetlbfs mount and enough 2 MiB pages in the kernel's
//! pool, both given back when the [`Reservation`] is dropped. Needs root (or the pool already
//! sized and mounted); [`reserve`] says why when it cannot.

use std::path::{Path, PathBuf};
use std::process::Command;

const NR: &str = "/proc/sys/vm/nr_hugepages";

/// Huge pages set aside for one VM.
pub struct Reservation {
    dir: PathBuf,
    /// The pool's size before, to put back.
    previous: Option<u64>,
    /// We mounted `dir` (and unmount it).
    mounted: bool,
}

impl Reservation {
    /// The hugetlbfs directory QEMU's `memory-backend-file` puts the RAM in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        if let Some(n) = self.previous {
            let _ = std::fs::write(NR, n.to_string());
        }
    }
}

fn meminfo(key: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// Makes `mb` MiB of 2 MiB huge pages available under a hugetlbfs mount at `dir`, or says why
/// the machine will not.
pub fn reserve(mb: u32, dir: &Path) -> Result<Reservation, String> {
    if meminfo("Hugepagesize:") != Some(2048) {
        return Err("the kernel's default huge page is not 2 MiB".into());
    }
    let need = u64::from(mb).div_ceil(2);
    let mut r = Reservation {
        dir: dir.to_path_buf(),
        previous: None,
        mounted: false,
    };
    let free = meminfo("HugePages_Free:").unwrap_or(0);
    if free < need {
        let now: u64 = std::fs::read_to_string(NR)
            .map_err(|e| format!("{NR}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR}: {e}"))?;
        std::fs::write(NR, (now + need - free).to_string())
            .map_err(|e| format!("cannot grow the huge page pool ({NR}): {e}"))?;
        r.previous = Some(now);
        let got = meminfo("HugePages_Free:").unwrap_or(0);
        if got < need {
            return Err(format!(
                "the kernel found {got} free huge pages of the {need} asked for"
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let already = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fs) = (f.next(), f.next(), f.next());
        fs == Some("hugetlbfs") && at.map(Path::new) == Some(dir)
    });
    if !already {
        let ok = Command::new("mount")
            .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "dmalab-huge"])
            .arg(dir)
            .status()
            .map_err(|e| format!("mount: {e}"))?;
        if !ok.success() {
            return Err(format!("cannot mount hugetlbfs at {}", dir.display()));
        }
        r.mounted = true;
    }
    Ok(r)
}
