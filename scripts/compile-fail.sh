#!/usr/bin/env bash
# make compile-fail: the misuses of the streaming DMA abstraction that its types rule out must
# not compile. Each file in guest-driver/compile-fail/ is added to a copy of the module as
# `mod misuse;` and built; its `// expect:` line names the rustc error code the build must
# fail with, or `ok` for the control example that must build (docs/streaming-dma.md).
# Usage: compile-fail.sh <kernel build dir>
source "$(dirname "$0")/lib.sh"
kbuild=${1:?kernel build dir}
[ -f "$kbuild/Module.symvers" ] || die "$kbuild is not a built kernel tree (run 'make kernel')"
export PATH="$CACHE/tools/bin:$PATH"
examples=("$ROOT"/guest-driver/compile-fail/*.rs)
work="$ROOT/target/compile-fail"
failed=0
n=0
for ex in "${examples[@]}"; do
    n=$((n + 1))
    name=$(basename "$ex" .rs)
    expect=$(sed -n 's|^// expect: *||p' "$ex" | head -n 1)
    [ -n "$expect" ] || die "$ex has no '// expect:' line"
    dir="$work/$name"
    rm -rf "$dir"
    mkdir -p "$dir/guest-driver/module" "$dir/abi"
    cp "$ROOT"/guest-driver/module/Kbuild "$ROOT"/guest-driver/module/*.rs "$dir/guest-driver/module/"
    cp "$ROOT/abi/regs.rs" "$dir/abi/"
    cp "$ex" "$dir/guest-driver/module/misuse.rs"
    printf '\n#[allow(dead_code)]\nmod misuse;\n' >> "$dir/guest-driver/module/dmalab.rs"
    say "compile-fail $n/${#examples[@]}: $name (expect $expect)"
    if out=$(make -s -C "$kbuild" M="$dir/guest-driver/module" LLVM=-19 ARCH=x86_64 modules 2>&1); then
        got=ok
    else
        got=$(grep -o 'error\[E[0-9]\{4\}\]' <<<"$out" | head -n 1 | tr -d 'error[]')
        got=${got:-"a failure without an error code"}
    fi
    if [ "$got" != "$expect" ]; then
        echo "$out" | tail -n 30 >&2
        echo "dmalab: $name: expected $expect, got $got" >&2
        failed=$((failed + 1))
    fi
done
[ "$failed" -eq 0 ] || die "$failed of ${#examples[@]} compile-fail examples did not fail as documented"
say "compile-fail: all ${#examples[@]} examples behave as documented"
