#!/usr/bin/env python3
"""Start+join latency of a no-op child with Python's multiprocessing.

    py_start.py <fork|spawn|forkserver> <iterations> [--rss-mib N]

The Python side of bench_start.c: per iteration, Process(target=noop) is
created, started, joined and closed, from a context made with
get_context(method). For forkserver the server is started (with no preload)
by a first process before the parent grows, as bench_start does for mproc.
--rss-mib N makes the parent allocate and touch N MiB before measuring.

Prints one line:  median_us=<float> p10_us=<float> p90_us=<float> n=<iterations>
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import mmap
import multiprocessing
import os
import sys
import time

# Run as `python3 bench/<script>` from any cwd: find py_util next to it.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles  # noqa: E402

# Untimed iterations before measuring, as in bench_start.c.
WARMUP_ITERATIONS = 3


def noop():
    pass


def start_join(ctx):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"child exit code {p.exitcode}")
    p.close()


def grow_parent(mib):
    """Allocate mib MiB and write one byte in each page, so every page is
    resident and private (bytearray(n) alone maps zero pages lazily)."""
    size = mib << 20
    ballast = bytearray(size)
    pages = range(0, size, mmap.PAGESIZE)
    ballast[:: mmap.PAGESIZE] = b"\x5a" * len(pages)
    return ballast


def main():
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=["fork", "spawn", "forkserver"])
    ap.add_argument("iterations", type=positive_int)
    ap.add_argument("--rss-mib", type=positive_int, default=0)
    args = ap.parse_args()

    ctx = multiprocessing.get_context(args.method)
    if args.method == "forkserver":
        # Start the server while the parent is small: that is its point.
        ctx.set_forkserver_preload([])
        start_join(ctx)

    ballast = grow_parent(args.rss_mib) if args.rss_mib else None

    for _ in range(WARMUP_ITERATIONS):
        start_join(ctx)

    samples = []
    for _ in range(args.iterations):
        t0 = time.perf_counter_ns()  # CLOCK_MONOTONIC on Linux
        start_join(ctx)
        samples.append((time.perf_counter_ns() - t0) / 1000.0)

    del ballast
    samples.sort()
    print_quantiles("us", samples, args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_start.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
