#!/usr/bin/env bash
# make kernel-doctests: the kernel crate's doctests (the streaming patch's among them) as KUnit
# runs them. They are built only with CONFIG_KUNIT and CONFIG_RUST_KERNEL_DOCTESTS, which the
# guest's configuration leaves off, so this builds a kernel of its own: the 7.3 tree with the
# streaming patch, the guest's configuration plus those two (a full build, cached like
# `make kernel`'s), boots it once (KUnit runs the doctests at boot) and reads the results from
# the kernel log: every doctest must pass, the streaming module's among them.
# Usage: kernel-doctests.sh <kernel build dir> <agent>
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/patched-tree.sh"
kbuild=$(cd "${1:?kernel build dir}" && pwd)
agent=${2:?agent binary}
patch="$ROOT/kernel-patches/streaming/0001-rust-dma-add-typed-streaming-mappings.patch"
patched_tree streaming "$kbuild" "$patch"
fragment="$PATCHED/doctests.config"
{ cat "$ROOT/guest-kernel/dmalab.config"; printf 'CONFIG_KUNIT=y\nCONFIG_RUST_KERNEL_DOCTESTS=y\n'; } >"$fragment"
say "the patched tree with KUnit and the kernel crate's doctests (a full kernel build the first time)"
kb=$(KERNEL_SRC="$PATCHED/src" DMALAB_KERNEL_FRAGMENT="$fragment" "$ROOT/scripts/build-kernel.sh") \
    || die "the doctest kernel does not build"
out="$ROOT/target/kernel-doctests"
mkdir -p "$out"
ko=$("$ROOT/scripts/build-driver.sh" "$kb" "$out/kmod" 2>"$out/driver.log") \
    || { cat "$out/driver.log" >&2; die "the driver does not build on the doctest kernel"; }
initramfs=$("$ROOT/scripts/build-initramfs.sh" "$kb" "$agent" "$ko" "$out") || die "the initramfs does not build"
echo "$kb/arch/x86/boot/bzImage"
echo "$initramfs"
