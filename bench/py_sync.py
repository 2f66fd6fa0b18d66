#!/usr/bin/env python3
"""Cost of multiprocessing's Lock, Semaphore and Event.

    py_sync.py <mode> <iterations>

The Python side of bench_sync.c, mode for mode (the objects come from
multiprocessing.get_context("fork"); workers are fork children, started
before the clock runs):

  lock            Lock.acquire() + Lock.release(), uncontended
  sem             Semaphore(1).acquire() + release(), uncontended
  event           Event.set(), .wait() (returns at once), .clear(),
                  .is_set() (must say False)
  lock-contended  two worker processes, pinned to two different CPUs,
                  each make <iterations>
                  acquire / counter.value += 1 / release on one Lock and a
                  RawValue counter; they spin on a start flag, then time
                  their loop. A sample is (last end - first start) /
                  (2 * iterations), over 5 rounds; the counter must end at
                  2 * iterations every round.
  pingpong        the parent sets e1 and waits for e2, then clears e2; a
                  child waits for e1, clears it and sets e2 (the two pinned
                  to two different CPUs); a sample is a
                  batch's round trips per second (20 batches).

Uncontended modes time <iterations> operations in 100 batches after one
untimed warm-up batch; a sample is a batch's time per operation, loop
overhead included. Timing with time.perf_counter_ns() (CLOCK_MONOTONIC, as
the C side).

Prints one line, as bench_sync does:
    median_ns=... p10_ns=... p90_ns=... n=<iterations>          (uncontended)
    median_ns=... p10_ns=... p90_ns=... ops_per_s=... n=...      (lock-contended)
    median_per_s=... p10_per_s=... p90_per_s=... n=...           (pingpong)
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import ctypes
import multiprocessing
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles, quantile  # noqa: E402

MAX_BATCHES = 100
CONTENDED_ROUNDS = 5
PINGPONG_BATCHES = 20
WAIT_TIMEOUT_S = 10.0

ctx = multiprocessing.get_context("fork")


# ---- uncontended ----------------------------------------------------------


def lock_batch(lock, calls):
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        acquire()
        release()
    return (time.perf_counter_ns() - t0) / calls, 0


def event_batch(ev, calls):
    set_, wait, clear, is_set = ev.set, ev.wait, ev.clear, ev.is_set
    bad = 0
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        set_()
        wait()
        clear()
        if is_set():
            bad += 1
    return (time.perf_counter_ns() - t0) / calls, bad


def run_uncontended(obj, batch, iterations):
    nbatch = min(iterations, MAX_BATCHES)
    _, bad = batch(obj, iterations // nbatch)  # warm-up
    samples = []
    for b in range(nbatch):
        per_op, b_bad = batch(obj, iterations // nbatch + (b < iterations % nbatch))
        samples.append(per_op)
        bad += b_bad
    if bad:
        raise RuntimeError(f"the event was still set {bad} times after clear()")
    print_quantiles("ns", sorted(samples), iterations)


# ---- contended --------------------------------------------------------------


def pin_to(k):
    """Pin this process to the k-th CPU it may use, as bench_sync.c does."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[k % len(cpus)]})


def contend(idx, lock, counter, ready, go, times, n):
    pin_to(idx)
    acquire, release = lock.acquire, lock.release
    ready[idx] = 1
    while not go.value:
        pass
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        counter.value += 1
        release()
    times[2 * idx] = t0
    times[2 * idx + 1] = time.perf_counter_ns()


def contended_round(lock, n):
    counter = ctx.RawValue(ctypes.c_uint64, 0)
    ready = ctx.RawArray(ctypes.c_int, 2)
    go = ctx.RawValue(ctypes.c_int, 0)
    times = ctx.RawArray(ctypes.c_int64, 4)
    workers = [
        ctx.Process(target=contend, args=(i, lock, counter, ready, go, times, n))
        for i in range(2)
    ]
    for w in workers:
        w.start()
    while not (ready[0] and ready[1]):
        time.sleep(0)
    go.value = 1
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a worker failed (exit code {w.exitcode})")
        w.close()
    if counter.value != 2 * n:
        raise RuntimeError(f"counter is {counter.value}, expected {2 * n}: the lock let both in")
    start = min(times[0], times[2])
    end = max(times[1], times[3])
    return (end - start) / (2 * n)


def run_contended(iterations):
    lock = ctx.Lock()
    samples = sorted(contended_round(lock, iterations) for _ in range(CONTENDED_ROUNDS))
    med = quantile(samples, 0.5)
    print(
        f"median_ns={med:.3f} p10_ns={quantile(samples, 0.1):.3f} "
        f"p90_ns={quantile(samples, 0.9):.3f} ops_per_s={1e9 / med:.0f} n={iterations}",
        flush=True,
    )


# ---- ping-pong --------------------------------------------------------------


def pong(e1, e2, total):
    pin_to(1)
    for _ in range(total):
        if not e1.wait(WAIT_TIMEOUT_S):
            sys.exit(1)
        e1.clear()
        e2.set()


def ping(e1, e2, n):
    for _ in range(n):
        e1.set()
        if not e2.wait(WAIT_TIMEOUT_S):
            raise RuntimeError("the child did not answer")
        e2.clear()


def run_pingpong(iterations):
    e1, e2 = ctx.Event(), ctx.Event()
    nbatch = min(iterations, PINGPONG_BATCHES)
    warm = iterations // nbatch
    child = ctx.Process(target=pong, args=(e1, e2, warm + iterations))
    child.start()
    pin_to(0)
    ping(e1, e2, warm)
    samples = []
    for b in range(nbatch):
        n = iterations // nbatch + (b < iterations % nbatch)
        t0 = time.perf_counter_ns()
        ping(e1, e2, n)
        samples.append(n * 1e9 / (time.perf_counter_ns() - t0))
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the child failed (exit code {child.exitcode})")
    print_quantiles("per_s", sorted(samples), iterations)


def main():
    modes = ("lock", "sem", "event", "lock-contended", "pingpong")
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=modes)
    ap.add_argument("iterations", type=positive_int)
    args = ap.parse_args()

    if args.mode == "lock":
        run_uncontended(ctx.Lock(), lock_batch, args.iterations)
    elif args.mode == "sem":
        run_uncontended(ctx.Semaphore(1), lock_batch, args.iterations)
    elif args.mode == "event":
        run_uncontended(ctx.Event(), event_batch, args.iterations)
    elif args.mode == "lock-contended":
        run_contended(args.iterations)
    else:
        run_pingpong(args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_sync.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
