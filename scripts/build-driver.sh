#!/usr/bin/env bash
# make driver: the Rust kernel module, built out of tree against the guest kernel.
# Usage: build-driver.sh <kernel build dir> [work dir, default target/kmod]; prints the path of
# dmalab.ko.
source "$(dirname "$0")/lib.sh"
kbuild=${1:?usage: build-driver.sh <kernel build dir>}
[ -f "$kbuild/Module.symvers" ] || die "$kbuild is not a built kernel tree (run 'make kernel')"
export PATH="$CACHE/tools/bin:$PATH"
# Kbuild writes its objects next to the sources: build a copy under target/ that keeps the
# relative path to abi/regs.rs, so the repository stays clean.
work="${2:-$ROOT/target/kmod}"
mkdir -p "$work/guest-driver/module" "$work/abi"
# Every source file of the module (dmalab.rs is the crate root; rustc finds its `mod`s).
rm -f "$work"/guest-driver/module/*.rs
cp "$ROOT"/guest-driver/module/Kbuild "$ROOT"/guest-driver/module/*.rs "$work/guest-driver/module/"
cp "$ROOT/abi/regs.rs" "$work/abi/"
cfg=""
# DMALAB_STREAMING=module builds the driver's own copy even so (`make bench-streaming` compares
# the two on one kernel)
if [ -f "$kbuild/source/rust/kernel/dma/streaming.rs" ] && [ "${DMALAB_STREAMING:-}" != module ]; then
    # the tree has the streaming abstraction (kernel-patches/streaming/): use the kernel's
    cfg="--cfg kernel_dma_streaming"
    say "building the dmalab kernel module (with the tree's kernel::dma::streaming)"
else
    say "building the dmalab kernel module"
fi
run_logged "kernel module build" "$work/build.log" \
    make -C "$kbuild" M="$work/guest-driver/module" LLVM=-19 ARCH=x86_64 DMALAB_CFG="$cfg" modules
echo "$work/guest-driver/module/dmalab.ko"
