//! The interrupt seam: the model says "raise vector v"; the sink decides how (an MSI-X eventfd,
//! the INTx eventfd, or a counter in a test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::registers::IrqCoalesce;

/// Where interrupts go.
pub trait InterruptSink: Send + Sync {
    /// Raises MSI-X vector `vector` (queue q uses vector q; the error vector follows the queues).
    /// Returns false when there was nowhere to deliver it (no vector or line configured).
    fn raise(&self, vector: u16) -> bool;
}

/// A sink that counts what it was asked to raise (tests, benchmarks).
#[derive(Default)]
pub struct CountingSink {
    counts: Mutex<Vec<u64>>,
    total: AtomicU64,
    raised: Condvar,
}

impl CountingSink {
    /// A new sink, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Interrupts raised on `vector` so far.
    pub fn count(&self, vector: u16) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(vector as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Blocks until `vector` has been raised at least `n` times (false after `timeout`).
    pub fn wait_for(&self, vector: u16, n: u64, timeout: Duration) -> bool {
        let c = self.counts.lock().unwrap();
        let (_c, t) = self
            .raised
            .wait_timeout_while(c, timeout, |c| {
                c.get(vector as usize).copied().unwrap_or(0) < n
            })
            .unwrap();
        !t.timed_out()
    }

    /// Interrupts raised on all vectors so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

impl InterruptSink for CountingSink {
    fn raise(&self, vector: u16) -> bool {
        let mut c = self.counts.lock().unwrap();
        if c.len() <= vector as usize {
            c.resize(vector as usize + 1, 0);
        }
        c[vector as usize] += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        self.raised.notify_all();
        true
    }
}

/// Per-queue interrupt moderation, as `REG_IRQ_COALESCE` describes it.
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: u32,
    deadline: Option<Instant>,
}

impl Coalescer {
    /// Accounts one posted completion; returns true if the interrupt is due now. `now` is asked
    /// for only when a moderation timer is to be armed: reading the clock for every completion
    /// was a measurable share of a small descriptor's cost.
    pub fn completion(&mut self, cfg: IrqCoalesce, now: impl FnOnce() -> Instant) -> bool {
        self.pending += 1;
        if self.pending >= u32::from(cfg.count().max(1)) {
            return true;
        }
        if cfg.time_us() != 0 && self.deadline.is_none() {
            self.deadline = Some(now() + Duration::from_micros(cfg.time_us().into()));
        }
        false
    }

    /// The submission ring ran empty; returns true if the interrupt is due now (time 0 means
    /// "when the ring drains").
    pub fn idle(&self, cfg: IrqCoalesce) -> bool {
        self.pending > 0 && cfg.time_us() == 0
    }

    /// When the moderation timer fires, if it is armed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The interrupt was raised (or the queue was reset): start counting afresh.
    pub fn clear(&mut self) {
        self.pending = 0;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_threshold() {
        let cfg = IrqCoalesce::new().with_count(3).with_time_us(0);
        let mut c = Coalescer::default();
        let t = Instant::now();
        assert!(!c.completion(cfg, || t));
        assert!(!c.completion(cfg, || t));
        assert!(c.completion(cfg, || t));
        c.clear();
        assert!(!c.completion(cfg, || t));
        assert!(
            c.idle(cfg),
            "time 0: the rest goes out when the ring drains"
        );
    }

    #[test]
    fn time_threshold_arms_once() {
        let cfg = IrqCoalesce::new().with_count(100).with_time_us(50);
        let mut c = Coalescer::default();
        let t = Instant::now();
        c.completion(cfg, || t);
        let d = c.deadline().unwrap();
        c.completion(cfg, || t + Duration::from_micros(10));
        assert_eq!(c.deadline(), Some(d));
        assert_eq!(d - t, Duration::from_micros(50));
        assert!(!c.idle(cfg));
    }

    #[test]
    fn zero_and_one_mean_every_completion() {
        for n in [0, 1] {
            let cfg = IrqCoalesce::new().with_count(n);
            assert!(Coalescer::default().completion(cfg, Instant::now));
        }
    }
}
