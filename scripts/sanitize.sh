#!/usr/bin/env bash
# make sanitize: the device's tests (unit, model, the vfio-user server over real sockets with
# fd passing, the map races, unsealed backings) with AddressSanitizer, then with
# ThreadSanitizer (std rebuilt instrumented, -Zbuild-std). The integration tests start the
# server binary, which is built with the same sanitizer, so its reports count too (they go to
# target/sanitize/<name>.*). Guest-memory races are by design and suppressed
# (scripts/tsan.supp says why); anything else fails the run.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/nightly.sh"
nightly_ready rust-src || die "the nightly toolchain with rust-src is not available"
cd "$ROOT"
out="$ROOT/target/sanitize"
rm -rf "$out"
mkdir -p "$out"
for san in address thread; do
    extra=()
    opts=""
    if [ $san = thread ]; then
        extra=(-Zbuild-std)
        export TSAN_OPTIONS="suppressions=$ROOT/scripts/tsan.supp halt_on_error=0 log_path=$out/tsan"
    else
        export ASAN_OPTIONS="log_path=$out/asan detect_leaks=0"
    fi
    say "$san sanitizer: building and running the device's tests"
    log="$out/$san.log"
    RUSTFLAGS="-Zsanitizer=$san" CARGO_TARGET_DIR="$ROOT/target/$san-san" \
        cargo +nightly test -p dmalab-device --tests --target x86_64-unknown-linux-gnu "${extra[@]}" \
        >"$log" 2>&1 || { tail -40 "$log"; die "$san sanitizer: tests failed (log: $log)"; }
    passed=$(grep -o 'test result: ok. [0-9]* passed' "$log" | awk '{s+=$4} END {print s}')
    reports=$(cat "$out"/*san.* 2>/dev/null | grep -c "^SUMMARY" || true)
    say "$san sanitizer: $passed tests passed, $reports reports"
    if [ "$reports" != 0 ]; then
        grep -h "^SUMMARY" "$out"/*san.* | sort | uniq -c
        die "$san sanitizer: $reports reports (in $out)"
    fi
    unset TSAN_OPTIONS ASAN_OPTIONS
done

# SANITIZE_E2E=1: then the e2e suites that drive the server hardest (transfers, the hostile
# guest, unbind under load; real QEMU, real guest) with the server built instrumented in
# release (a debug TSan server is too slow for the suites' timeouts), its reports collected.
[ "${SANITIZE_E2E:-}" = 1 ] || exit 0
for san in address thread; do
    extra=()
    [ $san = thread ] && extra=(-Zbuild-std)
    say "$san sanitizer: building the release server"
    dir="$ROOT/target/$san-san-release"
    RUSTFLAGS="-Zsanitizer=$san" CARGO_TARGET_DIR="$dir" \
        cargo +nightly build --release -p dmalab-device --target x86_64-unknown-linux-gnu "${extra[@]}" \
        >"$out/$san-e2e-build.log" 2>&1 || die "$san sanitizer: the server does not build (log: $out/$san-e2e-build.log)"
    if [ $san = thread ]; then
        export TSAN_OPTIONS="suppressions=$ROOT/scripts/tsan.supp halt_on_error=0 log_path=$out/e2e-tsan"
    else
        export ASAN_OPTIONS="log_path=$out/e2e-asan detect_leaks=0"
    fi
    say "$san sanitizer: the e2e transfer, hostile-guest and unbind suites"
    log="$out/$san-e2e.log"
    DMALAB_DEVICE="$dir/x86_64-unknown-linux-gnu/release/dmalab-device" \
        cargo test --release -p dmalab-harness --test e2e -- transfer hostile unbind \
        >"$log" 2>&1 || { tail -40 "$log"; die "$san sanitizer: e2e tests failed (log: $log)"; }
    passed=$(grep -o 'test result: ok. [0-9]* passed' "$log" | awk '{s+=$4} END {print s}')
    reports=$(cat "$out"/e2e-"${san:0:1}"san.* 2>/dev/null | grep -c "^SUMMARY" || true)
    say "$san sanitizer: $passed e2e tests passed, $reports reports"
    [ "$reports" = 0 ] || die "$san sanitizer: $reports reports (in $out)"
    unset TSAN_OPTIONS ASAN_OPTIONS
done
