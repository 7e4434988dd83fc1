#!/usr/bin/env bash
# make fuzz / fuzz-smoke: runs every fuzz target for SECONDS seconds each with cargo-fuzz
# (libFuzzer) on the stable toolchain (-s none: no sanitizer, so no nightly flags), starting
# from the checked-in corpus. New inputs go to target/fuzz-corpus/<target>; a crash stops the
# run with the input in fuzz/artifacts/<target>/ (add it to fuzz/corpus/<target>/ once fixed:
# `cargo test` replays that corpus). Prints and records executions per second per target.
source "$(dirname "$0")/lib.sh"
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("${@:-vfio_stream bar_and_rings control_line rules_toml clients_and_control}")
TARGETS=(${TARGETS[@]})
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS="$CACHE/tools/cargo-fuzz"
if [ ! -x "$TOOLS/bin/cargo-fuzz" ]; then
    say "cargo install cargo-fuzz (about 2 min)"
    cargo install -q --locked cargo-fuzz@0.13.2 --root "$TOOLS" || die "cargo-fuzz install failed"
fi
export PATH="$TOOLS/bin:$PATH"
cd "$ROOT/fuzz"
say "building fuzz targets"
cargo fuzz build -s none -O >/dev/null 2>"$ROOT/target/fuzz-build.log" \
    || { cat "$ROOT/target/fuzz-build.log"; die "fuzz build failed"; }
mkdir -p "$ROOT/target/fuzz-results"
summary="$ROOT/target/fuzz-results/summary.txt"
: > "$summary"
for t in "${TARGETS[@]}"; do
    mkdir -p "$ROOT/target/fuzz-corpus/$t"
    log="$ROOT/target/fuzz-results/$t.log"
    say "fuzzing $t for ${SECONDS_EACH}s (log: $log)"
    cargo fuzz run -s none -O "$t" "$ROOT/target/fuzz-corpus/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout="${FUZZ_TIMEOUT:-20}" -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null && sleep 1; done
        kill -0 "$pid" 2>/dev/null && say "$t: $(grep -a -o '#[0-9]*.*exec/s: [0-9]*' "$log" | tail -1)"
    done
    if ! wait "$pid"; then
        tail -40 "$log"
        die "$t: crash or hang; the input is in fuzz/artifacts/$t/"
    fi
    runs=$(grep -o 'Done [0-9]* runs' "$log" | awk '{print $2}')
    secs=$(grep -o 'in [0-9]* second' "$log" | tail -1 | awk '{print $2}')
    line="$t: $runs executions in ${secs}s = $((runs / (secs > 0 ? secs : 1))) exec/s, 0 crashes"
    say "$line"
    echo "$line" >> "$summary"
done
say "summary in $summary"
