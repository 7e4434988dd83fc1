//! The map table's unmap protocol under every interleaving loom explores (`make loom`): a
//! worker takes a snapshot of the mappings for one descriptor and accesses the memory through
//! it, while the client unmaps. `MapTable::unmap` publishes a table without the range, then
//! waits (`quiesce`) until every older snapshot is gone, and only then replies, after which the
//! client may free the memory. No access may happen after the reply.
//!
//! A model of `memory.rs`'s protocol with loom's primitives (its `Weak` list is a list of the
//! retired `Arc`s, "no one else holds it" being a strong count of 1); the code itself uses std's.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Mutex, RwLock};

/// A snapshot: whether the range is in it.
struct View {
    mapped: bool,
}

struct Table {
    current: RwLock<Arc<View>>,
    retired: Mutex<Vec<Arc<View>>>,
}

impl Table {
    /// `MapTable::view`.
    fn view(&self) -> Arc<View> {
        self.current.read().unwrap().clone()
    }

    /// `MapTable::unmap`: publish, then quiesce.
    fn unmap(&self) {
        let old = std::mem::replace(
            &mut *self.current.write().unwrap(),
            Arc::new(View { mapped: false }),
        );
        self.retired.lock().unwrap().push(old);
        loop {
            let mut retired = self.retired.lock().unwrap();
            retired.retain(|v| Arc::strong_count(v) > 1);
            if retired.is_empty() {
                return;
            }
            drop(retired);
            loom::thread::yield_now();
        }
    }
}

#[test]
fn no_access_after_the_unmap_reply() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let table = Arc::new(Table {
            current: RwLock::new(Arc::new(View { mapped: true })),
            retired: Mutex::new(Vec::new()),
        });
        // the client's memory: freed after the unmap reply
        let memory = Arc::new(AtomicBool::new(true));
        let worker = {
            let (table, memory) = (table.clone(), memory.clone());
            loom::thread::spawn(move || {
                let view = table.view();
                if view.mapped {
                    // the descriptor's DMA, twice (a copy takes time)
                    assert!(memory.load(Ordering::SeqCst), "DMA into freed memory");
                    loom::thread::yield_now();
                    assert!(memory.load(Ordering::SeqCst), "DMA into freed memory");
                }
                drop(view);
            })
        };
        table.unmap();
        // the reply: the client frees the memory
        memory.store(false, Ordering::SeqCst);
        worker.join().unwrap();
    });
}
