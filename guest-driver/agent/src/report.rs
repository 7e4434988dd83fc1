//! One JSON object per line on the console, prefixed so the host can find it.

use std::fmt::Write as _;
use std::io::Write as _;

/// Marker in front of every report line.
pub const PREFIX: &str = "@@DMALAB ";

/// A flat JSON object under construction (the agent has no serde: it must stay small and
/// static).
pub struct Obj(String);

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

impl Obj {
    pub fn new(kind: &str) -> Self {
        Obj(format!("{{\"kind\":\"{}\"", escape(kind)))
    }
    pub fn str(mut self, k: &str, v: &str) -> Self {
        let _ = write!(self.0, ",\"{}\":\"{}\"", k, escape(v));
        self
    }
    pub fn num(mut self, k: &str, v: impl Into<f64>) -> Self {
        let v: f64 = v.into();
        if v.fract() == 0.0 && v.abs() < 9e15 {
            let _ = write!(self.0, ",\"{}\":{}", k, v as i64);
        } else {
            let _ = write!(self.0, ",\"{}\":{:.3}", k, v);
        }
        self
    }
    pub fn u64(mut self, k: &str, v: u64) -> Self {
        let _ = write!(self.0, ",\"{}\":{}", k, v);
        self
    }
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        let _ = write!(self.0, ",\"{}\":{}", k, v);
        self
    }
    /// A nested value already in JSON.
    pub fn raw(mut self, k: &str, json: &str) -> Self {
        let _ = write!(self.0, ",\"{}\":{}", k, json);
        self
    }
}

/// Writes the object as one line (one write, so lines of concurrent threads never interleave).
pub fn report(o: Obj) {
    let line = format!("{PREFIX}{}}}\n", o.0);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
