#!/usr/bin/env bash
# make exercise STEP=N: copies step N's skeleton to work/stepN/ (ignored by git), where you
# write the step; `make check-step STEP=N` grades that folder. Never overwrites your work.
source "$(dirname "$0")/lib.sh"
step=${1:-}
[[ "$step" =~ ^[1-9]$ ]] || die "usage: make exercise STEP=N (N = 1..9, docs/tutorial/README.md)"
skel="$ROOT/exercises/skeletons/step$step"
dest="$ROOT/work/step$step"
chapter=$(ls "$ROOT"/docs/tutorial/0"$step"-*.md)
if [ -e "$dest" ]; then
    say "work/step$step already exists: your work there is kept (delete it to start the step over)"
else
    mkdir -p "$ROOT/work"
    # each skeleton carries the solution of the steps before it, so a wrong turn in an
    # earlier step does not follow you into this one
    cp -r "$skel" "$dest"
    say "copied the step $step skeleton to work/step$step"
fi
# the kernel source the chapters link into (work/linux/rust/kernel/...), once it is unpacked
if [ -f "$ROOT/target/paths/kbuild" ] && [ -d "$(cat "$ROOT/target/paths/kbuild")/source" ]; then
    ln -sfn "$(cat "$ROOT/target/paths/kbuild")/source" "$ROOT/work/linux"
fi
todos=$(grep -c "TODO(step $step)" "$dest"/*.rs | awk -F: '{s+=$2} END {print s}')
cat <<MSG

  Step $step: ${chapter#$ROOT/}
  Write the $todos places marked TODO(step $step) in work/step$step/*.rs (the rest is given
  and builds as it is). Then:

    make check-step STEP=$step      # builds work/step$step and grades it (report card below)

  The first check on a fresh machine builds QEMU, the guest kernel and the grader (about
  17 minutes, once; cached in ~/.cache/dmalab); after that a step grades in 20-60 s.
  The kernel's Rust API the chapter links to is in work/linux/rust/kernel/ (the guest
  kernel's source, linked there once the first check has unpacked it).
  Stuck: the chapter's hints, then exercises/solutions/step$step/.

MSG
