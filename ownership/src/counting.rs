//! Instructions per request, for the oracle plugin's `count=on` mode: kernel instructions from the system call that posts a
//! request to its doorbell store (the submit path), and from the doorbell to the return to user
//! mode (the complete path: waiting, the interrupt, reaping, waking, copying out). Meaningful for
//! one request at a time on one vCPU (the throughput bench's depth-1 scenario), which is how it
//! is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Where the vCPU is in a request's life.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// In user mode, or in a system call that has not rung a doorbell.
    #[default]
    Idle,
    /// In a system call since this instruction count.
    InSyscall(u64),
    /// A doorbell was rung at this count, with this many submit instructions before it.
    AfterDoorbell(u64, u64),
}

/// Samples kept at most (a bench run makes a few hundred).
const MAX_SAMPLES: usize = 100_000;

/// The counter and the samples.
#[derive(Default)]
pub struct Counter {
    executed: AtomicU64,
    phase: Mutex<Phase>,
    samples: Mutex<Vec<(u64, u64)>>,
}

impl Counter {
    /// A kernel translation block of `n` instructions ran.
    pub fn kernel_block(&self, n: u64) {
        self.executed.fetch_add(n, Ordering::Relaxed);
    }

    /// The vCPU entered the kernel through the system-call entry.
    pub fn syscall(&self) {
        let now = self.executed.load(Ordering::Relaxed);
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = Phase::InSyscall(now);
    }

    /// The driver stored to the device's registers (a doorbell, for a request).
    pub fn doorbell(&self) {
        let now = self.executed.load(Ordering::Relaxed);
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::InSyscall(start) = *p {
            *p = Phase::AfterDoorbell(now, now - start);
        }
    }

    /// A user-mode block ran: a request's system call has returned.
    pub fn user(&self) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::AfterDoorbell(at, submit) = *p {
            let complete = self.executed.load(Ordering::Relaxed) - at;
            let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() < MAX_SAMPLES {
                s.push((submit, complete));
            }
        }
        *p = Phase::Idle;
    }

    /// `{"event":"instructions",...}`: medians and means of both paths.
    pub fn summary(&self) -> String {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let median = |mut v: Vec<u64>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let mean = |v: &[u64]| v.iter().sum::<u64>() / (v.len().max(1) as u64);
        let submit: Vec<u64> = s.iter().map(|x| x.0).collect();
        let complete: Vec<u64> = s.iter().map(|x| x.1).collect();
        format!(
            "{{\"event\":\"instructions\",\"requests\":{},\"submit_median\":{},\"submit_mean\":{},\"complete_median\":{},\"complete_mean\":{}}}",
            s.len(),
            median(submit.clone()),
            mean(&submit),
            median(complete.clone()),
            mean(&complete)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_splits_at_its_doorbell() {
        let c = Counter::default();
        c.kernel_block(5); // unrelated kernel work
        c.syscall();
        c.kernel_block(100);
        c.doorbell();
        c.kernel_block(40);
        c.doorbell(); // a second register store does not restart anything
        c.kernel_block(60);
        c.user();
        // a system call without a doorbell is not a request
        c.syscall();
        c.kernel_block(7);
        c.user();
        assert_eq!(*c.samples.lock().unwrap(), vec![(100, 100)]);
        assert!(c.summary().contains("\"requests\":1,\"submit_median\":100"));
    }
}
