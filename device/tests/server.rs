//! The device server binary's own behaviour: socket path handling, signals, bad options.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dmalab-device")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmalab-server-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn refuses_an_existing_file_and_leaves_it_alone() {
    let d = scratch("file");
    let p = d.join("not-a-socket");
    std::fs::write(&p, "precious").unwrap();
    let out = Command::new(bin())
        .arg("--socket")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "precious");
}

#[test]
fn rejects_bad_options_with_a_clear_message() {
    for args in [
        &["--queues", "9"][..],
        &["--mem-size", "12Q"],
        &["--mem-size", "0"],
    ] {
        let out = Command::new(bin())
            .args(["--socket", "/tmp/x.sock"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let d = scratch("term");
    let sock = d.join("dev.sock");
    let events = d.join("events.jsonl");
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&sock)
        .arg("--event-log")
        .arg(&events)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
        assert!(Instant::now() < deadline, "no socket after 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket left behind");
    let log = std::fs::read_to_string(&events).unwrap();
    assert!(
        log.lines().last().unwrap().contains("\"counters\""),
        "final counters missing: {log}"
    );
}

#[test]
fn a_stale_socket_is_replaced() {
    let d = scratch("stale");
    let sock = d.join("dev.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // leaves the inode behind
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&sock)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not take over the stale socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}
