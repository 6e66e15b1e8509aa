#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer) of the
# readers of untrusted input, one target each (fuzz/fuzz_targets/, entry
# points in src/fuzzing.rs):
#   ltx        the LTX decoder (header, pages, trailer)
#   stream     a replica reading a replication stream into a fresh store
#   journal    a rollback journal as recovery reads it
#   wal        a WAL as the WAL follower and recovery read it
#   http_head  an HTTP request head as the server parses it
#   config     a config file as `litefs -config` loads it
#   import     a file offered to `litefs import` / POST /import
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [--grow] [TARGET ...]
#
# Runs each target (all by default) for SECONDS_PER_TARGET (default 60)
# from its corpus in fuzz/corpus/<target> (kept in the repository); new
# inputs go to a temporary directory, or into the corpus with --grow.
# Prints one line per target (executions, coverage), then `T targets, E
# executions, C crashes` as its last line; exits non-zero when C > 0. A
# crash leaves its input in fuzz/artifacts/<target>/ (`cargo +nightly fuzz
# run <target> <file>` replays it); every crash becomes a regression test.
#
# Uses the nightly toolchain when `rustup toolchain list` has one, else the
# default toolchain with RUSTC_BOOTSTRAP=1; installs cargo-fuzz with cargo
# when it is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

ALL=(ltx stream journal wal http_head config import)
seconds=60
grow=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --grow) grow=true ;;
        ''|*[!0-9]*) targets+=("$arg") ;;
        *) seconds="$arg" ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${ALL[@]}")

say() { printf 'fuzz: %s\n' "$*" >&2; }

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo=(cargo +nightly)
else
    say "no nightly toolchain: using the default one with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

"${cargo[@]}" fuzz build -O >&2

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export LITEFS_FUZZ_SCRATCH="$scratch/files"
total=0
crashes=0
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    mkdir -p "$corpus"
    if $grow; then
        dirs=("$corpus")
    else
        mkdir -p "$scratch/$target"
        dirs=("$scratch/$target" "$corpus")
    fi
    log="$scratch/$target.log"
    status=0
    "${cargo[@]}" fuzz run -O "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    total=$((total + ${execs:-0}))
    if [ "$status" -ne 0 ]; then
        crashes=$((crashes + 1))
        echo "$target: FAILED after ${execs:-?} executions (exit $status):"
        grep -E 'ERROR|panicked|SUMMARY|Test unit written' "$log" | head -10 | sed 's/^/  /'
    else
        echo "$target: ${execs:-0} executions in ${seconds} s, coverage ${cov:-?} edges"
    fi
done
echo "${#targets[@]} targets, $total executions, $crashes crashes"
[ "$crashes" -eq 0 ]
