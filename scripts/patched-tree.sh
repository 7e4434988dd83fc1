# Sourced: a kernel tree with patches applied, built incrementally from the default build.
#
# patched_tree <name> <kbuild> <patch>...: sets PATCHED to a cache directory holding `src` (the
# tree, copied with hard links; the files the patches change as real copies, then patched) and
# `build` (a copy of the build directory). The patches are in `git format-patch` or plain
# unified-diff form, applied with -p1 from their first `--- a/` line on.
#
# in_patched <command>...: runs the command in a mount namespace where PATCHED's copies stand
# at the original tree's and build directory's paths, so make sees the patched files as the
# only change (an incremental rebuild of seconds to a minute, not a new tree's 15 minutes), and
# a module built there links against the patched kernel.
patched_tree() {
    local name=$1 kb=$2
    shift 2
    local src key f p
    src=$(readlink -f "$kb/source")
    # keyed by what is applied (a patch's header may change without a rebuild) and the config
    key=$({
        for p in "$@"; do sed -n '/^--- \(a\/\|\/dev\/null\)/,$p' "$p"; done
        cat "$kb/.config"
    } | sha256sum | cut -c1-12)
    PATCHED="$CACHE/patched/$name-$key"
    PATCHED_SRC=$src
    PATCHED_KBUILD=$kb
    [ -f "$PATCHED/.ready" ] && return 0
    rm -rf "$PATCHED"
    mkdir -p "$PATCHED"
    cp -al "$src" "$PATCHED/src"
    for p in "$@"; do
        for f in $(sed -n 's|^+++ b/||p' "$p"); do
            [ -e "$src/$f" ] && cp --remove-destination "$src/$f" "$PATCHED/src/$f"
        done
        (cd "$PATCHED/src" && sed -n '/^--- \(a\/\|\/dev\/null\)/,$p' "$p" | patch -p1 --quiet) \
            || die "$p does not apply to $src"
    done
    cp -a "$kb" "$PATCHED/build"
    touch "$PATCHED/.ready"
}

in_patched() {
    unshare -m --propagation private bash -ec 'mount --bind "$1" "$2"; mount --bind "$3" "$4"; shift 4; "$@"' \
        _ "$PATCHED/src" "$PATCHED_SRC" "$PATCHED/build" "$PATCHED_KBUILD" "$@"
}
