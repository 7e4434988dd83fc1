//! The runtime control socket: one JSON object per line in, one per line out.
//!
//! Requests: `{"cmd":"list"}`, `{"cmd":"add","rule":{...}}` (the rule as in a rules file, as a
//! JSON object or a TOML string), `{"cmd":"remove","name":"..."}`, `{"cmd":"counters"}`,
//! `{"cmd":"events","since":N}`. Answers carry `"ok": true` or `"ok": false, "error": "..."`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::device::Shared;
use crate::faults::Rule;

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

/// Listens on `path` and answers each connection on its own thread.
pub fn serve(path: &Path, dev: Arc<Shared>) -> Result<(), String> {
    claim_socket_path(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("dmalab-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let dev = dev.clone();
                let _ = std::thread::Builder::new()
                    .name("dmalab-control-conn".into())
                    .spawn(move || {
                        let Ok(mut out) = conn.try_clone() else {
                            return;
                        };
                        for line in BufReader::new(conn).lines().map_while(Result::ok) {
                            if line.trim().is_empty() {
                                continue;
                            }
                            let answer = handle(&dev, &line);
                            if writeln!(out, "{answer}").is_err() {
                                break;
                            }
                        }
                    });
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(())
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
