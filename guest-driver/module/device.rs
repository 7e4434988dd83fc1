// SPDX-License-Identifier: GPL-2.0

//! The device a binding drives, apart from its queues: BAR0, whether it may still be touched,
//! its error state and its counters.

use kernel::{
    new_mutex, pci,
    prelude::*,
    sync::{
        atomic::{Acquire, Atomic, Relaxed, Release},
        Mutex,
    },
};

use crate::abi::{self, DeviceInfo};
use crate::zerocopy::MapGate;

/// What a bound device is, apart from its queues: its registers, whether it may still be
/// touched, its error state and counters. Every queue's request path works on it (`queue.rs`);
/// [`crate::state::DevState`] adds the queues.
///
/// Who may touch the device: once `dead` is set (teardown decided to halt the device, or the
/// device stopped answering), nothing writes a register any more. Every path that writes one
/// checks `dead` first, in a place teardown waits out before it resets the device: interrupt
/// handlers at entry (teardown synchronizes every vector), submitters and timeouts under their
/// queue's ring lock (teardown takes each ring lock once), device resets under `ctrl` (teardown
/// holds it across its own reset). See `DeviceHalt` in `guards.rs`.
#[pin_data]
pub(crate) struct Device {
    pub(crate) bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
    pub(crate) info: DeviceInfo,
    /// Set at unbind or when the device stops answering: everything fails fast with ENODEV.
    pub(crate) dead: Atomic<bool>,
    /// The device stopped answering (a register read all ones: surprise removal): not even
    /// teardown writes to it.
    pub(crate) gone: Atomic<bool>,
    /// Serializes device-wide register sequences (device reset and reprogramming) with
    /// teardown's reset.
    #[pin]
    pub(crate) ctrl: Mutex<()>,
    /// The device reported a fatal error: the next waiter to leave resets it.
    pub(crate) needs_reset: Atomic<bool>,
    pub(crate) error_irqs: Atomic<u64>,
    pub(crate) error_bits: Atomic<u32>,
    pub(crate) device_resets: Atomic<u64>,
    /// Keeps the device bound while requests hold zero-copy mappings for it.
    #[pin]
    pub(crate) map_gate: MapGate,
    pub(crate) zero_copy: Atomic<u64>,
    pub(crate) bounced: Atomic<u64>,
    pub(crate) zero_copy_fallbacks: Atomic<u64>,
}

impl Device {
    /// A device whose BAR is `bar`, described by `info`: alive, no error seen, nothing counted
    /// yet.
    pub(crate) fn new(
        bar: pci::DevresBar<{ abi::BAR0_SIZE }>,
        info: DeviceInfo,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Device {
            bar,
            info,
            dead: Atomic::new(false),
            gone: Atomic::new(false),
            ctrl <- new_mutex!(()),
            needs_reset: Atomic::new(false),
            error_irqs: Atomic::new(0),
            error_bits: Atomic::new(0u32),
            device_resets: Atomic::new(0),
            map_gate <- MapGate::new(),
            zero_copy: Atomic::new(0),
            bounced: Atomic::new(0),
            zero_copy_fallbacks: Atomic::new(0),
        })
    }

    /// Set at unbind or when the device stopped answering: everything fails fast with ENODEV.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Acquire)
    }

    /// From now on nothing writes a device register (see the type's documentation).
    pub(crate) fn mark_dead(&self) {
        self.dead.store(true, Release);
    }

    /// The device stopped answering: no register access at all from now on.
    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Release);
        self.mark_dead();
    }
}

/// `*a = f(*a)`, atomically (the kernel's `Atomic` has no fetch_or/fetch_and).
pub(crate) fn atomic_update(a: &Atomic<u32>, f: impl Fn(u32) -> u32) {
    let mut old = a.load(Relaxed);
    while let Err(cur) = a.cmpxchg(old, f(old), Relaxed) {
        old = cur;
    }
}
