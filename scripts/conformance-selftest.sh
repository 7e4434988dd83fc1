#!/usr/bin/env bash
# make conformance-selftest: proof that the conformance suite judges the abstraction. Each patch
# in conformance/selftest/ breaks one rule of the kernel's Rust DMA abstraction (its header
# says which APIs' tests must fail, and under which conditions). For each: the tree is copied
# (hard links; the patched files are real copies), patched, and its kernel rebuilt
# incrementally from a copy of the build directory, inside a mount namespace where the copies
# stand at the original paths (so make sees one changed file, not a new tree). The module is
# built there, the suite runs, and the APIs that failed must be exactly the expected ones.
# Patched builds are cached in ~/.cache/dmalab/conformance-selftest/ by the patch's hash.
# Usage: conformance-selftest.sh <kernel build dir> <agent> [patch ...]
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/patched-tree.sh"
kbuild=$(cd "${1:?kernel build dir}" && pwd)
agent=${2:?agent binary}
shift 2
patches=("$@")
[ ${#patches[@]} -gt 0 ] || patches=("$ROOT"/conformance/selftest/*.patch)
src=$(readlink -f "$kbuild/source")
export PATH="$CACHE/tools/bin:$PATH"
bin="${DMALAB_CONFORMANCE_BIN:-$ROOT/target/release/dmalab-conformance}"
[ -x "$bin" ] || die "build the harness first (cargo build --release -p dmalab-harness)"
failed=0
n=0
for p in "${patches[@]}"; do
    p=$(readlink -f "$p")
    n=$((n + 1))
    name=$(basename "$p" .patch)
    expect=$(sed -n 's/^expect-fail: *//p' "$p" | head -n 1)
    conds=$(sed -n 's/^conditions: *//p' "$p" | head -n 1)
    [ -n "$expect" ] || die "$p has no 'expect-fail:' line"
    out="$ROOT/target/selftest_$name"
    say "selftest $n/${#patches[@]}: $name (must fail: $expect)"
    # the patch's own header (above its `---` line) is not part of the diff; `requires:` names
    # patches (from the repository's root) it applies on top of
    requires=()
    for r in $(sed -n '1,/^---$/s/^requires: *//p' "$p"); do requires+=("$ROOT/$r"); done
    patched_tree "selftest-$name" "$kbuild" "${requires[@]}" "$p"
    mkdir -p "$out"
    say "  rebuilding the kernel (incremental) and the conformance module"
    in_patched bash -ec '
        make -s -C "$1" LLVM=-19 ARCH=x86_64 -j"$(nproc)" >"$2/kernel.log" 2>&1
        ko=$("$3/scripts/build-conformance.sh" "$1" "$2")
        "$3/scripts/build-initramfs.sh" "$1" "$4" "$ko" "$2" >/dev/null
    ' _ "$kbuild" "$out" "$ROOT" "$agent" \
        || { tail -20 "$out/kernel.log" >&2; die "$name: the patched kernel or module does not build (log: $out/kernel.log)"; }
    "$bin" --kbuild "$PATCHED/build" --prebuilt --run-name "selftest_$name" \
        ${conds:+--conditions "$conds"} >"$out/report.txt" 2>"$out/stderr.log" || true
    got=$(grep -E '^  (FAIL|\[)' "$out/report.txt" | sed -n 's/^  FAIL \([a-z_]*\) .*/\1/p' | sort -u | tr '\n' ' ' | sed 's/ $//')
    unclean=$(grep -c 'was not clean\|did not reach its end' "$out/report.txt" || true)
    want=$(tr ' ' '\n' <<<"$expect" | sort -u | tr '\n' ' ' | sed 's/ $//')
    if [ "$got" = "$want" ]; then
        say "  caught: the tests of $got failed, and no other$( [ "$unclean" = 0 ] || echo " ($unclean unclean run(s))")"
    else
        say "  WRONG: failed [$got], expected [$want] (report: $out/report.txt)"
        failed=$((failed + 1))
    fi
done
[ $failed = 0 ] || die "$failed of ${#patches[@]} abstraction-breaking patches were not caught as they should be"
say "all ${#patches[@]} abstraction-breaking patches caught by exactly the tests they break"
