#!/usr/bin/env bash
# make miri / miri-smoke: the device's unit tests under Miri (undefined behaviour in the memory
# views, the map table, the control parser, the event log, the fault rules). Tests that call a
# foreign function Miri cannot run (memfd_create, sockets) say so and are skipped; the message
# layer's socket code is covered by the sanitizers instead (make sanitize).
#   miri.sh          every unit test (about a minute once built)
#   miri.sh --smoke  the memory views and the control parser; skipped, saying so, where the
#                    machine cannot get nightly Miri
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/nightly.sh"
smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
if ! nightly_ready miri rust-src; then
    if [ $smoke = 1 ]; then
        say "miri smoke SKIPPED: this machine cannot install nightly Miri (make miri needs it)"
        exit 0
    fi
    die "nightly Miri is not available on this machine"
fi
cd "$ROOT"
# (concurrent_adds: seven threads adding rules 250 times, hours under Miri; the logic is the
# same as runtime_add_and_remove's, which runs)
filter=(-- --skip concurrent_adds)
what="every unit test"
if [ $smoke = 1 ]; then
    filter=(-- memory:: control::)
    what="smoke: the memory views and the control parser"
fi
log="$ROOT/target/miri.log"
mkdir -p "$ROOT/target"
say "Miri: the device's unit tests ($what)"
CARGO_TARGET_DIR="$ROOT/target/miri" cargo +nightly miri test -p dmalab-device --lib \
    "${filter[@]}" >"$log" 2>&1 || { tail -40 "$log"; die "Miri found a problem (log: $log)"; }
say "Miri: $(grep 'test result' "$log" | tail -1)"
