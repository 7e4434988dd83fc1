# Sourced by miri.sh and sanitize.sh: makes the nightly toolchain with `components` ready, or
# returns 1 saying why not. Miri and the sanitizers need nightly; nothing else does.
nightly_ready() {
    local want=("$@")
    if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        say "installing the nightly toolchain (minimal profile)"
        rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || return 1
    fi
    local have
    have=$(rustup component list --toolchain nightly --installed 2>/dev/null)
    for c in "${want[@]}"; do
        if ! grep -q "^$c" <<<"$have"; then
            say "adding the nightly component $c"
            rustup component add "$c" --toolchain nightly >/dev/null 2>&1 || return 1
        fi
    done
}
