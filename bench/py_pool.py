#!/usr/bin/env python3
"""Throughput of multiprocessing's Pool and concurrent.futures'
ProcessPoolExecutor on a trivial task, and a CPU-bound task on 1 and 2
workers.

    py_pool.py <mode> <iterations>

The Python side of bench_pool.c, mode for mode. Every pool comes from
multiprocessing.get_context("fork") (the executor gets it as mp_context)
and is made before anything is timed; only the map calls are timed. One
untimed warm-up map of a tenth of the items (it also starts the
executor's workers, which it starts on demand), then timed maps in the
same pool: ROUNDS of them, and more (up to MAX_ROUNDS) until they took
MIN_TIMED_S in all; a sample is one map's items per second. Every result is
checked after each map (outside the timed region).

  pool-1, pool-100, pool-auto
        Pool(W).map(incr, range(<iterations>), chunksize=1 / 100 / None),
        incr(x) = x + 1, W = the CPUs this process may run on (as
        mproc's default). chunksize None: Pool.map's default,
        ceil(len / (4 * W)), 12,500 for 100,000 items on 2 workers.
  executor-1, executor-100, executor-auto
        ProcessPoolExecutor(W).map(incr, range(<iterations>), chunksize=...)
        with chunksize 1 (the executor's own default), 100, and
        "auto": Pool.map's default above (the executor has no automatic
        chunk size).
  cpu-1, cpu-2
        Pool(1) or Pool(2).map(spin, [k] * <iterations>, chunksize=1):
        tasks of about 1 ms of Python arithmetic, k calibrated at start
        (the fastest of several timed runs in this process takes 1 ms);
        CPU_ROUNDS timed maps. The line also has task_us, the median time
        of one task run directly in this process.

Timing with time.perf_counter_ns() (CLOCK_MONOTONIC, as the C side).
Prints one line, as bench_pool does:
    median_per_s=... p10_per_s=... p90_per_s=... [task_us=...] n=<iterations>
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles, quantile  # noqa: E402

ROUNDS = 5  # timed maps at least, and at least MIN_TIMED_S of them (at most MAX_ROUNDS)
MIN_TIMED_S = 0.5
MAX_ROUNDS = 50
CPU_ROUNDS = 5
TASK_TARGET_NS = 1_000_000
CALIBRATION_RUNS = 15

ctx = multiprocessing.get_context("fork")
WORKERS = len(os.sched_getaffinity(0))


def incr(x):
    return x + 1


def spin(n):
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def pool_default_chunk(count, workers):
    """Pool.map's chunksize when it is None (multiprocessing/pool.py)."""
    chunk, extra = divmod(count, workers * 4)
    return chunk + 1 if extra else chunk


def timed(fn):
    t0 = time.perf_counter_ns()
    result = fn()
    return time.perf_counter_ns() - t0, result


def run_map(kind, chunk, iterations):
    if chunk == "auto":
        chunk = None if kind == "pool" else pool_default_chunk(iterations, WORKERS)
    else:
        chunk = int(chunk)
    want = list(range(1, iterations + 1))
    if kind == "pool":
        pool = ctx.Pool(WORKERS)

        def do_map(n):
            return pool.map(incr, range(n), chunksize=chunk)

    else:
        pool = concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx)

        def do_map(n):
            return list(pool.map(incr, range(n), chunksize=chunk))

    try:
        warm = iterations // 10 + 1  # at most iterations
        if do_map(warm) != want[:warm]:
            raise RuntimeError("wrong results")
        samples = []
        spent = 0
        while len(samples) < MAX_ROUNDS and (len(samples) < ROUNDS or spent < MIN_TIMED_S * 1e9):
            ns, out = timed(lambda: do_map(iterations))
            spent += ns
            if out != want:
                raise RuntimeError("wrong results")
            samples.append(iterations * 1e9 / ns)
    finally:
        if kind == "pool":
            pool.close()
            pool.join()
        else:
            pool.shutdown(wait=True)
    print_quantiles("per_s", sorted(samples), iterations)


def calibrate():
    """Set the loop length so that the fastest run takes TASK_TARGET_NS;
    return the loop length and the median time of one run afterwards (µs)."""
    n = 10_000
    for _ in range(2):  # the second corrects the first
        best = min(timed(lambda: spin(n))[0] for _ in range(CALIBRATION_RUNS))
        n = max(1, int(n * TASK_TARGET_NS / best))
    times = sorted(timed(lambda: spin(n))[0] / 1e3 for _ in range(CALIBRATION_RUNS))
    return n, quantile(times, 0.5)


def run_cpu(workers, iterations):
    n, task_us = calibrate()
    want = spin(n)
    pool = ctx.Pool(workers)
    try:
        warm = iterations // 10 + 1
        pool.map(spin, [n] * warm, chunksize=1)
        samples = []
        for _ in range(CPU_ROUNDS):
            ns, out = timed(lambda: pool.map(spin, [n] * iterations, chunksize=1))
            if out != [want] * iterations:
                raise RuntimeError("wrong results")
            samples.append(iterations * 1e9 / ns)
    finally:
        pool.close()
        pool.join()
    samples.sort()
    print(
        f"median_per_s={quantile(samples, 0.5):.3f} p10_per_s={quantile(samples, 0.1):.3f} "
        f"p90_per_s={quantile(samples, 0.9):.3f} task_us={task_us:.1f} n={iterations}",
        flush=True,
    )


def main():
    modes = (
        "pool-1", "pool-100", "pool-auto",
        "executor-1", "executor-100", "executor-auto",
        "cpu-1", "cpu-2",
    )
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=modes)
    ap.add_argument("iterations", type=positive_int)
    args = ap.parse_args()
    kind, arg = args.mode.split("-", 1)
    if kind == "cpu":
        run_cpu(int(arg), args.iterations)
    else:
        run_map(kind, arg, args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_pool.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
