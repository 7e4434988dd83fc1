//! Prints the agent's [`Report`]s, one line each, on the second serial port (ttyS1), where the
//! host reads them: the kernel writes its messages on the console (ttyS0) at any moment, even
//! into the middle of a line, so the console only gets a copy for people to read.

use std::fs::File;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};

use dmalab_report::Report;

/// The report channel, if the VM has a second serial port.
fn channel() -> &'static Option<Mutex<File>> {
    static CHANNEL: OnceLock<Option<Mutex<File>>> = OnceLock::new();
    CHANNEL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/ttyS1")
            .ok()
            .map(Mutex::new)
    })
}

/// Writes the report as one line (one write, so lines of concurrent threads never interleave).
pub fn report(r: Report) {
    let line = r.line() + "\n";
    if let Some(ch) = channel() {
        let mut f = ch.lock().unwrap_or_else(|e| e.into_inner());
        let _ = f.write_all(line.as_bytes());
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
