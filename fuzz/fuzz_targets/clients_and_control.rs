//! Fuzz target: see `dmalab_device::fuzzing::clients_and_control`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmalab_device::fuzzing::clients_and_control(data));
