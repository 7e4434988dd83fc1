//! Verdicts: what the device injected (its event log) joined with what the guest saw (the
//! agent's reports), judged against the reaction docs/faults.md expects of a correct driver.

use std::collections::HashMap;

use dmalab_abi::Status;
use dmalab_report::Xfer;
use libc::{EIO, ETIMEDOUT};
use serde_json::Value;

/// Every reaction [`judge`] can expect, for reports that read verdicts back from JSON.
pub const EXPECTATIONS: &[&str] = &[
    "DMA_FAULT, as EIO",
    "EIO at once (the error vector), then a device reset",
    "ETIMEDOUT, then recovery",
    "caught by the end-to-end check",
    "completion or ETIMEDOUT, then recovery",
    "success, every byte right",
    "success; its bytes judged through its partner, which a fault hit",
    "the short count reported",
    "the status, as an errno",
    "a guest request to judge",
];

/// One injected fault and how the driver took it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub rule: String,
    pub kind: String,
    pub queue: u64,
    pub tag: u64,
    pub expected: &'static str,
    pub observed: String,
    pub pass: bool,
}

/// The reaction docs/faults.md expects, and whether `x` (the guest's report) shows it.
fn expect(kind: &str, fault: &Value, x: &Xfer) -> (&'static str, bool) {
    let (errno, status, verified) = (x.errno, x.status, x.verified);
    match kind {
        "error_status" => (
            "the status, as an errno",
            errno != 0 && Some(u64::from(status)) == fault["status"].as_u64(),
        ),
        "dma_read_error" | "dma_write_error" => (
            "DMA_FAULT, as EIO",
            errno == EIO && status == u32::from(Status::DmaFault.raw()),
        ),
        "drop_completion" | "stall" => ("ETIMEDOUT, then recovery", errno == ETIMEDOUT),
        // the device raises its error vector: a correct driver fails the request at once
        "fatal" => (
            "EIO at once (the error vector), then a device reset",
            errno == EIO,
        ),
        "lost_irq" => (
            "completion or ETIMEDOUT, then recovery",
            verified || errno == ETIMEDOUT,
        ),
        "corrupt" => ("caught by the end-to-end check", errno == 0 && !verified),
        "short_transfer" if fault["reported"] == false => {
            ("caught by the end-to-end check", !verified)
        }
        "short_transfer" => ("the short count reported", errno == 0 && x.bytes < x.len),
        _ => ("success, every byte right", verified),
    }
}

fn observed(x: &Xfer) -> String {
    format!(
        "errno {} status {} bytes {}/{} {}",
        x.errno,
        x.status,
        x.bytes,
        x.len,
        if x.verified {
            "verified"
        } else {
            "not verified"
        }
    )
}

/// When several faults hit one descriptor, the one whose effect the guest sees.
fn severity(kind: &str) -> u8 {
    match kind {
        "fatal" => 9,
        "stall" => 8,
        "drop_completion" => 7,
        "dma_read_error" | "dma_write_error" | "error_status" => 6,
        "lost_irq" => 5,
        "short_transfer" => 4,
        "corrupt" => 3,
        _ => 0,
    }
}

/// Judges every fault event against the guest request with the same queue and tag; faults that
/// share a descriptor are judged by the most severe of them.
pub fn judge(faults: &[&Value], xfers: &[&Xfer]) -> Vec<Verdict> {
    let mut dominant: HashMap<(u64, u64), &Value> = HashMap::new();
    for f in faults {
        let key = (
            f["queue"].as_u64().unwrap_or(0),
            f["tag"].as_u64().unwrap_or(0),
        );
        let k = |v: &Value| severity(v["fault"]["kind"].as_str().unwrap_or(""));
        let e = dominant.entry(key).or_insert(f);
        if k(f) > k(e) {
            *e = f;
        }
    }
    let mut by_tag: HashMap<(u64, u64), &Xfer> = HashMap::new();
    for x in xfers {
        by_tag.entry(key_of(x)).or_insert(x);
    }
    // A WRITE + READ pair is verified as one: when a fault that changes data or outcome hit
    // the other half, this half's bytes cannot be judged, only its own outcome.
    let partner_hit = |x: &Xfer| {
        x.partner_tag.is_some_and(|t| {
            dominant
                .get(&(u64::from(x.queue), u64::from(t)))
                .is_some_and(|p| severity(p["fault"]["kind"].as_str().unwrap_or("")) > 0)
        })
    };
    faults
        .iter()
        .map(|f| {
            let (queue, tag) = (
                f["queue"].as_u64().unwrap_or(0),
                f["tag"].as_u64().unwrap_or(0),
            );
            let kind = f["fault"]["kind"].as_str().unwrap_or("?").to_string();
            let rule = f["rule"].as_str().unwrap_or("?").to_string();
            match by_tag.get(&(queue, tag)) {
                Some(x) => {
                    let d = dominant[&(queue, tag)];
                    let dkind = d["fault"]["kind"].as_str().unwrap_or("?");
                    let (expected, pass) = match expect(dkind, &d["fault"], x) {
                        ("success, every byte right", false) if partner_hit(x) => (
                            "success; its bytes judged through its partner, which a fault hit",
                            x.errno == 0 && x.status == u32::from(Status::Ok.raw()),
                        ),
                        other => other,
                    };
                    Verdict {
                        rule,
                        kind,
                        queue,
                        tag,
                        expected,
                        observed: observed(x),
                        pass,
                    }
                }
                None => Verdict {
                    rule,
                    kind,
                    queue,
                    tag,
                    expected: "a guest request to judge",
                    observed: "no guest request has this tag".into(),
                    pass: false,
                },
            }
        })
        .collect()
}

/// The (queue, tag) a guest request is joined on.
fn key_of(x: &Xfer) -> (u64, u64) {
    (u64::from(x.queue), u64::from(x.tag))
}

/// Guest requests no fault touched that still failed.
pub fn unexplained_failures<'a>(faults: &[&Value], xfers: &[&'a Xfer]) -> Vec<&'a Xfer> {
    let hit: std::collections::HashSet<(u64, u64)> = faults
        .iter()
        .map(|f| {
            (
                f["queue"].as_u64().unwrap_or(0),
                f["tag"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // a WRITE + READ pair is verified as one: a fault on either half explains both
    let partner = |x: &Xfer| x.partner_tag.map(|t| (u64::from(x.queue), u64::from(t)));
    xfers
        .iter()
        .filter(|x| !x.verified)
        .filter(|x| !hit.contains(&key_of(x)) && !partner(x).is_some_and(|p| hit.contains(&p)))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joins_by_queue_and_tag_and_judges() {
        let faults = [
            json!({"queue": 0, "tag": 7, "rule": "a", "fault": {"kind": "drop_completion"}}),
            json!({"queue": 1, "tag": 7, "rule": "b", "fault": {"kind": "corrupt", "bits": 1}}),
            json!({"queue": 2, "tag": 9, "rule": "c", "fault": {"kind": "error_status", "status": 9}}),
            json!({"queue": 3, "tag": 1, "rule": "d", "fault": {"kind": "stall"}}),
        ];
        let xfer = |queue, tag, errno, status, verified, bytes| Xfer {
            scenario: "t".into(),
            op: "copy".into(),
            queue,
            len: 64,
            segments: 0,
            status,
            errno,
            result: 0,
            bytes,
            tag,
            verified,
            detail: String::new(),
            ..Default::default()
        };
        let xfers = [
            xfer(0, 7, 110, 0, false, 0),
            xfer(1, 7, 0, 0, true, 64),
            xfer(2, 9, 5, 9, false, 0),
            xfer(2, 10, 5, 9, false, 0),
        ];
        let f: Vec<&Value> = faults.iter().collect();
        let x: Vec<&Xfer> = xfers.iter().collect();
        let v = judge(&f, &x);
        assert!(v[0].pass, "drop -> ETIMEDOUT");
        assert!(!v[1].pass, "corruption that went unnoticed is a failure");
        assert!(v[2].pass, "error status -> errno");
        assert!(!v[3].pass && v[3].observed.contains("no guest request"));
        let u = unexplained_failures(&f, &x);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].tag, 10);
    }

    /// A WRITE hit by a harmless fault, whose READ back a short transfer cut: the WRITE's bytes
    /// cannot be judged, its own outcome can (found by a zero-copy campaign: the bounce path
    /// had hidden it by handing back stale pool bytes past the short count).
    #[test]
    fn a_half_whose_partner_a_fault_hit_is_judged_on_its_own_outcome() {
        let faults = [
            json!({"queue": 1, "tag": 20, "rule": "dup", "fault": {"kind": "duplicate_completion"}}),
            json!({"queue": 1, "tag": 21, "rule": "short", "fault": {"kind": "short_transfer", "bytes": 100, "reported": true}}),
            json!({"queue": 2, "tag": 30, "rule": "dup", "fault": {"kind": "duplicate_completion"}}),
        ];
        let half = |queue, tag, partner, op: &str, errno, bytes| Xfer {
            scenario: "campaign".into(),
            op: op.into(),
            queue,
            len: 4096,
            bytes,
            errno,
            tag,
            verified: false,
            partner_tag: Some(partner),
            ..Default::default()
        };
        let xfers = [
            half(1, 20, 21, "write", 0, 4096),
            half(1, 21, 20, "read", 0, 100),
            // no fault on this one's partner: its bad bytes are its own
            half(2, 30, 31, "write", 0, 4096),
            half(2, 31, 30, "read", 0, 4096),
        ];
        let f: Vec<&Value> = faults.iter().collect();
        let x: Vec<&Xfer> = xfers.iter().collect();
        let v = judge(&f, &x);
        assert!(v[0].pass && v[0].expected.contains("partner"), "{:?}", v[0]);
        assert!(v[1].pass, "the short count reported: {:?}", v[1]);
        assert!(!v[2].pass, "{:?}", v[2]);
    }
}
