#!/usr/bin/env python3
"""Round trip and throughput of multiprocessing.Pipe().

    py_conn.py <mode> <iterations>

The Python side of bench_conn.c, mode for mode (a duplex Pipe(), which is a
Unix socket pair, and a child from multiprocessing.get_context("fork")):

  pingpong      the parent send_bytes() a 64-byte message and recv_bytes()
                the answer; the child recv_bytes() and send_bytes() it back.
                Parent and child are pinned to two different CPUs. 20 timed
                batches after an untimed one; a sample is a batch's time
                per round trip, in microseconds.
  stream-64, stream-4k, stream-1m
                the child (the writer, pinned to one CPU) send_bytes()
                messages of that size, the parent (pinned to another)
                recv_bytes() them: <iterations> messages in 5 timed rounds
                after an untimed one, each round started by a one-byte
                "go" message from the parent; a sample is a round's
                messages per second (and MB/s, 10^6 bytes per second).

Timing with time.perf_counter_ns() (CLOCK_MONOTONIC, as the C side).
Prints one line, as bench_conn does:
    median_us=... p10_us=... p90_us=... n=<iterations>              (pingpong)
    median_per_s=... p10_per_s=... p90_per_s=...
        median_mb_s=... p10_mb_s=... p90_mb_s=... size=<bytes> n=...  (stream)
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import multiprocessing
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles, quantile  # noqa: E402

PINGPONG_BATCHES = 20
PINGPONG_SIZE = 64
STREAM_ROUNDS = 5
SIZES = {"stream-64": 64, "stream-4k": 4096, "stream-1m": 1 << 20}

ctx = multiprocessing.get_context("fork")
ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


def pin_to(k):
    """Pin this process to the k-th CPU of those this program started with,
    as bench_util.c does."""
    os.sched_setaffinity(0, {ALLOWED_CPUS[k % len(ALLOWED_CPUS)]})


# ---- ping-pong --------------------------------------------------------------


def pong(parent_end, conn, total):
    parent_end.close()
    pin_to(1)
    recv, send = conn.recv_bytes, conn.send_bytes
    for _ in range(total):
        send(recv())


def ping(conn, n, msg):
    recv, send = conn.recv_bytes, conn.send_bytes
    for _ in range(n):
        send(msg)
        if len(recv()) != PINGPONG_SIZE:
            raise RuntimeError("the answer has the wrong length")


def run_pingpong(iterations):
    a, b = ctx.Pipe()
    nbatch = min(iterations, PINGPONG_BATCHES)
    warm = iterations // nbatch
    child = ctx.Process(target=pong, args=(a, b, warm + iterations))
    child.start()
    b.close()
    pin_to(0)
    msg = b"x" * PINGPONG_SIZE
    ping(a, warm, msg)
    samples = []
    for i in range(nbatch):
        n = iterations // nbatch + (i < iterations % nbatch)
        t0 = time.perf_counter_ns()
        ping(a, n, msg)
        samples.append((time.perf_counter_ns() - t0) / 1e3 / n)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the child failed (exit code {child.exitcode})")
    a.close()
    print_quantiles("us", sorted(samples), iterations)


# ---- stream -------------------------------------------------------------------


def writer(parent_end, conn, size, rounds):
    parent_end.close()
    pin_to(1)
    msg = b"w" * size
    send = conn.send_bytes
    for n in rounds:
        conn.recv_bytes()
        for _ in range(n):
            send(msg)


def run_stream(size, iterations):
    nround = min(iterations, STREAM_ROUNDS)
    rounds = [iterations // nround // 4 + 1] + [
        iterations // nround + (r < iterations % nround) for r in range(nround)
    ]
    a, b = ctx.Pipe()
    child = ctx.Process(target=writer, args=(a, b, size, rounds))
    child.start()
    b.close()
    pin_to(0)
    recv = a.recv_bytes
    per_s, mb_s = [], []
    for r, n in enumerate(rounds):
        t0 = time.perf_counter_ns()
        a.send_bytes(b"g")
        for _ in range(n):
            msg = recv()
        secs = (time.perf_counter_ns() - t0) / 1e9
        if len(msg) != size or msg[0] != ord("w") or msg[-1] != ord("w"):
            raise RuntimeError("the payload is wrong")
        if r > 0:
            per_s.append(n / secs)
            mb_s.append(n * size / 1e6 / secs)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the child failed (exit code {child.exitcode})")
    a.close()
    per_s.sort()
    mb_s.sort()
    parts = []
    for unit, vals in (("per_s", per_s), ("mb_s", mb_s)):
        parts += [
            f"median_{unit}={quantile(vals, 0.5):.3f}",
            f"p10_{unit}={quantile(vals, 0.1):.3f}",
            f"p90_{unit}={quantile(vals, 0.9):.3f}",
        ]
    print(" ".join(parts) + f" size={size} n={iterations}", flush=True)


def main():
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("pingpong",) + tuple(SIZES))
    ap.add_argument("iterations", type=positive_int)
    args = ap.parse_args()
    if args.mode == "pingpong":
        run_pingpong(args.iterations)
    else:
        run_stream(SIZES[args.mode], args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_conn.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
