//! How many VMs run at once on this machine, across every process of the harness (the test
//! binaries' threads, `dmalab check` run by a test, a campaign's `--jobs`).
//!
//! Each running VM holds one slot: an exclusive `flock` on one of `N` files under
//! `target/e2e/.slots/`. `N` is `DMALAB_VMS` when set, else one per core: a VM under TCG keeps
//! one host core busy (its vCPU thread), so more VMs than cores would only slow each down and
//! stretch the guest's timeouts. A slot is held only while its VM runs, never while waiting for
//! another, so nothing can deadlock; the kernel drops a dead holder's lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// A held slot; dropping it lets the next VM start.
pub struct Slot {
    _file: File,
    /// Which slot (for the VM's log).
    pub index: usize,
}

/// The number of VMs this machine runs at once.
pub fn count() -> usize {
    std::env::var("DMALAB_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Waits for a free slot among [`count`] under `dir` and takes it.
pub fn acquire(dir: &Path) -> Slot {
    acquire_among(dir, count())
}

/// Waits for a free slot among `n` under `dir` and takes it.
fn acquire_among(dir: &Path, n: usize) -> Slot {
    std::fs::create_dir_all(dir).expect("create the VM slot directory");
    loop {
        for index in 0..n {
            let path = dir.join(format!("slot-{index}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // SAFETY: flock on a descriptor this function owns; LOCK_NB never blocks.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Slot { _file: file, index };
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_on_drop() {
        let dir = std::env::temp_dir().join(format!("dmalab-slots-{}", std::process::id()));
        let a = acquire_among(&dir, 2);
        let b = acquire_among(&dir, 2);
        assert_ne!(a.index, b.index, "two VMs in one slot");
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        let waiter = std::thread::spawn(move || tx.send(acquire_among(&d, 2).index).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(600)).is_err(),
            "a third VM started while both slots were held"
        );
        drop(a);
        let got = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        waiter.join().unwrap();
        assert_ne!(got, b.index);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
