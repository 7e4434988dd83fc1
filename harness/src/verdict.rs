//! Verdicts: what the device injected (its event log) joined with what the guest saw (the
//! agent's reports), judged against the reaction docs/faults.md expects of a correct driver.

use std::collections::HashMap;

use dmalab_abi::Status;
use dmalab_device::eventlog::Injected;
use dmalab_device::faults::FaultKind;
use dmalab_report::Xfer;
use libc::{EIO, ETIMEDOUT};

/// Every reaction [`judge`] can expect, for reports that read verdicts back from JSON.
pub const EXPECTATIONS: &[&str] = &[
    "DMA_FAULT, as EIO",
    "EIO at once (the error vector), then a device reset",
    "ETIMEDOUT, then recovery",
    "caught by the end-to-end check",
    "caught by the end-to-end check, no other process's bytes",
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
fn expect(fault: &FaultKind, x: &Xfer) -> (&'static str, bool) {
    let (errno, status, verified) = (x.errno, x.status, x.verified);
    match *fault {
        FaultKind::ErrorStatus { status: injected } => (
            "the status, as an errno",
            errno != 0 && status == u32::from(injected),
        ),
        FaultKind::DmaReadError | FaultKind::DmaWriteError => (
            "DMA_FAULT, as EIO",
            errno == EIO && status == u32::from(Status::DmaFault.raw()),
        ),
        FaultKind::DropCompletion | FaultKind::Stall => {
            ("ETIMEDOUT, then recovery", errno == ETIMEDOUT)
        }
        // the device raises its error vector: a correct driver fails the request at once
        FaultKind::Fatal => (
            "EIO at once (the error vector), then a device reset",
            errno == EIO,
        ),
        FaultKind::LostIrq => (
            "completion or ETIMEDOUT, then recovery",
            verified || errno == ETIMEDOUT,
        ),
        FaultKind::Corrupt { .. } => ("caught by the end-to-end check", errno == 0 && !verified),
        // the bytes the device did not write must not be another process's (the agent seeded
        // the driver's buffers with a secret first)
        FaultKind::ShortTransfer {
            reported: false, ..
        } => (
            "caught by the end-to-end check, no other process's bytes",
            !verified && !x.detail.contains(dmalab_report::STALE_DETAIL),
        ),
        FaultKind::ShortTransfer { .. } => {
            ("the short count reported", errno == 0 && x.bytes < x.len)
        }
        _ => ("success, every byte right", verified),
    }
}

fn observed(x: &Xfer) -> String {
    let stale = if x.detail.contains(dmalab_report::STALE_DETAIL) {
        format!(" ({})", x.detail)
    } else {
        String::new()
    };
    format!(
        "errno {} status {} bytes {}/{} {}{stale}",
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
fn severity(fault: &FaultKind) -> u8 {
    match fault {
        FaultKind::Fatal => 9,
        FaultKind::Stall => 8,
        FaultKind::DropCompletion => 7,
        FaultKind::DmaReadError | FaultKind::DmaWriteError | FaultKind::ErrorStatus { .. } => 6,
        FaultKind::LostIrq => 5,
        FaultKind::ShortTransfer { .. } => 4,
        FaultKind::Corrupt { .. } => 3,
        _ => 0,
    }
}

/// Judges every fault event against the guest request with the same queue and tag; faults that
/// share a descriptor are judged by the most severe of them.
pub fn judge(faults: &[&Injected], xfers: &[&Xfer]) -> Vec<Verdict> {
    let mut dominant: HashMap<(u64, u64), &Injected> = HashMap::new();
    for f in faults {
        let k = |v: &Injected| severity(&v.fault);
        let e = dominant.entry(key_of_fault(f)).or_insert(f);
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
                .is_some_and(|p| severity(&p.fault) > 0)
        })
    };
    faults
        .iter()
        .map(|f| {
            let (queue, tag) = key_of_fault(f);
            let kind = f.fault.name().to_string();
            let rule = f.rule.clone();
            match by_tag.get(&(queue, tag)) {
                Some(x) => {
                    let d = dominant[&(queue, tag)];
                    let (expected, pass) = match expect(&d.fault, x) {
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

/// The (queue, tag) of the request a fault hit.
fn key_of_fault(f: &Injected) -> (u64, u64) {
    (u64::from(f.queue), u64::from(f.tag))
}

/// The (queue, tag) a guest request is joined on.
fn key_of(x: &Xfer) -> (u64, u64) {
    (u64::from(x.queue), u64::from(x.tag))
}

/// Guest requests no fault touched that still failed.
pub fn unexplained_failures<'a>(faults: &[&Injected], xfers: &[&'a Xfer]) -> Vec<&'a Xfer> {
    let hit: std::collections::HashSet<(u64, u64)> =
        faults.iter().map(|f| key_of_fault(f)).collect();
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
    use serde_json::{json, Value};

    /// Fault events as the device's log writes them.
    fn injected(faults: &[Value]) -> Vec<Injected> {
        faults
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f["index"] = json!(0);
                serde_json::from_value(f).unwrap()
            })
            .collect()
    }

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
        let faults = injected(&faults);
        let f: Vec<&Injected> = faults.iter().collect();
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

    #[test]
    fn a_silent_short_read_that_returns_another_process_s_bytes_fails() {
        let faults = injected(&[json!({"queue": 0, "tag": 3, "rule": "s",
            "fault": {"kind": "short_transfer", "bytes": 16, "reported": false}})]);
        let read = |detail: &str| Xfer {
            op: "read".into(),
            len: 4096,
            bytes: 4096,
            tag: 3,
            detail: detail.into(),
            ..Default::default()
        };
        let zeroes = read("op 4 read back: status 0, first differing byte at 16");
        let stale = read(&format!(
            "op 4 read back: 4080 of 4096 {}",
            dmalab_report::STALE_DETAIL
        ));
        let f: Vec<&Injected> = faults.iter().collect();
        assert!(judge(&f, &[&zeroes])[0].pass, "caught, nothing leaked");
        let v = judge(&f, &[&stale]);
        assert!(!v[0].pass, "another process's bytes handed back");
        assert!(v[0].expected.contains("no other process's bytes"));
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
        let faults = injected(&faults);
        let f: Vec<&Injected> = faults.iter().collect();
        let x: Vec<&Xfer> = xfers.iter().collect();
        let v = judge(&f, &x);
        assert!(v[0].pass && v[0].expected.contains("partner"), "{:?}", v[0]);
        assert!(v[1].pass, "the short count reported: {:?}", v[1]);
        assert!(!v[2].pass, "{:?}", v[2]);
    }
}
