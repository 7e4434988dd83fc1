#!/usr/bin/env bash
# make deps: Debian packages (only what is missing), the newer suites with
# low-priority pins, rust-src and bindgen. Never upgrades libc.
source "$(dirname "$0")/lib.sh"

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

APT_PKGS=(
    # QEMU build
    ninja-build libglib2.0-dev libpixman-1-dev flex bison libslirp-dev
    device-tree-compiler seabios ipxe-qemu qemu-system-data pkg-config
    # kernel build
    clang-19 libclang-19-dev lld-19 llvm-19 libelf-dev bc cpio xz-utils
    # source download
    dpkg-dev patch
)

EXTRA_SOURCES=/etc/apt/sources.list.d/dmalab-extra.sources
PIN=/etc/apt/preferences.d/dmalab-extra

add_suites() {
    [ -f "$EXTRA_SOURCES" ] && [ -f "$PIN" ] && return 0
    local main=/etc/apt/sources.list.d/debian.sources uri keyring
    [ -f "$main" ] || die "no $main: cannot derive the Debian mirror URI"
    # the first stanza's URIs/Signed-By are the main archive
    uri=$(awk '/^URIs:/{print $2; exit}' "$main")
    keyring=$(awk '/^Signed-By:/{print $2; exit}' "$main")
    [ -n "$uri" ] || die "no URIs: line in $main"
    say "adding Debian suites bookworm-backports trixie-backports sid (pinned to 100) from $uri"
    $SUDO tee "$EXTRA_SOURCES" >/dev/null <<SRC
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports trixie-backports sid
Components: main
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
SRC
    $SUDO tee "$PIN" >/dev/null <<PREF
Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie-backports
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 100
PREF
    rm -f "$CACHE/.apt-updated"
}

apt_update() {
    [ -f "$CACHE/.apt-updated" ] && [ "$(find "$CACHE/.apt-updated" -mmin -1440)" ] && return 0
    say "apt-get update"
    run_logged "apt-get update" "$CACHE/apt-update.log" $SUDO apt-get update
    touch "$CACHE/.apt-updated"
}

install_pkgs() {
    local missing=()
    for p in "${APT_PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && { say "apt packages: all present"; return 0; }
    say "installing: ${missing[*]}"
    # refuse anything that would touch libc
    if $SUDO apt-get install -s --no-install-recommends "${missing[@]}" 2>/dev/null | grep -qE '^Inst libc6 '; then
        die "installing ${missing[*]} would upgrade libc6; refusing"
    fi
    DEBIAN_FRONTEND=noninteractive run_logged "apt-get install ${missing[*]}" "$CACHE/apt-install.log" \
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

rust_bits() {
    need cargo "rustup toolchain"
    if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
        say "rustup component add rust-src"
        run_logged "rustup component add rust-src" "$CACHE/rustup.log" rustup component add rust-src
    fi
    if [ ! -x "$CACHE/tools/bin/bindgen" ]; then
        say "cargo install bindgen-cli (about 3 min)"
        run_progress "bindgen-cli" "$CACHE/bindgen.log" \
            cargo install bindgen-cli --locked --root "$CACHE/tools"
    fi
}

add_suites
apt_update
install_pkgs
rust_bits
say "deps ready"
