//! Prints the agent's [`Report`]s on the console, one line each, for the host to pick out.

use std::io::Write as _;

use dmalab_report::Report;

/// Writes the report as one line (one write, so lines of concurrent threads never interleave).
pub fn report(r: Report) {
    let line = r.line() + "\n";
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
