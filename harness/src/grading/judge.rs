//! What the checks are made of: a clean run, verified transfers, a failure's reason in the
//! user's terms (the errno's likely meaning, what the kernel log said about the driver).

use dmalab_report::Xfer;

use super::Graded;
use crate::vm::Run;

/// Everything `Run::assert_clean` checks, as a result instead of a panic.
pub fn clean(r: &Run) -> Graded {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.assert_clean())).map_err(|e| {
        // the message's first line says what, the next one names the first instance
        e.downcast_ref::<String>()
            .map(|s| {
                let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
                let what = lines.next().unwrap_or("");
                match lines.next() {
                    Some(first) if !first.starts_with("logs kept") => format!("{what} {first}"),
                    _ => what.to_string(),
                }
            })
            .unwrap_or_else(|| "the run was not clean".into())
    })
}

/// `Ok` when `cond` holds, else the reason.
pub fn ensure(cond: bool, why: impl Into<String>) -> Graded {
    if cond {
        Ok(())
    } else {
        Err(why.into())
    }
}

/// Every transfer the agent reported, at least `min` of them, submitted, completed OK and
/// verified byte for byte.
pub fn all_verified(r: &Run, min: usize) -> Graded {
    verified_among(r, r.all::<Xfer>(), min)
}

/// The kernel's lines about the dmalab device or driver that say something went wrong (a probe
/// that failed, a `dev_err!`), for a failure's reason.
pub fn driver_complaints(r: &Run) -> String {
    let lines: Vec<&str> = r
        .console
        .lines()
        .filter(|l| !l.contains(dmalab_report::PREFIX))
        .filter(|l| l.contains("dmalab"))
        .filter(|l| {
            ["fail", "error", "not ", "TODO", "refus"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(|l| l.split_once("] ").map_or(l, |(_, m)| m).trim())
        .take(2)
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the kernel log says: {}", lines.join(" / "))
    }
}

/// An errno by name, with what it most likely means from a tutorial module: ` (ETIMEDOUT:
/// DONE or a completion never came; ...)`, ` (EFAULT)`; empty for an errno without a name here.
pub fn errno_hint(errno: i32) -> String {
    let hint = match errno {
        libc::ENOSYS => "a TODO of the skeleton still returns its stub",
        libc::ENODEV => "the device or its buffers are gone, or were never set up",
        libc::ETIMEDOUT => "DONE or a completion never came; was the transfer started?",
        libc::EINVAL => "the driver refused the request",
        libc::EBUSY => "the driver ran out of DMA memory for the request",
        libc::EIO => "the driver failed the request; with a status, the device did",
        libc::ENOTTY => "the driver does not know this ioctl",
        _ => "",
    };
    match (errno_name(errno), hint) {
        (None, _) => String::new(),
        (Some(name), "") => format!(" ({name})"),
        (Some(name), hint) => format!(" ({name}: {hint})"),
    }
}

/// The name of an errno the driver may return (`EIO`), if it is a common one.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return None,
    })
}

/// As [`all_verified`], for the transfers of one scenario.
pub fn all_verified_in(r: &Run, scenario: &str, min: usize) -> Graded {
    let x = r
        .all::<Xfer>()
        .into_iter()
        .filter(|x| x.scenario == scenario);
    verified_among(r, x.collect(), min)
}

/// What the device itself said went wrong that a driver caused, for a failure's reason: the
/// first of its error events that nothing explains (not an injected fault, not a request the
/// agent made bad on purpose): a descriptor refused with the field and the address it named,
/// DMA while bus mastering is off, a ring unmapped while enabled.
pub fn device_account(r: &Run) -> String {
    let errors = r.unexplained_device_errors();
    let off = errors
        .iter()
        .any(|e| e.what.contains(dmalab_device::eventlog::BUS_MASTER_OFF));
    if off {
        format!(
            "; the device says: {} (the driver must enable it before it gives the device an address: pci_set_master, set_master())",
            dmalab_device::eventlog::BUS_MASTER_OFF
        )
    } else if let Some(e) = errors.first() {
        format!("; the device says: {}", e.what)
    } else {
        String::new()
    }
}

/// A completion status as the datasheet names it: `4 (DMA_FAULT)`.
pub fn status_name(status: u32) -> String {
    match u16::try_from(status)
        .ok()
        .and_then(dmalab_abi::Status::from_raw)
    {
        Some(s) => format!("{status} ({})", s.name()),
        None => status.to_string(),
    }
}

/// What the device's log says about the request `bad` failed on, where it explains a typical
/// driver mistake the errno cannot: the result taken before the device said DONE (direct
/// block), a descriptor the device never fetched (the doorbell), a completion the device wrote
/// on the completion ring's next pass that the driver missed or took for an old one (the phase
/// bit). Empty when it explains nothing. The agent stops at a scenario's first failure, so the
/// request is the last one the device saw on its queue.
pub fn device_story(r: &Run, bad: &Xfer) -> String {
    use dmalab_device::eventlog::Event;
    let events: Vec<&Event> = r.events.iter().map(|rec| &rec.event).collect();
    let direct = dmalab_abi::DIRECT_QUEUE;
    let q = u16::from(bad.queue);
    let on_ring = events
        .iter()
        .any(|e| matches!(e, Event::Fetch { queue, .. } if *queue == q));
    let on_direct = events
        .iter()
        .any(|e| matches!(e, Event::Fetch { queue, .. } if *queue == direct));
    if !on_ring && on_direct {
        // the direct block: after the device completed the last transfer, did the driver read
        // DMA_STATUS (and so see DONE) before it took the result?
        let Some(last) = events
            .iter()
            .rposition(|e| matches!(e, Event::Fetch { queue, .. } if *queue == direct))
        else {
            return String::new();
        };
        let done = events[last..]
            .iter()
            .position(|e| matches!(e, Event::Complete { queue, .. } if *queue == direct))
            .map(|i| last + i);
        let status_read_after = |from: usize| {
            events[from..].iter().any(|e| {
                matches!(e, Event::BarRead { offset } if *offset == dmalab_abi::REG_DMA_STATUS as u64)
            })
        };
        let seen = done.is_some_and(status_read_after);
        if !seen && bad.status == 0 {
            return "; the device's log: the driver's last DMA_STATUS read came before the device set DONE, so it took the result of a transfer still running (poll DMA_STATUS until DONE; docs/tutorial/02-direct-dma.md#the-transfer)".into();
        }
        return String::new();
    }
    if bad.errno == 0 {
        return String::new();
    }
    if !on_ring {
        return format!(
            "; the device's log: it fetched no descriptor from queue {q}'s submission ring: the SQ_TAIL doorbell must move past the descriptor's slot, since the device reads the slots from its head up to the tail the driver writes (docs/tutorial/03-rings.md#posting)"
        );
    }
    let Some(last) = events
        .iter()
        .rposition(|e| matches!(e, Event::Fetch { queue, .. } if *queue == q))
    else {
        return String::new();
    };
    let Event::Fetch { tag, .. } = events[last] else {
        return String::new();
    };
    let completion = events[last..].iter().find_map(|e| match e {
        Event::Complete {
            queue,
            tag: t,
            index,
            status,
            phase,
            ..
        } if *queue == q && t == tag => Some((*index, *status, *phase)),
        _ => None,
    });
    match completion {
        Some((index, 0, false)) => format!(
            "; the device's log: it completed the request (tag {tag}) with status OK at completion slot {index}, phase 0: on the completion ring's second pass (and every other) a new completion's phase bit is 0, so a driver that keeps expecting 1 after cq_head wraps to 0 takes the first pass's old completions for new ones, or never sees the new ones (docs/tutorial/03-rings.md#the-phase-bit)"
        ),
        _ => String::new(),
    }
}

/// One failed transfer in the user's terms: the request, the errno and status by name, whether
/// the bytes were right, and what the device's log says about it.
fn describe(r: &Run, bad: &Xfer) -> String {
    format!(
        "{} of {} bytes on queue {}: errno {}{}, status {}, {}{}{}{}",
        bad.op,
        bad.len,
        bad.queue,
        bad.errno,
        errno_hint(bad.errno),
        status_name(bad.status),
        if bad.verified {
            "the bytes were right"
        } else {
            "the bytes were not right"
        },
        if bad.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", bad.detail.trim())
        },
        device_account(r),
        device_story(r, bad)
    )
}

fn verified_among(r: &Run, x: Vec<&Xfer>, min: usize) -> Graded {
    if let Some(bad) = x.iter().find(|x| !x.ok()) {
        return Err(describe(r, bad));
    }
    if x.len() >= min {
        return Ok(());
    }
    // too few: most likely the agent stopped at a failure in an earlier scenario
    match r.all::<Xfer>().into_iter().find(|x| !x.ok()) {
        Some(bad) => Err(format!(
            "{} transfers reported, expected {min}: the agent stopped at an earlier failure: {} in {}",
            x.len(),
            describe(r, bad),
            bad.scenario
        )),
        None => Err(format!(
            "{} transfers reported, expected {min} (the agent stops at the first failure){}",
            x.len(),
            driver_complaints(r)
        )),
    }
}

/// kmemleak's verdict on a run that ended with the `kmemleak` scenario.
pub fn leaks(r: &Run) -> Graded {
    match r.all::<dmalab_report::Leaks>().first() {
        None => Err("kmemleak was not read".into()),
        Some(l) => match l.suspects {
            None => Err("kmemleak is off in this kernel (boot with kmemleak=on)".into()),
            Some(0) => Ok(()),
            Some(n) => Err(format!(
                "{n} unreferenced object(s); the first: {}",
                l.first
            )),
        },
    }
}
