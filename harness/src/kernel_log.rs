//! What in the guest's kernel log means the driver misbehaved.

/// Lines of the console that report a kernel problem: oops, BUG, WARN, hung task, lockdep,
/// panic, DMA-API debug complaints.
pub fn problems(console: &str) -> Vec<String> {
    const MARKERS: &[&str] = &[
        "Oops",
        "BUG:",
        "WARNING:",
        "Call Trace:",
        "blocked for more than",
        "hung_task",
        "possible circular locking",
        "possible recursive locking",
        "inconsistent lock state",
        "possible irq lock inversion",
        "suspicious RCU usage",
        "Kernel panic",
        "DMA-API: dmalab",
        "DMA-API: device driver",
        // a report on a device no driver is bound to any more (at unbind): the bus's name
        "DMA-API: pci ",
        "general protection fault",
        "rcu_sched self-detected stall",
        "rcu: INFO",
    ];
    console
        .lines()
        .filter(|l| !l.starts_with(dmalab_report::PREFIX))
        .filter(|l| MARKERS.iter().any(|m| l.contains(m)))
        .map(|l| l.trim_end().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_oops_and_warnings_but_not_reports() {
        let log = "[ 1.0] dmalab 0000:01:00.0: bound\n[ 2.0] WARNING: CPU: 0 PID: 1 at foo\n\
                   @@DMALAB {\"kind\":\"error\",\"error\":\"WARNING: in a report\"}\n[ 3.0] BUG: kernel NULL pointer";
        let p = problems(log);
        assert_eq!(p.len(), 2);
        assert!(p[0].contains("WARNING"));
        assert!(p[1].contains("BUG"));
        assert!(problems("[ 1.0] all fine\n").is_empty());
        // DMA-API debug names the bus, not the driver, once the driver has unbound
        let unbound = "[ 2.2] DMA-API: pci 0000:01:00.0: device driver has pending DMA allocations while released from device [count=1]\n\
                       [ 0.1] DMA-API: preallocated 65536 debug entries\n";
        assert_eq!(problems(unbound).len(), 1);
        let benign = "[0.0] rcu: \tRCU lockdep checking is enabled.\n[0.4] DMA-API: preallocated 65536 debug entries\n";
        assert!(problems(benign).is_empty());
        assert_eq!(
            problems(
                "[5.0] DMA-API: dmalab 0000:01:00.0: device driver has pending DMA allocations\n"
            )
            .len(),
            1
        );
    }
}
