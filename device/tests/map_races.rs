//! DMA_MAP against a client that changes its backing file while the server checks it
//! (issue 25: check-then-use on anything a client controls).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dmalab_device::memory::{DmaMemory, MapTable};

const BIG: u64 = 2 << 20;
const SMALL: u64 = 1 << 20;

fn memfd() -> File {
    named_memfd(c"race")
}

fn named_memfd(name: &std::ffi::CStr) -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the File owns the descriptor.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), libc::MFD_ALLOW_SEALING);
        assert!(fd >= 0);
        File::from_raw_fd(fd)
    }
}

/// A client maps a 2 MiB memfd while another of its threads shrinks the file to 1 MiB and
/// seals it against shrinking: the map may be refused or accepted, but a DMA at the end of an
/// accepted map is served only if the file still backs it, and never kills the server (past
/// the end, an access through the mmap is a SIGBUS). The size check and the seal check in the
/// wrong order let the shrink slip in between them, with the map taken as sealed.
#[test]
fn a_map_accepted_is_backed_to_its_end_whatever_the_client_does_meanwhile() {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut tries = 0u32;
    while Instant::now() < deadline {
        tries += 1;
        let f = memfd();
        f.set_len(BIG).unwrap();
        let racer = f.try_clone().unwrap();
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let shrink = std::thread::spawn(move || {
            while !g.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            // spread the shrink over the server's checks
            for _ in 0..(tries % 64) {
                std::hint::spin_loop();
            }
            racer.set_len(SMALL).unwrap();
            // SAFETY: F_ADD_SEALS on our own descriptor.
            unsafe { libc::fcntl(racer.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        });
        let t = MapTable::new();
        let backing = f.try_clone().unwrap();
        go.store(true, Ordering::Release);
        let mapped = t.map_file(0x1000_0000, BIG, backing, 0, true);
        shrink.join().unwrap();
        if mapped.is_ok() {
            // Accepted: either sealed at 2 MiB (backed to its end for good) or taken as an
            // unsealed file, whose shrinking is recovered from. Either way a DMA at the
            // mapping's end is served or refused; it must not kill the server with SIGBUS.
            let len = f.metadata().unwrap().len();
            let end = 0x1000_0000 + BIG - 16;
            let wrote = t.view().write(end, &[0x5a; 16]);
            assert_eq!(
                wrote.is_ok(),
                len >= BIG,
                "try {tries}: a DMA at the end of a 2 MiB mapping of a file now {len:#x} bytes: {wrote:?}"
            );
        }
    }
    assert!(tries > 10, "too few tries to say anything: {tries}");
}

/// Open descriptors of this process on the memfd named `name`.
fn open_fds(name: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains(&format!("memfd:{name} ")))
        .count()
}

/// Issue 25, item 2: mappings of one file, each sent with its own descriptor (as vfio-user
/// clients do), keep one descriptor open between them, not one each.
#[test]
fn mappings_of_one_file_share_one_descriptor() {
    let f = named_memfd(c"shared");
    f.set_len(4096 * 2000).unwrap();
    // SAFETY: F_ADD_SEALS on our own descriptor.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    let t = MapTable::new();
    let before = open_fds("shared");
    for i in 0..2000u64 {
        let dup = f.try_clone().unwrap();
        t.map_file(0x1_0000_0000 + i * 0x2000, 4096, dup, i * 4096, true)
            .unwrap();
    }
    let held = open_fds("shared").saturating_sub(before);
    assert!(
        held <= 1,
        "2000 mappings of one file hold {held} descriptors"
    );
    assert_eq!(t.len(), 2000);
}
