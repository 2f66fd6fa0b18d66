#!/usr/bin/env python3
"""Cost of redis-py's _checkpid fork check, per call.

    py_guard.py <iterations>

The Python side of bench_guard.c: a client object remembers os.getpid()
when made, and its _checkpid method, which redis-py's ConnectionPool calls
in front of every connection checkout, compares it with os.getpid()
(`if self.pid != os.getpid():`). Here the check always passes (no fork), so
this is its fast path: a method call, an attribute load and os.getpid(),
which since glibc 2.25 is a system call every time.

<iterations> calls in all, in 100 batches (fewer when iterations < 100),
after one untimed warm-up batch; each batch is timed with
time.perf_counter_ns() (CLOCK_MONOTONIC, as the C side) and a sample is its
time divided by its calls. The for loop's own overhead is included, as the
C loop's is in bench_guard.

Prints one line, in nanoseconds per call:
    median_ns=<float> p10_ns=<float> p90_ns=<float> n=<iterations>
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import os
import sys
import time

# Run as `python3 bench/<script>` from any cwd: find py_util next to it.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles  # noqa: E402

# Timed batches, at most, as in bench_guard.c.
MAX_BATCHES = 100


class Client:
    """The redis-py pattern: remember the pid, check it before each use."""

    def __init__(self):
        self.pid = os.getpid()
        self.resets = 0

    def _checkpid(self):
        if self.pid != os.getpid():
            self.resets += 1  # redis-py: drop the inherited connections
            self.pid = os.getpid()


def batch(client, calls):
    check = client._checkpid
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        check()
    return (time.perf_counter_ns() - t0) / calls


def main():
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("iterations", type=positive_int)
    args = ap.parse_args()

    client = Client()
    nbatch = min(args.iterations, MAX_BATCHES)
    batch(client, args.iterations // nbatch)  # warm-up

    # The first iterations % nbatch batches make one call more.
    samples = sorted(
        batch(client, args.iterations // nbatch + (b < args.iterations % nbatch))
        for b in range(nbatch)
    )
    if client.resets:
        raise RuntimeError(f"_checkpid reset {client.resets} times without a fork")
    print_quantiles("ns", samples, args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_guard.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
