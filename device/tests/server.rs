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

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmalab"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_cli_drives_the_control_socket() {
    let d = scratch("cli");
    let (sock, ctl) = (d.join("dev.sock"), d.join("ctl.sock"));
    let rules = d.join("rules.toml");
    std::fs::write(
        &rules,
        "seed = 3\n[[rule]]\nname = \"boot\"\nkind = \"lost_irq\"\nqueue = 1\n",
    )
    .unwrap();
    let mut child = Command::new(bin())
        .arg("--socket")
        .arg(&sock)
        .arg("--control")
        .arg(&ctl)
        .arg("--faults")
        .arg(&rules)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&ctl).is_err() {
        assert!(Instant::now() < deadline, "no control socket after 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = ctl.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "fault",
        "add",
        "--control",
        c,
        "kind=drop_completion",
        "queue=0",
        "nth=2",
        "name=d",
    ]);
    assert!(ok && out.contains("added rule d"), "{out}{err}");
    let (ok, out, _) = cli(&["fault", "list", "--control", c]);
    assert!(
        ok && out.contains("boot") && out.contains("drop_completion") && out.contains("nth=2"),
        "{out}"
    );
    let (ok, _, err) = cli(&[
        "fault",
        "add",
        "--control",
        c,
        "kind=stall",
        "probability=7",
    ]);
    assert!(!ok && err.contains("probability"), "{err}");
    let (ok, _, err) = cli(&["fault", "remove", "--control", c, "nope"]);
    assert!(!ok && err.contains("no rule named"), "{err}");
    assert!(cli(&["fault", "remove", "--control", c, "d"]).0);
    let (ok, out, _) = cli(&["counters", "--control", c]);
    assert!(ok && out.contains("descriptors"), "{out}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!ctl.exists(), "control socket left behind");
}

#[test]
fn rules_files_are_checked_offline_with_precise_errors() {
    let d = scratch("check");
    let good = d.join("good.toml");
    std::fs::write(&good, "[[rule]]\nkind = \"stall\"\n").unwrap();
    let (ok, out, _) = cli(&["fault", "check", good.to_str().unwrap()]);
    assert!(ok && out.contains("1 rule(s)"), "{out}");
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nkind = \"stall\"\n[[rule]]\nname = \"z\"\nkind = \"corrupt\"\nbits = 0\n",
    )
    .unwrap();
    let (ok, _, err) = cli(&["fault", "check", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("rule 2 (z): field `bits` = 0"), "{err}");
    // the server refuses to start with it
    let out = Command::new(bin())
        .args([
            "--socket",
            d.join("s").to_str().unwrap(),
            "--faults",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("field `bits`"));
}
