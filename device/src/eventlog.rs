//! The event log: a JSON-lines record of what the device did (descriptors fetched, each DMA,
//! completions, interrupts, resets, errors) plus counters that are always kept. With no
//! destination the log costs one branch per event; the counters are a few relaxed atomics.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::memory::Dir;

/// What an [`Event::Error`]'s `what` says when the device refused to touch guest memory
/// because Bus Master Enable is clear (docs/datasheet.md, "Command register").
pub const BUS_MASTER_OFF: &str =
    "bus mastering is off (PCI command register bit 2 clear): the device may not touch guest memory";

/// How an [`Event::Error`]'s `what` starts when the client unmapped an enabled queue's ring:
/// the driver freed ring memory before stopping the device.
pub const RING_UNMAPPED_WHILE_ENABLED: &str = "ring unmapped while enabled";

/// One thing the device did. The log's lines are [`Record`]s: what the device writes is what
/// the harness, the grader and campaigns read back, through this one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A descriptor was read from a submission ring.
    Fetch {
        /// The queue pair.
        queue: u16,
        /// The ring index it was read from.
        index: u32,
        /// Its opcode, as written (maybe invalid).
        opcode: u8,
        /// Its flags, as written.
        flags: u8,
        /// The driver's tag.
        tag: u32,
        /// Its transfer length.
        len: u32,
    },
    /// Guest memory was read or written.
    Dma {
        /// The queue pair whose request moved the data.
        queue: u16,
        /// That request's tag.
        tag: u32,
        /// The guest (bus) address.
        addr: u64,
        /// Bytes moved.
        len: u64,
        /// Read from or written to the guest.
        dir: Dir,
    },
    /// A completion was written.
    Complete {
        /// The queue pair.
        queue: u16,
        /// The completion-ring index written.
        index: u32,
        /// The tag it carries.
        tag: u32,
        /// Its status code (`abi::Status`).
        status: u16,
        /// Bytes it says were transferred.
        bytes: u32,
        /// Its result word.
        result: u32,
        /// Its phase bit (ring completions: 1 on the ring's first pass, 0 on the second, ...).
        #[serde(default)]
        phase: bool,
    },
    /// An interrupt was raised (`delivered: false`: no vector or line was configured).
    Irq {
        /// The MSI-X vector (queue q: q; error vector: the last).
        vector: u16,
        /// It reached an eventfd.
        delivered: bool,
    },
    /// A descriptor was refused, a ring could not be accessed, or the client did something the
    /// device refused or flags as a driver bug (see [`RING_UNMAPPED_WHILE_ENABLED`]).
    Error {
        /// The queue pair involved, if one was.
        queue: Option<u16>,
        /// The request's tag, if one was involved.
        tag: Option<u32>,
        /// The completion status written for it, if any.
        status: Option<u16>,
        /// What happened, for people.
        what: String,
    },
    /// The guest changed the PCI command register's memory-space or bus-master bit (the
    /// device's own account of what the driver enabled).
    Command {
        /// Memory Space Enable (bit 1): BAR accesses reach the device.
        memory: bool,
        /// Bus Master Enable (bit 2): the device may access guest memory.
        bus_master: bool,
    },
    /// Device or queue reset.
    Reset {
        /// The queue reset, or `None` for a device reset.
        queue: Option<u16>,
        /// Descriptors posted but never executed that the reset threw away.
        discarded: u32,
    },
    /// A fault was injected into a descriptor.
    Fault(Injected),
    /// `FAULT_EPOCH` was written: fault injection restarted for a campaign's unit.
    Epoch {
        /// The epoch written.
        epoch: u32,
    },
    /// The guest read a BAR0 register (a round trip it waits for: none belongs on a driver's
    /// data path).
    BarRead {
        /// The register's offset in BAR0.
        offset: u64,
    },
    /// Client DMA map-table change.
    Map {
        /// Start of the range (IOVA, or guest physical without an IOMMU).
        iova: u64,
        /// Its size in bytes.
        size: u64,
        /// Mapped (`true`) or unmapped.
        mapped: bool,
    },
    /// The counters, written at shutdown.
    Counters(CountersSnapshot),
}

/// A fault the injector applied to one descriptor ([`Event::Fault`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    /// The queue pair ([`dmalab_abi::DIRECT_QUEUE`] for the direct block).
    pub queue: u16,
    /// The submission-ring index of the descriptor (the block's transfer number).
    pub index: u32,
    /// Its tag.
    pub tag: u32,
    /// The name of the rule that fired.
    pub rule: String,
    /// What was injected.
    pub fault: crate::faults::FaultKind,
}

/// Counters kept whether or not events are logged. Each is the running total of the matching
/// [`CountersSnapshot`] field.
#[derive(Default)]
pub struct Counters {
    /// Descriptors fetched.
    pub descriptors: AtomicU64,
    /// Completions written.
    pub completions: AtomicU64,
    /// Completions with status OK.
    pub completions_ok: AtomicU64,
    /// Completions with an error status.
    pub completions_err: AtomicU64,
    /// Bytes read from guest memory.
    pub bytes_from_guest: AtomicU64,
    /// Bytes written to guest memory.
    pub bytes_to_guest: AtomicU64,
    /// Interrupts raised.
    pub irqs: AtomicU64,
    /// Device and queue resets.
    pub resets: AtomicU64,
    /// Ring errors: unreadable or unwritable rings, refused doorbells, rings unmapped while
    /// enabled.
    pub ring_errors: AtomicU64,
    /// Faults injected.
    pub faults: AtomicU64,
    /// BAR0 reads by the guest (each costs it a round trip; a driver's data path needs none).
    pub bar_reads: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[allow(missing_docs)] // field for field the same as `Counters`
pub struct CountersSnapshot {
    pub descriptors: u64,
    pub completions: u64,
    pub completions_ok: u64,
    pub completions_err: u64,
    pub bytes_from_guest: u64,
    pub bytes_to_guest: u64,
    pub irqs: u64,
    pub resets: u64,
    pub ring_errors: u64,
    pub faults: u64,
    #[serde(default)]
    pub bar_reads: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            descriptors: self.descriptors.load(Relaxed),
            completions: self.completions.load(Relaxed),
            completions_ok: self.completions_ok.load(Relaxed),
            completions_err: self.completions_err.load(Relaxed),
            bytes_from_guest: self.bytes_from_guest.load(Relaxed),
            bytes_to_guest: self.bytes_to_guest.load(Relaxed),
            irqs: self.irqs.load(Relaxed),
            resets: self.resets.load(Relaxed),
            ring_errors: self.ring_errors.load(Relaxed),
            faults: self.faults.load(Relaxed),
            bar_reads: self.bar_reads.load(Relaxed),
        }
    }
}

/// One line of the event log: an [`Event`] and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Microseconds since the device started.
    pub t_us: u64,
    /// What happened (its `event` field names the kind).
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// Parses one line of the log; `None` for a line that is not an event (a torn last line).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

impl Event {
    /// The kind's name, as in the log's `event` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Fetch { .. } => "fetch",
            Event::Dma { .. } => "dma",
            Event::Complete { .. } => "complete",
            Event::Irq { .. } => "irq",
            Event::Error { .. } => "error",
            Event::Command { .. } => "command",
            Event::Reset { .. } => "reset",
            Event::Fault(_) => "fault",
            Event::Epoch { .. } => "epoch",
            Event::BarRead { .. } => "bar_read",
            Event::Map { .. } => "map",
            Event::Counters(_) => "counters",
        }
    }

    /// The queue pair the event belongs to, when it belongs to one.
    pub fn queue(&self) -> Option<u16> {
        match *self {
            Event::Fetch { queue, .. }
            | Event::Dma { queue, .. }
            | Event::Complete { queue, .. } => Some(queue),
            Event::Fault(ref f) => Some(f.queue),
            Event::Error { queue, .. } | Event::Reset { queue, .. } => queue,
            _ => None,
        }
    }

    /// The request's tag, when the event concerns one request.
    pub fn tag(&self) -> Option<u32> {
        match *self {
            Event::Fetch { tag, .. } | Event::Dma { tag, .. } | Event::Complete { tag, .. } => {
                Some(tag)
            }
            Event::Fault(ref f) => Some(f.tag),
            Event::Error { tag, .. } => tag,
            _ => None,
        }
    }
}

/// The log: counters plus an optional JSON-lines destination.
pub struct EventLog {
    out: Option<Mutex<std::io::BufWriter<Box<dyn Write + Send>>>>,
    t0: Instant,
    /// The counters, kept even when no event is written.
    pub counters: Counters,
    /// The last events, for the control socket.
    recent: Mutex<Recent>,
}

/// How many events the control socket can look back at...
pub const RECENT: usize = 10_000;
/// ...and how many bytes of them at most (event texts carry client-chosen rule names).
pub const RECENT_BYTES: usize = 4 << 20;

#[derive(Default)]
struct Recent {
    next_seq: u64,
    lines: std::collections::VecDeque<(u64, String)>,
    bytes: usize,
}

impl EventLog {
    /// A log that keeps counters only.
    pub fn disabled() -> Self {
        Self {
            out: None,
            t0: Instant::now(),
            counters: Counters::default(),
            recent: Mutex::default(),
        }
    }

    /// A log that also writes JSON lines to `w`.
    pub fn to_writer(w: Box<dyn Write + Send>) -> Self {
        Self {
            out: Some(Mutex::new(std::io::BufWriter::new(w))),
            ..Self::disabled()
        }
    }

    /// True when events are written somewhere (callers skip building costly events otherwise).
    pub fn enabled(&self) -> bool {
        self.out.is_some()
    }

    /// Records `event` (built only if the log is enabled).
    pub fn record(&self, event: impl FnOnce() -> Event) {
        if let Some(out) = &self.out {
            let event = event();
            let line = Record {
                t_us: self.t0.elapsed().as_micros() as u64,
                event,
            };
            let text = serde_json::to_string(&line).unwrap_or_default();
            let mut w = out.lock().unwrap();
            // A full disk must not stop the device: the counters stay right, the log is best effort.
            let _ = w.write_all(text.as_bytes());
            let _ = w.write_all(b"\n");
            drop(w);
            let mut recent = self.recent.lock().unwrap();
            recent.next_seq += 1;
            let seq = recent.next_seq;
            recent.bytes += text.len();
            recent.lines.push_back((seq, text));
            while recent.lines.len() > RECENT || recent.bytes > RECENT_BYTES {
                let Some((_, old)) = recent.lines.pop_front() else {
                    break;
                };
                recent.bytes -= old.len();
            }
        }
    }

    /// Logged events with a sequence number above `since` (the last `RECENT` are kept), as
    /// (sequence, JSON line).
    pub fn since(&self, since: u64) -> Vec<(u64, String)> {
        let recent = self.recent.lock().unwrap();
        recent
            .lines
            .iter()
            .filter(|(s, _)| *s > since)
            .cloned()
            .collect()
    }

    /// Pushes buffered lines out (when a queue goes idle and at shutdown).
    pub fn flush(&self) {
        if let Some(out) = &self.out {
            let _ = out.lock().unwrap().flush();
        }
    }

    /// Writes the counters as a final event and flushes.
    pub fn finish(&self) {
        let c = self.counters.snapshot();
        self.record(|| Event::Counters(c));
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_json_lines() {
        let buf = Shared::default();
        let log = EventLog::to_writer(Box::new(buf.clone()));
        log.record(|| Event::Irq {
            vector: 3,
            delivered: true,
        });
        log.counters.irqs.fetch_add(1, Relaxed);
        log.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["event"], "irq");
        assert_eq!(lines[0]["vector"], 3);
        assert_eq!(lines[1]["event"], "counters");
        assert_eq!(lines[1]["irqs"], 1);
    }

    /// What the device writes, the harness reads back as the same event, for every kind.
    #[test]
    fn every_event_reads_back_as_written() {
        let events = [
            Event::Fetch {
                queue: 1,
                index: 2,
                opcode: 9,
                flags: 1,
                tag: 7,
                len: 4096,
            },
            Event::Dma {
                queue: 0,
                tag: 7,
                addr: 1 << 40,
                len: 64,
                dir: Dir::ToGuest,
            },
            Event::Complete {
                queue: 3,
                index: 0,
                tag: 8,
                status: 4,
                bytes: 12,
                result: 5,
                phase: true,
            },
            Event::Irq {
                vector: 4,
                delivered: false,
            },
            Event::Error {
                queue: None,
                tag: Some(3),
                status: None,
                what: "x \"y\"".into(),
            },
            Event::Reset {
                queue: Some(2),
                discarded: 5,
            },
            Event::Fault(Injected {
                queue: 0,
                index: 1,
                tag: 2,
                rule: "r".into(),
                fault: crate::faults::FaultKind::ShortTransfer {
                    bytes: 10,
                    reported: false,
                },
            }),
            Event::Epoch { epoch: 3 },
            Event::BarRead { offset: 0x68 },
            Event::Map {
                iova: 0x1000,
                size: 4096,
                mapped: true,
            },
            Event::Counters(CountersSnapshot {
                irqs: 9,
                ..Default::default()
            }),
        ];
        let buf = Shared::default();
        let log = EventLog::to_writer(Box::new(buf.clone()));
        for e in &events {
            log.record(|| e.clone());
        }
        log.flush();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let back: Vec<Event> = text
            .lines()
            .map(|l| {
                Record::parse(l)
                    .unwrap_or_else(|| panic!("unreadable: {l}"))
                    .event
            })
            .collect();
        assert_eq!(back, events);
        for (e, l) in events.iter().zip(text.lines()) {
            assert!(l.contains(&format!("\"event\":\"{}\"", e.kind())), "{l}");
        }
    }

    #[test]
    fn disabled_log_builds_nothing() {
        let log = EventLog::disabled();
        log.record(|| unreachable!("events must not be built when the log is off"));
    }
}
