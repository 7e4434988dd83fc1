//! Fuzz target: see `dmalab_device::fuzzing::vfio_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dmalab_device::fuzzing::vfio_stream(data));
