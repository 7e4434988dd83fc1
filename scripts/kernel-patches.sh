#!/usr/bin/env bash
# make kernel-patches: the streaming abstraction (guest-driver/module/streaming.rs) as a kernel
# patch (kernel-patches/streaming/). Regenerates the patch from the one source and the tree,
# requires it to equal the committed one (BLESS=1 writes it instead), checkpatch.pl --strict
# clean, the patched kernel to build without a warning, and its rustdoc to build.
# Usage: kernel-patches.sh <kernel build dir> [--check-only]
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/patched-tree.sh"
kbuild=$(cd "${1:?kernel build dir}" && pwd)
src=$(readlink -f "$kbuild/source")
export PATH="$CACHE/tools/bin:$PATH"
patch="$ROOT/kernel-patches/streaming/0001-rust-dma-add-typed-streaming-mappings.patch"
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
python3 "$ROOT/scripts/streaming-patch.py" "$src" "$fresh"
if [ "${BLESS:-}" = 1 ]; then
    cp "$fresh" "$patch"
    say "wrote $patch"
elif ! cmp -s "$fresh" "$patch"; then
    diff -u "$patch" "$fresh" | head -20 >&2
    die "kernel-patches/streaming is not made from guest-driver/module/streaming.rs: run BLESS=1 make kernel-patches"
fi
report=$(perl "$src/scripts/checkpatch.pl" --no-tree --strict "$patch" 2>&1 || true)
grep -q '^total: 0 errors, 0 warnings, 0 checks' <<<"$report" \
    || { echo "$report" >&2; die "checkpatch.pl --strict is not clean on $(basename "$patch")"; }
say "streaming patch: made from its source, checkpatch.pl --strict clean"
[ "${2:-}" = --check-only ] && exit 0
patched_tree streaming "$kbuild" "$patch"
say "building the kernel with the streaming patch (incremental), then its rustdoc"
log="$PATCHED/build.log"
in_patched bash -ec 'make -C "$1" LLVM=-19 ARCH=x86_64 -j"$(nproc)" >"$2" 2>&1' _ "$kbuild" "$log" \
    || { tail -30 "$log" >&2; die "the kernel does not build with the streaming patch (log: $log)"; }
if grep -q 'dma/streaming.rs' "$log" && grep -A3 '^warning' "$log" | grep -q 'dma/streaming.rs'; then
    grep -B2 -A8 '^warning' "$log" >&2
    die "rust/kernel/dma/streaming.rs builds with warnings (log: $log)"
fi
in_patched bash -ec 'make -C "$1" LLVM=-19 ARCH=x86_64 rustdoc >"$2" 2>&1' _ "$kbuild" "$PATCHED/rustdoc.log" \
    || { tail -30 "$PATCHED/rustdoc.log" >&2; die "rustdoc fails with the streaming patch (log: $PATCHED/rustdoc.log)"; }
grep -q 'warning' "$PATCHED/rustdoc.log" && grep -A6 'warning' "$PATCHED/rustdoc.log" | grep -q streaming \
    && { grep -A8 'warning' "$PATCHED/rustdoc.log" >&2; die "rustdoc warns about the streaming module"; }
say "streaming patch: the kernel builds with it, rustdoc too (docs in $PATCHED/build/Documentation/output/rust/rustdoc/kernel/dma/streaming/)"

# The reference driver on that kernel, with the kernel's streaming module instead of its copy,
# graded on the contract's transfers (zero-copy, every mapping bounced, the streaming self-test).
ko=$(in_patched "$ROOT/scripts/build-driver.sh" "$kbuild" "$PATCHED/kmod" 2>"$PATCHED/driver.log") \
    || { cat "$PATCHED/driver.log" >&2; die "the driver does not build on the patched kernel"; }
grep -q "with the tree's kernel::dma::streaming" "$PATCHED/driver.log" \
    || die "the driver did not pick up the tree's kernel::dma::streaming"
say "grading the reference driver on it (dmalab check --level 2: transfers, zero-copy, bounced)"
"$ROOT/target/release/dmalab-check" --level 2 --kernel "$PATCHED/build/arch/x86/boot/bzImage" \
    --driver "$ko" --run-name streaming_intree \
    || die "the reference driver fails on the kernel's streaming module (card above; logs target/e2e/streaming_intree_*)"

# The conformance suite on that kernel: every API, the streaming one included.
out="$ROOT/target/conformance-streaming"
mkdir -p "$out"
in_patched bash -ec 'ko=$("$1/scripts/build-conformance.sh" "$2" "$3"); "$1/scripts/build-initramfs.sh" "$2" "$4" "$ko" "$3" >/dev/null' \
    _ "$ROOT" "$kbuild" "$out" "$(cat "$ROOT/target/paths/agent")" \
    || die "the conformance module does not build on the patched kernel"
grep -q '"streaming"' <(grep -o '"built":\[[^]]*\]' "$out/apis.json") \
    || die "the streaming API's conformance tests do not build on the patched kernel: $(cat "$out/apis.json")"
say "the conformance suite on it (streaming included)"
"$ROOT/target/release/dmalab-conformance" --kbuild "$PATCHED/build" --prebuilt \
    --run-name conformance-streaming --conditions "gentle;strict;swiotlb" \
    || die "the conformance suite fails on the kernel with the streaming patch (report: $out/report.txt)"
echo "$PATCHED/build"
