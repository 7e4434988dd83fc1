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
