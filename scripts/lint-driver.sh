#!/usr/bin/env bash
# The kernel module's own lint: the kernel's rustfmt settings and a CLIPPY=1 build with no warnings.
# Usage: lint-driver.sh <kernel build dir>
source "$(dirname "$0")/lib.sh"
kbuild=${1:?kernel build dir}
# rustfmt follows the crate root's `mod` declarations into every file of the module.
src=("$ROOT"/guest-driver/module/*.rs)
rustfmt --check --edition 2021 --config-path "$kbuild/source/.rustfmt.toml" "${src[@]}" \
    || die "guest-driver/module/*.rs are not formatted (rustfmt --edition 2021 --config-path <kernel>/.rustfmt.toml)"
"$ROOT/scripts/build-driver.sh" "$kbuild" >/dev/null
touch "$ROOT"/target/kmod/guest-driver/module/*.rs
export PATH="$CACHE/tools/bin:$PATH"
out=$(make -s -C "$kbuild" M="$ROOT/target/kmod/guest-driver/module" LLVM=-19 ARCH=x86_64 CLIPPY=1 modules 2>&1) \
    || { echo "$out" >&2; die "clippy build of the kernel module failed"; }
if grep -q "warning" <<<"$out"; then
    echo "$out" >&2
    die "the kernel module has clippy warnings"
fi
say "kernel module: rustfmt and clippy clean"

# The conformance module (conformance/module/), with every API's tests: from its build copy,
# which has abi/regs.rs where its `include!` expects it.
cmod="$ROOT/target/conformance-lint"
"$ROOT/scripts/build-conformance.sh" "$kbuild" "$cmod" >/dev/null
bdir="$cmod/build/conformance/module"
for f in "$ROOT"/conformance/module/*.rs; do
    rustfmt --check --edition 2021 --config-path "$kbuild/source/.rustfmt.toml" "$bdir/$(basename "$f")" >/dev/null \
        || die "conformance/module/$(basename "$f") is not formatted (rustfmt --edition 2021 --config-path <kernel>/.rustfmt.toml)"
done
[ "$(grep -o '"built":\[[^]]*\]' "$cmod/apis.json" | tr -cd ',' | wc -c)" -ge 5 ] \
    || die "the conformance module does not build every API's tests here: $(cat "$cmod/apis.json")"
touch "$bdir"/*.rs
cfg=$(grep -o '"built":\[[^]]*\]' "$cmod/apis.json" | grep -o '"[a-z_]*"' | grep -v built | tr -d '"' | sed 's/^/--cfg api_/' | tr '\n' ' ')
out=$(make -s -C "$kbuild" M="$bdir" LLVM=-19 ARCH=x86_64 CLIPPY=1 CONFORMANCE_CFG="$cfg" modules 2>&1) \
    || { echo "$out" >&2; die "clippy build of the conformance module failed"; }
if grep -q "warning" <<<"$out"; then
    echo "$out" >&2
    die "the conformance module has clippy warnings"
fi
say "conformance module: rustfmt and clippy clean"

# The streaming abstraction's kernel patch is made from the module's streaming.rs and stays
# checkpatch clean (the full build of the patched kernel: make kernel-patches).
"$ROOT/scripts/kernel-patches.sh" "$kbuild" --check-only
