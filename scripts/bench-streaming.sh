#!/usr/bin/env bash
# make bench-streaming: the driver's zero-copy path with its own copy of the streaming
# abstraction and with the kernel's (kernel-patches/streaming/), on the production-like bench
# kernel with the patch, in one boot (docs/performance.md). Builds the patched bench kernel
# (incrementally, cached), the driver both ways against it, and an initramfs holding both;
# prints the kernel and initramfs paths for dmalab-bench-streaming.
# Usage: bench-streaming.sh <bench kernel build dir> <agent>
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/patched-tree.sh"
kbuild=$(cd "${1:?bench kernel build dir}" && pwd)
agent=${2:?agent binary}
export PATH="$CACHE/tools/bin:$PATH"
patch="$ROOT/kernel-patches/streaming/0001-rust-dma-add-typed-streaming-mappings.patch"
patched_tree streaming-bench "$kbuild" "$patch"
say "building the bench kernel with the streaming patch (incremental)"
in_patched bash -ec 'make -C "$1" LLVM=-19 ARCH=x86_64 -j"$(nproc)" >"$2" 2>&1' _ "$kbuild" "$PATCHED/build.log" \
    || { tail -30 "$PATCHED/build.log" >&2; die "the bench kernel does not build with the streaming patch (log: $PATCHED/build.log)"; }
out="$ROOT/target/bench-streaming"
mkdir -p "$out"
intree=$(in_patched "$ROOT/scripts/build-driver.sh" "$kbuild" "$out/kmod-intree" 2>"$out/intree.log") \
    || { cat "$out/intree.log" >&2; die "the driver does not build on the kernel's streaming module"; }
grep -q "with the tree's kernel::dma::streaming" "$out/intree.log" \
    || die "the driver did not pick up the tree's kernel::dma::streaming"
copy=$(DMALAB_STREAMING=module in_patched "$ROOT/scripts/build-driver.sh" "$kbuild" "$out/kmod-module" 2>"$out/module.log") \
    || { cat "$out/module.log" >&2; die "the driver does not build with its own streaming module"; }
initramfs=$(DMALAB_EXTRA_MODULES="dmalab-intree.ko=$intree" \
    "$ROOT/scripts/build-initramfs.sh" "$kbuild" "$agent" "$copy" "$out") \
    || die "the initramfs does not build"
echo "$PATCHED/build/arch/x86/boot/bzImage"
echo "$initramfs"
