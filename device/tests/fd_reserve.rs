//! A client that maps many distinct backing files cannot take the descriptors the server needs
//! for its control socket and logs (issue 25, item 2). Its own test binary: it lowers the
//! process's open-file limit.

use std::fs::File;
use std::os::fd::FromRawFd;

use dmalab_device::memory::{backing_file_limit, MapTable, RESERVED_FDS};

fn memfd() -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the File owns the descriptor.
    let f = unsafe {
        let fd = libc::memfd_create(c"many".as_ptr(), 0);
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        File::from_raw_fd(fd)
    };
    f.set_len(4096).unwrap();
    f
}

#[test]
fn distinct_backing_files_stop_short_of_the_reserve() {
    let lim = libc::rlimit {
        rlim_cur: 600,
        rlim_max: 600,
    };
    // SAFETY: setrlimit with a local struct; lowering is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    assert_eq!(backing_file_limit(), 600 - RESERVED_FDS);
    let t = MapTable::new();
    let mut accepted = 0;
    let mut refused = 0;
    for k in 0..600u64 {
        match t.map_file(0x1000_0000 + k * 0x1000, 4096, memfd(), 0, true) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "map {k}: {e}");
                refused += 1;
            }
        }
    }
    assert_eq!(accepted, 600 - RESERVED_FDS);
    assert_eq!(refused, 600 - accepted);
    // the reserve is there: the server can still open what it needs
    let spare: Vec<File> = (0..RESERVED_FDS / 2)
        .map(|_| File::open("/dev/null").expect("a descriptor from the reserve"))
        .collect();
    drop(spare);
    // unmapping gives descriptors back
    assert_eq!(t.unmap(0x1000_0000, 0x1000).unwrap(), 1);
    t.map_file(0x2000_0000, 4096, memfd(), 0, true).unwrap();
}
