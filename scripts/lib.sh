# Shared helpers for the provisioning scripts: progress lines with elapsed
# time, one-line failures, and the cache layout.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${DMALAB_CACHE:-$HOME/.cache/dmalab}
mkdir -p "$CACHE"
_t0=$(date +%s)

say() { printf '[dmalab %4ss] %s\n' "$(($(date +%s) - _t0))" "$*" >&2; }
die() { printf 'dmalab: error: %s\n' "$*" >&2; exit 1; }

# Run a long command with its output in a log file; on failure print the
# tail of the log and one line naming the step.
run_logged() {
    local step=$1 log=$2
    shift 2
    if ! "$@" >"$log" 2>&1; then
        tail -n 25 "$log" >&2
        die "$step failed (full log: $log)"
    fi
}

# Like run_logged, but prints a progress line every 30 s while it runs.
run_progress() {
    local step=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    local pid=$! start next
    start=$(date +%s)
    next=$((start + 30))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if (( $(date +%s) >= next )) && kill -0 "$pid" 2>/dev/null; then
            next=$((next + 30))
            say "$step: $(( $(date +%s) - start ))s, $(tail -n 1 "$log" | cut -c1-100)"
        fi
    done
    if ! wait "$pid"; then
        tail -n 25 "$log" >&2
        die "$step failed (full log: $log)"
    fi
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: run 'make deps' (package: ${2:-$1})"
}

# sha256 of files and strings, short
hash_of() { cat "$@" | sha256sum | cut -c1-12; }
