//! The runtime control socket: one JSON object per line in, one per line out.
//!
//! Requests: `{"cmd":"list"}`, `{"cmd":"add","rule":{...}}` (the rule as in a rules file, as a
//! JSON object or a TOML string), `{"cmd":"remove","name":"..."}`, `{"cmd":"counters"}`,
//! `{"cmd":"events","since":N}`. Answers carry `"ok": true` or `"ok": false, "error": "..."`.
//!
//! Any local process that can open the socket can inject faults, so the socket is created with
//! the owner-only mode the server was given (`--socket-mode`, default 0600), each peer's uid is
//! checked (this user or root), and everything a client can make the server hold is bounded:
//! [`MAX_CONNECTIONS`] connections (one thread each), [`MAX_LINE`] bytes per request line, and
//! the rule count and parameter ranges enforced by the fault rules themselves.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::faults::Rule;
use crate::shared::Shared;

fn err(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

/// Answers one request line.
pub fn handle(dev: &Shared, line: &str) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return err(format!("not a JSON object: {e}")),
    };
    match req["cmd"].as_str() {
        Some("list") => {
            let fired: serde_json::Map<String, Value> = dev
                .faults
                .fired()
                .into_iter()
                .map(|(n, c)| (n, json!(c)))
                .collect();
            json!({"ok": true, "rules": dev.faults.rules(), "fired": fired})
        }
        Some("add") => {
            let table = match &req["rule"] {
                Value::String(text) => match text.parse::<toml::Table>() {
                    Ok(t) => toml::Value::Table(t),
                    Err(e) => {
                        return err(format!(
                            "rule: {}",
                            e.to_string()
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                        ))
                    }
                },
                v @ Value::Object(_) => match toml::Value::try_from(v) {
                    Ok(t) => t,
                    Err(e) => return err(format!("rule: {e}")),
                },
                _ => return err("`rule` must be an object or a TOML string"),
            };
            let index = dev.faults.rules().len() + 1;
            match Rule::from_toml_value(index, &table).and_then(|r| dev.faults.try_add(r)) {
                Ok(name) => json!({"ok": true, "name": name}),
                Err(e) => err(e),
            }
        }
        Some("remove") => match req["name"].as_str() {
            Some(n) if dev.faults.remove(n) => json!({"ok": true}),
            Some(n) => err(format!("no rule named {n:?}")),
            None => err("`remove` needs a `name`"),
        },
        Some("counters") => json!({"ok": true, "counters": dev.log.counters.snapshot()}),
        Some("events") => {
            let since = req["since"].as_u64().unwrap_or(0);
            let events = dev.log.since(since);
            let last = events.last().map_or(since, |e| e.0);
            let parsed: Vec<Value> = events
                .iter()
                .filter_map(|(_, l)| serde_json::from_str(l).ok())
                .collect();
            json!({"ok": true, "events": parsed, "last": last, "logging": dev.log.enabled()})
        }
        Some(other) => err(format!(
            "unknown command {other:?} (known: list, add, remove, counters, events)"
        )),
        None => err("a request needs a `cmd`"),
    }
}

/// Refuses anything at `path` but a stale socket (which it removes).
pub fn claim_socket_path(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(format!("{} is in use by a running server", path.display()));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))
}

/// Most control connections served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request line, in bytes; a longer one is answered with an error and the connection
/// closed (its end cannot be found without reading it all).
pub const MAX_LINE: usize = 64 << 10;

/// Claims `path`, listens on it, and gives the socket `mode`. The socket is bound under a
/// temporary name (owner-only, so no other user can connect before the chmod) and renamed into
/// place once it listens: whoever sees `path` can connect at once.
pub fn listen(path: &Path, mode: u32) -> Result<UnixListener, String> {
    claim_socket_path(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    // SAFETY: umask only changes this process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(&tmp);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot create {}: {e}", path.display()));
    }
    Ok(listener)
}

/// The connecting process's uid (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// Listens on `path` (mode `mode`) and answers each connection on its own thread.
pub fn serve(path: &Path, dev: Arc<Shared>, mode: u32) -> Result<(), String> {
    let listener = listen(path, mode)?;
    let active = Arc::new(AtomicUsize::new(0));
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    std::thread::Builder::new()
        .name("dmalab-control".into())
        .spawn(move || {
            for mut conn in listener.incoming().flatten() {
                if !matches!(peer_uid(&conn), Some(uid) if uid == me || uid == 0) {
                    let _ = writeln!(conn, "{}", err("permission denied: not this server's user"));
                    continue;
                }
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = writeln!(
                        conn,
                        "{}",
                        err(format!(
                            "too many control connections (at most {MAX_CONNECTIONS})"
                        ))
                    );
                    continue;
                }
                let dev = dev.clone();
                let active2 = active.clone();
                let spawned = std::thread::Builder::new()
                    .name("dmalab-control-conn".into())
                    .spawn(move || {
                        answer_lines(conn, &dev);
                        active2.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(())
}

/// Answers request lines until the client leaves or sends a line over [`MAX_LINE`].
fn answer_lines(conn: UnixStream, dev: &Shared) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut input = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte past the limit tells an over-long line from one of exactly MAX_LINE bytes.
        match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
            let _ = writeln!(
                out,
                "{}",
                err(format!(
                    "request line longer than {MAX_LINE} bytes; closing"
                ))
            );
            return;
        }
        let answer = match std::str::from_utf8(&line) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => handle(dev, text),
            Err(_) => err("request line is not UTF-8"),
        };
        if writeln!(out, "{answer}").is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rig;

    #[test]
    fn add_list_remove_and_bad_requests() {
        let r = Rig::new(1, 1 << 20);
        let dev = r.dev.shared();
        let a = handle(dev, r#"{"cmd":"add","rule":{"kind":"stall","queue":0}}"#);
        assert_eq!(a["ok"], true, "{a}");
        let b = handle(
            dev,
            r#"{"cmd":"add","rule":"name = \"x\"\nkind = \"delay_completion\"\nms = 5"}"#,
        );
        assert_eq!(b["name"], "x", "{b}");
        let l = handle(dev, r#"{"cmd":"list"}"#);
        assert_eq!(l["rules"].as_array().unwrap().len(), 2);
        assert_eq!(l["rules"][1]["ms"], 5);
        for (req, want) in [
            (
                r#"{"cmd":"add","rule":{"kind":"stall","colour":1}}"#,
                "field `colour`",
            ),
            (
                r#"{"cmd":"add","rule":{"kind":"stall","probability":2.0}}"#,
                "must be within 0..=1",
            ),
            (
                r#"{"cmd":"add","rule":{"name":"x","kind":"stall"}}"#,
                "another rule has this name",
            ),
            (r#"{"cmd":"remove","name":"nope"}"#, "no rule named"),
            (r#"{"cmd":"frobnicate"}"#, "unknown command"),
            ("{not json", "not a JSON object"),
        ] {
            let v = handle(dev, req);
            assert_eq!(v["ok"], false, "{req}");
            assert!(v["error"].as_str().unwrap().contains(want), "{req}: {v}");
        }
        assert_eq!(handle(dev, r#"{"cmd":"remove","name":"x"}"#)["ok"], true);
        assert_eq!(
            handle(dev, r#"{"cmd":"list"}"#)["rules"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            handle(dev, r#"{"cmd":"counters"}"#)["counters"]["descriptors"],
            0
        );
    }
}
