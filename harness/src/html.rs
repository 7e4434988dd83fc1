//! The campaign report: one self-contained HTML page (inline CSS and SVG, no scripts).

use std::fmt::Write as _;

use dmalab_report::Xfer;

use crate::verdict::Verdict;

/// `s` with HTML's special characters escaped.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report card of `dmalab check`: one row per check (level `L`/step `S` as `mark` says,
/// name, pass or the reason it failed, where the expected behaviour is explained, the VM it was
/// judged on).
pub fn report_card(
    driver: &str,
    mark: &str,
    rows: &[crate::grading::Row],
    notes: &[(String, String)],
) -> String {
    let passed = rows.iter().filter(|r| r.result.is_ok()).count();
    let mut h = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>dmalab check</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}th{{background:#eee}}\
         .pass{{color:#070}}.fail{{color:#b00;font-weight:bold}}.notrun{{color:#888}}</style></head><body>\
         <h1>dmalab check</h1><p>{}: {passed} of {} checks passed</p><table><tr><th>level</th>\
         <th>check</th><th>result</th><th>see</th><th>judged on</th><th>platform</th></tr>",
        esc(driver),
        rows.len()
    );
    for r in rows {
        let (class, text) = match (&r.result, r.after) {
            (Ok(()), _) => ("pass", "pass".to_string()),
            (Err(why), Some(cause)) => (
                "notrun",
                format!("not run: the agent stopped when \"{cause}\" failed; what it saw: {why}"),
            ),
            (Err(why), None) => ("fail", format!("FAIL: {why}")),
        };
        let _ = write!(
            h,
            "<tr><td>{mark}{}</td><td>{}</td><td class={class}>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.rank,
            esc(r.name),
            esc(&text),
            esc(r.see),
            esc(r.conditions),
            esc(&r.platform)
        );
    }
    h.push_str("</table>");
    conditions_matrix(&mut h, mark, rows);
    for (heading, text) in notes {
        let _ = write!(h, "<h2>{}</h2><p>{}</p>", esc(heading), esc(text));
    }
    h.push_str("</body></html>\n");
    h
}

/// The conditions × checks matrix: one column per condition any VM ran under, a check's cell
/// is its result when its VM ran under that condition.
fn conditions_matrix(h: &mut String, mark: &str, rows: &[crate::grading::Row]) {
    let names = |r: &crate::grading::Row| -> Vec<String> {
        r.platform.split(", ").map(str::to_string).collect()
    };
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        for n in names(r) {
            if !columns.contains(&n) {
                columns.push(n);
            }
        }
    }
    columns.sort();
    h.push_str("<h2>Conditions</h2><table><tr><th>level</th><th>check</th>");
    for c in &columns {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for r in rows {
        let _ = write!(h, "<tr><td>{mark}{}</td><td>{}</td>", r.rank, esc(r.name));
        let here = names(r);
        for c in &columns {
            let cell = match (here.contains(c), r.result.is_ok(), r.after.is_some()) {
                (false, _, _) => "<td></td>",
                (true, true, _) => "<td class=pass>pass</td>",
                (true, false, true) => "<td class=notrun>not run</td>",
                (true, false, false) => "<td class=fail>FAIL</td>",
            };
            h.push_str(cell);
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// Renders the timeline (one row per queue: each request a mark, faults and failures coloured)
/// and the verdict table.
pub fn report(
    title: &str,
    summary: &[(String, String)],
    xfers: &[&Xfer],
    verdicts: &[Verdict],
    violations: &[crate::oracle::Violation],
    queues: u64,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}th{{background:#eee}}\
         .pass{{color:#070}}.fail{{color:#b00;font-weight:bold}}.legend span{{margin-right:1.5em}}\
         </style></head><body><h1>{t}</h1><table>",
        t = esc(title)
    );
    for (k, v) in summary {
        let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    h.push_str("</table><h2>Timeline</h2><p class=legend><span style=color:#3a3>&#9632; verified</span>\
        <span style=color:#e80>&#9632; fault injected</span><span style=color:#83c>&#9632; fault, timed out: queue reset (recovery)</span><span style=color:#c00>&#9632; failed</span></p>");
    let hit: std::collections::HashSet<(u64, u64)> =
        verdicts.iter().map(|v| (v.queue, v.tag)).collect();
    let n = xfers.len().max(1);
    let (w, row) = (1000.0, 28.0);
    let _ = write!(
        h,
        "<svg width={} height={} xmlns='http://www.w3.org/2000/svg'>",
        w + 80.0,
        row * queues as f64 + 20.0
    );
    for q in 0..queues {
        let _ = write!(
            h,
            "<text x=0 y={} font-size=12>queue {q}</text>",
            row * q as f64 + 18.0
        );
    }
    for (i, x) in xfers.iter().enumerate() {
        let q = u64::from(x.queue);
        let key = (q, u64::from(x.tag));
        let colour = if hit.contains(&key) && x.errno == libc::ETIMEDOUT {
            "#83c"
        } else if hit.contains(&key) {
            "#e80"
        } else if x.verified {
            "#3a3"
        } else {
            "#c00"
        };
        let xpos = 70.0 + w * i as f64 / n as f64;
        let _ = write!(
            h,
            "<rect x={xpos:.1} y={} width={:.1} height=18 fill='{colour}'><title>{}</title></rect>",
            row * q as f64 + 4.0,
            (w / n as f64).max(1.5),
            esc(&format!(
                "{} {} len {} errno {} status {}",
                x.detail, x.op, x.len, x.errno, x.status
            ))
        );
    }
    h.push_str(
        "</svg><h2>Verdicts</h2><table><tr><th>#</th><th>rule</th><th>fault</th><th>queue</th>\
        <th>tag</th><th>expected reaction</th><th>observed</th><th>verdict</th></tr>",
    );
    for (i, v) in verdicts.iter().enumerate() {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:#x}</td><td>{}</td><td>{}</td><td class={}>{}</td></tr>",
            i + 1,
            esc(&v.rule),
            esc(&v.kind),
            v.queue,
            v.tag,
            esc(v.expected),
            esc(&v.observed),
            if v.pass { "pass" } else { "fail" },
            if v.pass { "pass" } else { "FAIL" }
        );
    }
    h.push_str("</table>");
    if !violations.is_empty() {
        h.push_str(
            "<h2>Ownership violations</h2><p>Guest CPU accesses to memory a request owned \
             (docs/oracle.md).</p><table><tr><th>kind</th><th>queue</th><th>tag</th>\
             <th>address</th><th>bytes</th><th>where</th><th>times</th></tr>",
        );
        for v in violations {
            let _ = write!(
                h,
                "<tr><td class=fail>{}</td><td>{}</td><td>{:#x}</td><td>{:#x}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&v.kind),
                v.queue,
                v.tag,
                v.gpa,
                v.size,
                esc(&v.site()),
                v.count
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_card_lists_every_check_escaped() {
        let row = |rank, name, result, see| crate::grading::Row {
            rank,
            name,
            result,
            see,
            conditions: "the oracle & co",
            platform: "smp2, preempt, iova>4G".into(),
            boot: "transfers",
            after: None,
        };
        let rows = [
            row(1, "loads", Ok(()), "docs/contract.md"),
            row(
                6,
                "owns <nothing>",
                Err("a & b".to_string()),
                "docs/oracle.md",
            ),
        ];
        let notes = [(
            "fault verdicts (x)".to_string(),
            "stall 1/1 <b>".to_string(),
        )];
        let h = report_card("my.ko", "L", &rows, &notes);
        assert!(h.contains("1 of 2 checks passed"), "{h}");
        assert!(
            h.contains("<td>L6</td>") && h.contains("the oracle &amp; co"),
            "{h}"
        );
        assert!(h.contains("stall 1/1 &lt;b&gt;"), "{h}");
        assert!(h.contains("owns &lt;nothing&gt;") && h.contains("FAIL: a &amp; b"));
        assert!(!h.contains("<script"));
    }
    use serde_json::json;

    #[test]
    fn renders_escaped_self_contained_html() {
        let x: Xfer = serde_json::from_value(json!({"scenario": "campaign", "queue": 1, "tag": 2,
            "verified": false, "op": "copy", "len": 8, "segments": 0, "errno": 110, "status": 0,
            "result": 0, "bytes": 0, "detail": "op 0"}))
        .unwrap();
        let v = Verdict {
            rule: "<r>".into(),
            kind: "stall".into(),
            queue: 1,
            tag: 2,
            expected: "ETIMEDOUT",
            observed: "errno 110".into(),
            pass: true,
        };
        let bad = crate::oracle::Violation {
            kind: "cpu_write_to_read_owned".into(),
            queue: 1,
            tag: 2,
            gpa: 0x1000,
            size: 1,
            pc: 0,
            function: "<copy_in>".into(),
            caller: None,
            count: 3,
        };
        let h = report(
            "t & t",
            &[("seed".into(), "1".into())],
            &[&x],
            &[v],
            &[bad],
            2,
        );
        assert!(h.contains("Ownership violations") && h.contains("&lt;copy_in&gt;"));
        assert!(
            h.starts_with("<!doctype html>") && h.contains("&lt;r&gt;") && h.contains("t &amp; t")
        );
        assert!(
            h.contains("fill='#83c'"),
            "the hit, timed-out request is marked as a recovery"
        );
        assert!(
            !h.contains("fill='#c00'"),
            "a hit request is not an unexplained failure"
        );
        assert!(
            !h.contains("<script") && !h.contains("src=") && !h.contains("href="),
            "self-contained"
        );
    }
}
