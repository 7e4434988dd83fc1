//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz target bodies,
//! so every input a fuzzer found worth keeping, crashes included, is a regression test.

use dmalab_device::fuzzing;

#[test]
fn vfio_stream_corpus() {
    assert!(fuzzing::replay_corpus("vfio_stream", fuzzing::vfio_stream) > 0);
}

#[test]
fn bar_and_rings_corpus() {
    assert!(fuzzing::replay_corpus("bar_and_rings", fuzzing::bar_and_rings) > 0);
}

#[test]
fn control_line_corpus() {
    assert!(fuzzing::replay_corpus("control_line", fuzzing::control_line) > 0);
}

#[test]
fn rules_toml_corpus() {
    assert!(fuzzing::replay_corpus("rules_toml", fuzzing::rules_toml) > 0);
}

/// The canary check can fail: a device write nothing names is caught.
#[test]
#[should_panic(expected = "which no descriptor")]
fn the_canary_check_catches_a_stray_write() {
    fuzzing::stray_write_for_test();
}

#[test]
fn clients_and_control_corpus() {
    assert!(fuzzing::replay_corpus("clients_and_control", fuzzing::clients_and_control) > 0);
}
