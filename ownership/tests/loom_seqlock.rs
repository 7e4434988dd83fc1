//! The ownership table's seqlock under every interleaving loom explores: the device publishes
//! while the oracle reads, and no snapshot the reader accepts is torn (entries of two tables,
//! or a count from one and entries from another). Runs only with `--cfg loom` (`make loom`).
#![cfg(loom)]

use dmalab_ownership::{Kind, Window};
use loom::sync::atomic::{fence, AtomicU64, Ordering};
use loom::sync::Arc;

// the table's layout (lib.rs), with room for two entries
const HEADER_WORDS: usize = 8;
const ENTRY_WORDS: usize = 4;
const W_SEQ: usize = 1;
const W_COUNT: usize = 3;
const W_OVERFLOW: usize = 5;
const CAPACITY: usize = 2;

#[allow(dead_code)]
mod model {
    use super::*;
    include!("../src/seqlock_impl.rs");

    fn spin() {
        loom::thread::yield_now();
    }

    /// The table in ordinary memory, with loom's atomics.
    pub struct Table(pub Vec<AtomicU64>);

    impl Words for Table {
        fn word(&self, i: usize) -> &AtomicU64 {
            &self.0[i]
        }
    }
}

use model::{publish, snapshot, Table};

fn window(start: u64, tag: u32) -> Window {
    Window {
        start,
        len: 0x1000,
        queue: 1,
        tag,
        slot: tag,
        kind: Kind::WriteOwned,
    }
}

/// One writer publishes table A (two windows), then table B (one, different); one reader takes
/// a snapshot meanwhile. The snapshot is the empty table, A or B, and its sequence number says
/// which.
#[test]
fn a_snapshot_is_one_whole_table() {
    let mut builder = loom::model::Builder::new();
    // bounded: loom's state space grows with every preemption; 3 covers a preemption inside
    // each of the writer's phases and the reader's
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let table = Arc::new(Table(
            (0..HEADER_WORDS + ENTRY_WORDS * CAPACITY)
                .map(|_| AtomicU64::new(0))
                .collect(),
        ));
        let a = vec![window(0x1000, 1), window(0x8000, 2)];
        let b = vec![window(0x20000, 3)];
        let writer = {
            let (table, a, b) = (table.clone(), a.clone(), b.clone());
            loom::thread::spawn(move || {
                publish(&*table, &a, CAPACITY);
                publish(&*table, &b, CAPACITY);
            })
        };
        let mut out = Vec::new();
        let seq = snapshot(&*table, &mut out, CAPACITY);
        let expected: &[Window] = match seq {
            0 => &[],
            2 => &a,
            4 => &b,
            other => panic!("an odd or unknown sequence number {other}"),
        };
        assert_eq!(out, expected, "a torn snapshot at sequence {seq}");
        writer.join().unwrap();
        // and after the writer is done, the reader sees B
        let seq = snapshot(&*table, &mut out, CAPACITY);
        assert_eq!((seq, &out[..]), (4, &b[..]));
    });
}
