#!/usr/bin/env bash
# make kernel: Linux 7.3.x (Debian's linux-source package) with CONFIG_RUST,
# built by clang/LLVM 19 with guest-kernel/dmalab.config merged onto
# tinyconfig. Prints the build directory (O=) on stdout; the source tree is in
# <build>/source. KERNEL_SRC=/path/to/linux-7.3 uses that tree instead of
# downloading one (it is still built out of tree, in the cache).
source "$(dirname "$0")/lib.sh"
export PATH="$CACHE/tools/bin:$PATH"

# DMALAB_KERNEL_SERIES: another series from the package mirror (make conformance's second tree,
# 7.2); the driver itself is written for 7.3.
SERIES=${DMALAB_KERNEL_SERIES:-7.3}
LLVM_SUFFIX=-19
# DMALAB_KERNEL_FRAGMENT: another configuration fragment (make bench-kernel's, without the
# debug options); its own cache key, so both kernels stay cached side by side.
FRAGMENT="${DMALAB_KERNEL_FRAGMENT:-$ROOT/guest-kernel/dmalab.config}"
for t in clang$LLVM_SUFFIX ld.lld$LLVM_SUFFIX rustc bindgen bc flex bison; do need "$t"; done

if [ -n "${KERNEL_SRC:-}" ]; then
    [ -f "$KERNEL_SRC/Makefile" ] || die "KERNEL_SRC=$KERNEL_SRC is not a kernel source tree"
    src=$(cd "$KERNEL_SRC" && pwd)
    version=$(make -s -C "$src" kernelversion)
    [[ $version == $SERIES.* ]] || die "KERNEL_SRC is Linux $version; dmalab's driver needs $SERIES.x (the Rust API moves between releases)"
    origin="$src"
else
    pkgver=$(apt-cache madison "linux-source-$SERIES" 2>/dev/null | awk '{print $3}' | sort -V | tail -n 1 || true)
    [ -n "$pkgver" ] || die "no linux-source-$SERIES package on the Debian mirror (run 'make deps' for the extra suites)"
    version=${pkgver%%-*}
    src="$CACHE/src/linux-$version"
    origin="linux-source-$SERIES=$pkgver"
    if [ ! -f "$src/.unpacked" ]; then
        dl="$CACHE/src/dl"
        mkdir -p "$dl"
        if ! ls "$dl"/linux-source-"$SERIES"_"$pkgver"_*.deb >/dev/null 2>&1; then
            say "downloading linux-source-$SERIES $pkgver (~170 MB)"
            (cd "$dl" && run_logged "download linux-source-$SERIES=$pkgver" "$dl/download.log" \
                apt-get download "linux-source-$SERIES=$pkgver")
        fi
        say "unpacking Linux $version source"
        rm -rf "$src" "$dl/x"
        dpkg-deb -x "$dl"/linux-source-"$SERIES"_"$pkgver"_*.deb "$dl/x"
        mkdir -p "$src"
        tar -xf "$dl/x/usr/src/linux-source-$SERIES.tar.xz" -C "$src" --strip-components=1
        rm -rf "$dl/x"
        touch "$src/.unpacked"
    fi
fi

key=$(printf '%s\n%s\n%s\n' "$origin" "$version" "$LLVM_SUFFIX" | cat - "$FRAGMENT" | sha256sum | cut -c1-12)
out="$CACHE/kernel-$version-$key"
MAKE=(make -C "$src" O="$out" LLVM="$LLVM_SUFFIX" ARCH=x86_64)
if [ -f "$out/.dmalab-built" ]; then
    say "Linux $version cached at $out"
    echo "$out"
    exit 0
fi

mkdir -p "$out"
"${MAKE[@]}" -s rustavailable >/dev/null 2>"$out/rustavailable.log" \
    || { cat "$out/rustavailable.log" >&2; die "the kernel says Rust is not available (see above)"; }
say "configuring Linux $version (tinyconfig + $(basename "$FRAGMENT"))"
run_logged "kernel tinyconfig" "$out/config.log" "${MAKE[@]}" tinyconfig
run_logged "kernel merge_config" "$out/config.log" \
    env ARCH=x86_64 LLVM="$LLVM_SUFFIX" "$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "$FRAGMENT"
run_logged "kernel olddefconfig" "$out/config.log" "${MAKE[@]}" olddefconfig
# every line of the fragment must have survived olddefconfig
while IFS= read -r line; do
    case "$line" in CONFIG_*=*) grep -qxF "$line" "$out/.config" || die "kernel config: '$line' did not take (a dependency is missing)";; esac
done <"$FRAGMENT"
say "building Linux $version bzImage + modules (about 20 min on 2 cores)"
run_progress "kernel build" "$out/build.log" "${MAKE[@]}" -j"$(nproc)" bzImage modules
echo "$version ($origin)" >"$out/VERSION"
touch "$out/.dmalab-built"
say "Linux $version built: $out"
echo "$out"
