//! Fuzz target: see `dmalab_device::fuzzing::rules_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmalab_device::fuzzing::rules_toml(data));
