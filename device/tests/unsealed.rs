//! Guest memory on a backing file that can shrink (issue 25, item 6): QEMU's
//! `memory-backend-file` (tmpfs, hugetlbfs) and `memory-backend-memfd,seal=off` hand the server
//! files without `F_SEAL_SHRINK`. The device must serve them, and a client that shrinks the file
//! under a mapping must get refused accesses, not a server killed by SIGBUS.

use std::fs::File;
use std::os::fd::FromRawFd;

use dmalab_device::memory::{DmaMemory, MapTable};

const PAGE: u64 = 4096;

fn unsealed_memfd(size: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name; the File owns the descriptor.
    let f = unsafe {
        let fd = libc::memfd_create(c"unsealed".as_ptr(), 0);
        assert!(fd >= 0);
        File::from_raw_fd(fd)
    };
    f.set_len(size).unwrap();
    f
}

#[test]
fn an_unsealed_file_backs_dma() {
    let t = MapTable::new();
    let f = unsealed_memfd(4 * PAGE);
    t.map_file(0x10_0000, 4 * PAGE, f.try_clone().unwrap(), 0, true)
        .expect("an unsealed file is served");
    let v = t.view();
    v.write(0x10_0000 + 100, b"through the mapping").unwrap();
    let mut back = [0u8; 19];
    v.read(0x10_0000 + 100, &mut back).unwrap();
    assert_eq!(&back, b"through the mapping");
    // and it is the file's memory
    let mut from_file = [0u8; 19];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut from_file, 100).unwrap();
    assert_eq!(&from_file, b"through the mapping");
}

/// The client shrinks the file to one page under a four-page mapping: every access past the new
/// end is refused (a read gets an error, not the bytes of a page that is gone; a write goes
/// nowhere), the server lives on, and the first page still works.
#[test]
fn a_file_shrunk_under_its_mapping_refuses_access_instead_of_killing_the_server() {
    let t = MapTable::new();
    let f = unsealed_memfd(4 * PAGE);
    t.map_file(0x10_0000, 4 * PAGE, f.try_clone().unwrap(), 0, true)
        .unwrap();
    let v = t.view();
    v.write(0x10_0000 + 2 * PAGE, &[7; 16]).unwrap();
    f.set_len(PAGE).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        v.read(0x10_0000 + 2 * PAGE, &mut buf).is_err(),
        "a read past the shrunk file's end must fail"
    );
    assert!(v.write(0x10_0000 + 3 * PAGE, &[1; 64]).is_err());
    // a range that starts in the live page and runs past the end fails whole
    assert!(v.read(0x10_0000 + PAGE - 8, &mut buf).is_err());
    // the live page still works, through the same view and a new one
    v.write(0x10_0000, b"alive").unwrap();
    let mut back = [0u8; 5];
    t.view().read(0x10_0000, &mut back).unwrap();
    assert_eq!(&back, b"alive");
    // and the file never grew back behind the client's back
    assert_eq!(f.metadata().unwrap().len(), PAGE);
    // the mapping can be unmapped (once no view holds it) and the range mapped again
    drop(v);
    assert_eq!(t.unmap(0x10_0000, 4 * PAGE).unwrap(), 1);
    t.map_file(0x10_0000, PAGE, f, 0, true).unwrap();
    t.view().read(0x10_0000, &mut back).unwrap();
}

/// Many threads fault on shrunk files at once: each sees its own access refused.
#[test]
fn faults_on_several_threads_are_each_their_own() {
    let t = std::sync::Arc::new(MapTable::new());
    let mut files = Vec::new();
    for k in 0..4u64 {
        let f = unsealed_memfd(8 * PAGE);
        t.map_file(
            0x100_0000 * (k + 1),
            8 * PAGE,
            f.try_clone().unwrap(),
            0,
            true,
        )
        .unwrap();
        files.push(f);
    }
    let v = t.view();
    for f in &files {
        f.set_len(2 * PAGE).unwrap();
    }
    std::thread::scope(|s| {
        for k in 0..4u64 {
            let v = &v;
            s.spawn(move || {
                let base = 0x100_0000 * (k + 1);
                for _ in 0..50 {
                    let mut buf = [0u8; 32];
                    assert!(v.read(base + 5 * PAGE, &mut buf).is_err());
                    assert!(v.read(base + PAGE, &mut buf).is_ok());
                }
            });
        }
    });
}
