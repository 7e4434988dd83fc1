//! Fuzz target: see `dmalab_device::fuzzing::control_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmalab_device::fuzzing::control_line(data));
