#!/usr/bin/env bash
# make check-soak [RUNS=10] [AT_ONCE=2] [DRIVER=path/to/dmalab.ko]: grades a driver (default
# the reference) with every check of `dmalab check`, RUNS times, AT_ONCE gradings at a time, so
# that the machine is loaded the way a shared CI machine is. A correct driver must pass every
# run: a failure here is a flaky check or a real race, never noise to be retried away. Each
# run's card is kept in target/soak/run-N.txt; the summary names every failed check.
source "$(dirname "$0")/lib.sh"

runs=${RUNS:-10}
at_once=${AT_ONCE:-2}
driver=${DRIVER:-$ROOT/target/kmod/guest-driver/module/dmalab.ko}
check=$ROOT/target/release/dmalab-check
out=$ROOT/target/soak
[ -x "$check" ] || die "$check is missing (make artifacts)"
[ -f "$driver" ] || die "no driver at $driver"
rm -rf "$out"
mkdir -p "$out"

started=$(date +%s)
say "grading $driver $runs times, $at_once at once (cards in target/soak/)"
pids=()
for n in $(seq 1 "$runs"); do
    # the machine runs as many VMs as it has cores (harness/src/slots.rs): the gradings share them
    ( "$check" --driver "$driver" --run-name "soak$n" >"$out/run-$n.txt" 2>"$out/run-$n.err"
      echo $? >"$out/run-$n.rc" ) &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$at_once" ]; then
        wait "${pids[0]}"
        pids=("${pids[@]:1}")
        say "$(ls "$out"/*.rc | wc -l)/$runs gradings done"
    fi
done
wait
failed=0
for n in $(seq 1 "$runs"); do
    if [ "$(cat "$out/run-$n.rc")" != 0 ]; then
        failed=$((failed + 1))
        echo "run $n failed:"
        grep "FAIL" "$out/run-$n.txt" | sed 's/^/    /'
    fi
done
passed=$(grep -ho "[0-9]*/[0-9]* checks passed" "$out"/run-*.txt | head -n 1)
echo "== check-soak: $((runs - failed))/$runs gradings passed every check ($passed each), $at_once at once, $(( $(date +%s) - started )) s"
[ "$failed" = 0 ]
