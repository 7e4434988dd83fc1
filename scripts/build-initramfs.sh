#!/usr/bin/env bash
# make initramfs: busybox-static + the guest agent + the driver module + /init.
# Usage: build-initramfs.sh <kernel build dir> <agent binary> <dmalab.ko> [output dir];
# prints the cpio path (default output dir: target/initramfs).
source "$(dirname "$0")/lib.sh"
kbuild=${1:?kernel build dir}; agent=${2:?agent binary}; module=${3:?module}
gen="$kbuild/usr/gen_init_cpio"
[ -x "$gen" ] || die "$gen missing (run 'make kernel')"

bb="$CACHE/busybox/busybox"
if [ ! -x "$bb" ]; then
    say "fetching busybox-static"
    mkdir -p "$CACHE/busybox/dl"
    (cd "$CACHE/busybox/dl" && run_logged "apt-get download busybox-static" "$CACHE/busybox/download.log" \
        apt-get download busybox-static)
    dpkg-deb -x "$CACHE"/busybox/dl/busybox-static_*.deb "$CACHE/busybox/x"
    cp "$CACHE/busybox/x/bin/busybox" "$bb"
    rm -rf "$CACHE/busybox/x"
fi

out="${4:-$ROOT/target/initramfs}"
mkdir -p "$out"
cat >"$out/list" <<LIST
dir /bin 0755 0 0
dir /dev 0755 0 0
dir /proc 0755 0 0
dir /sys 0755 0 0
dir /tmp 0755 0 0
dir /lib 0755 0 0
dir /lib/modules 0755 0 0
nod /dev/console 0600 0 0 c 5 1
file /init $ROOT/guest-driver/init.sh 0755 0 0
file /bin/busybox $bb 0755 0 0
file /bin/dmalab-agent $agent 0755 0 0
file /lib/modules/dmalab.ko $module 0644 0 0
LIST
# DMALAB_EXTRA_MODULES="NAME.ko=PATH ...": more modules beside it, in /lib/modules
for m in ${DMALAB_EXTRA_MODULES:-}; do
    echo "file /lib/modules/${m%%=*} ${m#*=} 0644 0 0" >>"$out/list"
done
"$gen" "$out/list" >"$out/initramfs.cpio.tmp" || die "gen_init_cpio failed"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
echo "$out/initramfs.cpio"
