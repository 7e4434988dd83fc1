//! Fuzz target: see `dmalab_device::fuzzing::bar_and_rings`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmalab_device::fuzzing::bar_and_rings(data));
