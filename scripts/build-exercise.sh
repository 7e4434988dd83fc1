#!/usr/bin/env bash
# Builds one tutorial module (a skeleton, a solution, or your copy of one) against the guest
# kernel. Usage: build-exercise.sh <kernel build dir> <module dir>; prints the path of its .ko.
# Kbuild writes objects next to the sources, so the module is built from a copy under target/
# at the depth its `include!("../../../abi/regs.rs")` expects.
source "$(dirname "$0")/lib.sh"
kbuild=${1:?usage: build-exercise.sh <kernel build dir> <module dir>}
src=$(cd "${2:?module dir}" && pwd) || die "no module directory $2"
[ -f "$src/Kbuild" ] || die "$src has no Kbuild file: is it a tutorial module directory?"
[ -f "$kbuild/Module.symvers" ] || die "$kbuild is not a built kernel tree (run 'make kernel')"
export PATH="$CACHE/tools/bin:$PATH"
key=$(printf '%s' "$src" | md5sum | cut -c1-12)
work="$ROOT/target/exercises/$key"
mod="$work/exercises/build/$(basename "$src")"
mkdir -p "$mod" "$work/abi"
# two builds of one module directory at once (tests run side by side) take turns
exec 9>"$work.lock"
flock 9
rm -f "$mod"/*.rs
cp "$src"/Kbuild "$src"/*.rs "$mod/"
cp "$ROOT/abi/regs.rs" "$work/abi/"
# step 9 uses the reference driver's streaming abstraction as it is (`#[path]` to it)
mkdir -p "$work/guest-driver/module"
cp "$ROOT/guest-driver/module/streaming.rs" "$work/guest-driver/module/"
run_logged "build of $(basename "$(dirname "$src")")/$(basename "$src")" "$mod/build.log" \
    make -C "$kbuild" M="$mod" LLVM=-19 ARCH=x86_64 modules
echo "$mod/dmalab.ko"
