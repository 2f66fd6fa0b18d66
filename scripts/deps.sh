#!/usr/bin/env bash
# deps.sh - install the Debian packages mproc's build, tests and benchmarks
# need. Idempotent: when everything is present it only checks (well under a
# second) and prints one line; otherwise it installs what is missing.
set -euo pipefail

packages=(
    cmake
    make
    gcc
    clang
    pkg-config
    python3
    libclang-rt-14-dev # clang's sanitizer runtimes (MPROC_SANITIZE with clang)
    redis-server       # the P1 tests (a connection shared across fork)
    libhiredis-dev
    clang-format
    wrk                # the reload-under-load test of `mproc run`
    g++          # bench/bench_boost_mq.cpp only (a comparison, not a dependency)
    libboost-dev # its header-only Boost.Interprocess
    gunicorn     # bench/bench_run.py: `mproc run` against gunicorn (pulls python3-gunicorn)
)

installed() {
    # dpkg -s succeeds for a removed package whose config files remain:
    # require the "install ok installed" status.
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing=()
for p in "${packages[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#packages[@]} packages present"
    exit 0
fi

echo "deps: installing ${missing[*]}"

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "deps: not root and no sudo: install these by hand: ${missing[*]}" >&2
        exit 1
    fi
    sudo=(sudo)
fi

log=$(mktemp "${TMPDIR:-/tmp}/mproc-deps.XXXXXX")
trap 'rm -f "$log"' EXIT
if ! {
    "${sudo[@]}" apt-get update &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}"
} </dev/null >"$log" 2>&1; then
    cat "$log" >&2
    echo "deps: apt-get failed" >&2
    exit 1
fi
