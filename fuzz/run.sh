#!/bin/sh
# run.sh TARGET SEEDS: run a libFuzzer target for $FUZZ_SECONDS (default 10)
# from the seed corpus SEEDS; inputs it finds go to a temporary directory,
# removed afterwards. A crash leaves its input in the working directory
# (crash-<sha1>) and fails the test: fix it, and add the input to SEEDS as
# a regression seed.
set -u
target=$1
seeds=$2
secs=${FUZZ_SECONDS:-10}
work=$(mktemp -d "${TMPDIR:-/tmp}/mproc-fuzz.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT
"$target" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 "$work" "$seeds"
