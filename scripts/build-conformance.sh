#!/usr/bin/env bash
# Builds the conformance module (conformance/module/) against a kernel build directory.
# Usage: build-conformance.sh <kernel build dir> <out dir>. Each API's tests compile only with
# `--cfg api_<name>`: all are tried together first; if that fails, each alone, and the module is
# built with those that compile. Writes <out>/apis.json ({"built": [...], "failed": {api: the
# first compiler error}}) and prints the path of the .ko.
source "$(dirname "$0")/lib.sh"
kbuild=${1:?usage: build-conformance.sh <kernel build dir> <out dir>}
out=${2:?out dir}
[ -f "$kbuild/Module.symvers" ] || die "$kbuild is not a built kernel tree (run 'make kernel')"
export PATH="$CACHE/tools/bin:$PATH"
APIS=(coherent coherent_box coherent_handle attrs dma_mask sgtable lifetime)
# APIs a tree may not have at all (kernel-patches/ adds them): absent is not a failure
OPTIONAL=(streaming)
mkdir -p "$out"
work=$(cd "$out" && pwd)/build
rm -rf "$work"
mod="$work/conformance/module"
mkdir -p "$mod" "$work/abi"
cp "$ROOT"/conformance/module/Kbuild "$ROOT"/conformance/module/*.rs "$mod/"
cp "$ROOT/abi/regs.rs" "$work/abi/"
# the suite's base binds the device the way this series spells it
series=$(make -s -C "$kbuild" kernelversion 2>/dev/null | cut -d. -f1,2)
SERIES_CFG=""
[ "$series" = 7.2 ] && SERIES_CFG="--cfg series_7_2"

build() { # build <log> <api>...: 0 when the module builds with these APIs' tests
    local log=$1; shift
    local cfg="$SERIES_CFG"
    for a in "$@"; do cfg="$cfg --cfg api_$a"; done
    make -C "$kbuild" M="$mod" LLVM=-19 ARCH=x86_64 CONFORMANCE_CFG="$cfg" clean >/dev/null 2>&1 || true
    make -C "$kbuild" M="$mod" LLVM=-19 ARCH=x86_64 CONFORMANCE_CFG="$cfg" modules >"$log" 2>&1
}

built=("${APIS[@]}" "${OPTIONAL[@]}")
failed_json=""
absent_json=""
say "conformance module: building with the tests of ${#built[@]} APIs"
if ! build "$work/all.log" "${built[@]}"; then
    say "conformance module: not every API's tests build on this tree; finding which"
    build "$work/none.log" || { tail -30 "$work/none.log" >&2; die "the conformance module does not build even without tests (log: $work/none.log)"; }
    # the required APIs together first (one build when only an optional one is missing)
    if build "$work/required.log" "${APIS[@]}"; then
        built=("${APIS[@]}")
        candidates=("${OPTIONAL[@]}")
    else
        built=()
        candidates=("${APIS[@]}" "${OPTIONAL[@]}")
    fi
    for a in "${candidates[@]}"; do
        if build "$work/$a.log" "$a"; then
            built+=("$a")
            continue
        fi
        first=$(grep -m1 -E '^error' "$work/$a.log" | sed 's/\\/\\\\/g; s/"/\\"/g')
        if [[ " ${OPTIONAL[*]} " == *" $a "* ]]; then
            say "  $a: not in this tree ($first)"
            absent_json="$absent_json${absent_json:+,}\"$a\":\"$first\""
        else
            say "  $a: does not build ($first)"
            failed_json="$failed_json${failed_json:+,}\"$a\":\"$first\""
        fi
    done
    build "$work/all.log" "${built[@]}" || { tail -30 "$work/all.log" >&2; die "the APIs that build alone do not build together (log: $work/all.log)"; }
fi
built_json=$(printf '"%s",' "${built[@]}")
printf '{"built":[%s],"failed":{%s},"absent":{%s}}\n' "${built_json%,}" "$failed_json" "$absent_json" >"$out/apis.json"
echo "$mod/dmalab.ko"
