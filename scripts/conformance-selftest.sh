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
    key=$(cat "$p" "$kbuild/.config" | sha256sum | cut -c1-12)
    work="$CACHE/conformance-selftest/$name-$key"
    out="$ROOT/target/selftest_$name"
    say "selftest $n/${#patches[@]}: $name (must fail: $expect)"
    if [ ! -f "$work/.built" ]; then
        rm -rf "$work"
        mkdir -p "$work"
        say "  copying the tree and its build directory"
        cp -al "$src" "$work/src"
        # the files the patch changes become real copies before it touches them
        for f in $(sed -n 's|^+++ b/||p' "$p"); do
            cp --remove-destination "$src/$f" "$work/src/$f"
        done
        (cd "$work/src" && sed -n '/^---$/,$p' "$p" | tail -n +2 | patch -p1 --quiet) \
            || die "$p does not apply to $src"
        cp -a "$kbuild" "$work/build"
        rm -f "$work/build/source"
        ln -s "$src" "$work/build/source"
    fi
    mkdir -p "$out"
    say "  rebuilding the kernel (incremental) and the conformance module"
    unshare -m --propagation private bash -ec '
        mount --bind "$1" "$2"
        mount --bind "$3" "$4"
        make -s -C "$4" LLVM=-19 ARCH=x86_64 -j"$(nproc)" >"$5/kernel.log" 2>&1
        ko=$("$6/scripts/build-conformance.sh" "$4" "$5")
        "$6/scripts/build-initramfs.sh" "$4" "$7" "$ko" "$5" >/dev/null
    ' _ "$work/src" "$src" "$work/build" "$kbuild" "$out" "$ROOT" "$agent" \
        || { tail -20 "$out/kernel.log" >&2; die "$name: the patched kernel or module does not build (log: $out/kernel.log)"; }
    touch "$work/.built"
    "$bin" --kbuild "$work/build" --prebuilt --run-name "selftest_$name" \
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
