#!/usr/bin/env bash
# make qemu: QEMU 10.2.x from Debian's source package, qemu-patches/*.patch
# applied in order, x86_64-softmmu with TCG plugins. Prints the path of the
# binary on stdout. QEMU=/path/to/qemu-system-x86_64 skips the build.
source "$(dirname "$0")/lib.sh"

if [ -n "${QEMU:-}" ]; then
    [ -x "$QEMU" ] || die "QEMU=$QEMU is not an executable"
    "$QEMU" -device help 2>/dev/null | grep -q vfio-user-pci \
        || die "QEMU=$QEMU has no vfio-user-pci device (needs QEMU >= 10.1 built with vfio-user)"
    echo "$QEMU"
    exit 0
fi

SERIES=10.2
FLAGS="--target-list=x86_64-softmmu --without-default-features --enable-kvm --enable-tcg
--enable-plugins --enable-slirp --enable-pixman --disable-docs --disable-download
--disable-debug-info --disable-werror --disable-install-blobs
--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"

# newest 10.2.x source the mirror offers (any suite)
version=$(apt-cache showsrc qemu 2>/dev/null | awk '/^Version:/{print $2}' \
    | grep -E "^1:${SERIES//./\\.}\.[0-9]+\+ds" | sort -V | tail -n 1 || true)
[ -n "$version" ] || die "no qemu ${SERIES}.x source on the Debian mirror (run 'make deps' for the extra suites)"
upstream=${version#1:}; upstream=${upstream%%+ds*}

key=$(printf '%s\n%s\n' "$version" "$FLAGS" | cat - "$ROOT"/qemu-patches/*.patch | sha256sum | cut -c1-12)
out="$CACHE/qemu-$upstream-$key"
if [ -x "$out/qemu-system-x86_64" ]; then
    say "qemu $version cached at $out"
    echo "$out/qemu-system-x86_64"
    exit 0
fi

for t in ninja flex bison dtc pkg-config python3; do need "$t"; done
dl="$CACHE/src/qemu-$upstream"
mkdir -p "$dl"
orig=$(ls "$dl"/qemu_"$upstream"+ds.orig.tar.* 2>/dev/null | head -n 1 || true)
if [ -z "$orig" ]; then
    say "downloading qemu source $version"
    (cd "$dl" && run_logged "download qemu source $version" "$dl/download.log" \
        apt-get source --download-only "qemu=$version")
    orig=$(ls "$dl"/qemu_"$upstream"+ds.orig.tar.* | head -n 1)
fi

venv="$CACHE/tools/meson-venv"
if [ ! -x "$venv/bin/meson" ] || ! "$venv/bin/python3" -c "import pycotap" 2>/dev/null; then
    say "meson 1.9.0 in a venv (Debian 12's meson is too old)"
    python3 -m venv "$venv"
    run_logged "pip install meson" "$CACHE/meson-pip.log" "$venv/bin/pip" install -q meson==1.9.0 pycotap==1.3.1
fi

work="$CACHE/build/qemu-$upstream-$key"
rm -rf "$work"
mkdir -p "$work"
say "unpacking $(basename "$orig")"
tar -xf "$orig" -C "$work" --strip-components=1
for p in "$ROOT"/qemu-patches/*.patch; do
    say "applying $(basename "$p")"
    patch -d "$work" -p1 -s --no-backup-if-mismatch <"$p" || die "patch $(basename "$p") does not apply to qemu $version"
done
say "configuring qemu $version"
# shellcheck disable=SC2086
(cd "$work" && mkdir -p build && cd build && run_logged "qemu configure" "$work/configure.log" \
    ../configure --python="$venv/bin/python3" $FLAGS)
say "building qemu (about 12 min on 2 cores)"
run_progress "qemu build" "$work/build.log" ninja -C "$work/build" -j"$(nproc)" qemu-system-x86_64
mkdir -p "$out.tmp"
cp "$work/build/qemu-system-x86_64" "$out.tmp/"
echo "$version" >"$out.tmp/VERSION"
rm -rf "$out"; mv "$out.tmp" "$out"
rm -rf "$work"
say "qemu $version built: $out/qemu-system-x86_64"
echo "$out/qemu-system-x86_64"
