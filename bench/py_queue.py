#!/usr/bin/env python3
"""Throughput, round trip and wake-up of multiprocessing's queues.

    py_queue.py <mode> <iterations>

The Python side of bench_queue.c, mode for mode (objects and children from
multiprocessing.get_context("fork"); messages are 64-byte bytes objects):

  queue-1-1, queue-2-2, simple-1-1, simple-2-2
        throughput of Queue() (unbounded, with its feeder thread) or
        SimpleQueue(), 1 producer -> 1 consumer or 2 -> 2: <iterations>
        messages in all, split among the producers, each producer then puts
        a sentinel and each consumer stops at the first sentinel it gets.
        Producer i is pinned to CPU i, consumer i to CPU i + 1 (modulo the
        CPUs). The processes wait on an Event; a round runs from its set()
        to the last consumer's end. One untimed round of a tenth of the
        messages, then 5 timed rounds (fresh processes); a sample is a
        round's messages per second. Consumers check each producer's order
        and the counts must add up.
  pingpong
        two Queues, one each way: the parent puts a message and gets the
        answer, a child gets and puts it back (pinned to two CPUs);
        20 timed batches after an untimed one, a sample is a batch's time
        per round trip in microseconds.
  wake
        a consumer child (pinned to one CPU) blocks in Queue.get(); the
        parent (pinned to another) waits until the consumer is done with
        the last message, sleeps 2 ms, reads the clock and puts a message
        carrying that time; the consumer reads the clock as get() returns.
        A sample is the difference in microseconds (<iterations> messages
        after 5 untimed ones).

Timing with time.perf_counter_ns() (CLOCK_MONOTONIC, as the C side, and
the same clock in every process). Prints one line, as bench_queue does:
    median_per_s=... p10_per_s=... p90_per_s=... n=<iterations>   (throughput)
    median_us=... p10_us=... p90_us=... n=<iterations>            (pingpong, wake)
Any error is printed to stderr and ends the program with status 1.
Standard library only.
"""

import ctypes
import multiprocessing
import os
import struct
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from py_util import ArgumentParser, positive_int, print_quantiles  # noqa: E402

MSG = struct.Struct("<IIQq40x")  # producer, sentinel, seq, time: 64 bytes
assert MSG.size == 64
ROUNDS = 5
PINGPONG_BATCHES = 20
WAKE_WARMUP = 5
WAKE_GAP_S = 0.002

ctx = multiprocessing.get_context("fork")
ALLOWED_CPUS = sorted(os.sched_getaffinity(0))


def pin_to(k):
    """Pin this process to the k-th CPU of those this program started with,
    as bench_util.c does."""
    os.sched_setaffinity(0, {ALLOWED_CPUS[k % len(ALLOWED_CPUS)]})


# ---- throughput ---------------------------------------------------------------


def producer(idx, q, n, ready, go):
    pin_to(idx)
    put, pack = q.put, MSG.pack
    ready.release()
    go.wait()
    for i in range(n):
        put(pack(idx, 0, i, 0))
    put(pack(idx, 1, 0, 0))
    if hasattr(q, "join_thread"):  # Queue: flush the feeder thread before exiting
        q.close()
        q.join_thread()


def consumer(idx, q, nprod, ncons, ready, go, received, ends):
    pin_to(idx + 1)
    get, unpack = q.get, MSG.unpack
    nxt = [0] * nprod
    got = 0
    ready.release()
    go.wait()
    while True:
        p, sentinel, seq, _ = unpack(get())
        if sentinel:
            break
        if seq < nxt[p] or (ncons == 1 and seq != nxt[p]):
            sys.exit(3)
        nxt[p] = seq + 1
        got += 1
    ends[idx] = time.perf_counter_ns()
    received[idx] = got


def throughput_round(make_queue, parties, total):
    q = make_queue()
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    received = ctx.RawArray(ctypes.c_uint64, parties)
    ends = ctx.RawArray(ctypes.c_int64, parties)
    procs = [
        ctx.Process(
            target=producer,
            args=(i, q, total // parties + (i < total % parties), ready, go),
        )
        for i in range(parties)
    ] + [
        ctx.Process(target=consumer, args=(i, q, parties, parties, ready, go, received, ends))
        for i in range(parties)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    t0 = time.perf_counter_ns()
    go.set()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a child failed (exit code {p.exitcode})")
        p.close()
    if sum(received) != total:
        raise RuntimeError(f"the consumers got {sum(received)} messages, {total} were put")
    return total * 1e9 / (max(ends) - t0)


def run_throughput(make_queue, parties, iterations):
    throughput_round(make_queue, parties, iterations // 10 + 1)
    samples = [throughput_round(make_queue, parties, iterations) for _ in range(ROUNDS)]
    print_quantiles("per_s", sorted(samples), iterations)


# ---- ping-pong ----------------------------------------------------------------


def pong(q1, q2, total):
    pin_to(1)
    get, put = q1.get, q2.put
    for _ in range(total):
        put(get())
    q2.close()
    q2.join_thread()


def ping(q1, q2, n):
    put, get, pack = q1.put, q2.get, MSG.pack
    for i in range(n):
        put(pack(0, 0, i, 0))
        if MSG.unpack(get())[2] != i:
            raise RuntimeError("the answer is not the message sent")


def run_pingpong(iterations):
    q1, q2 = ctx.Queue(), ctx.Queue()
    nbatch = min(iterations, PINGPONG_BATCHES)
    warm = iterations // nbatch
    pin_to(0)
    child = ctx.Process(target=pong, args=(q1, q2, warm + iterations))
    child.start()
    ping(q1, q2, warm)
    samples = []
    for b in range(nbatch):
        n = iterations // nbatch + (b < iterations % nbatch)
        t0 = time.perf_counter_ns()
        ping(q1, q2, n)
        samples.append((time.perf_counter_ns() - t0) / 1e3 / n)
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the child failed (exit code {child.exitcode})")
    print_quantiles("us", sorted(samples), iterations)


# ---- wake-up of a sleeping consumer ---------------------------------------------


def wake_consumer(q, total, lat, done):
    pin_to(1)
    get, unpack = q.get, MSG.unpack
    for i in range(total):
        _, _, seq, t_put = unpack(get())
        lat[i] = (time.perf_counter_ns() - t_put) / 1e3
        if seq != i:
            sys.exit(1)
        done.value = i + 1


def run_wake(iterations):
    total = WAKE_WARMUP + iterations
    q = ctx.Queue()
    lat = ctx.RawArray(ctypes.c_double, total)
    done = ctx.RawValue(ctypes.c_uint32, 0)
    pin_to(0)
    child = ctx.Process(target=wake_consumer, args=(q, total, lat, done))
    child.start()
    pack = MSG.pack
    for i in range(total):
        while done.value != i:
            time.sleep(0.0001)
        time.sleep(WAKE_GAP_S)
        q.put(pack(0, 0, i, time.perf_counter_ns()))
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the child failed (exit code {child.exitcode})")
    print_quantiles("us", sorted(lat[WAKE_WARMUP:]), iterations)


def main():
    modes = ("queue-1-1", "queue-2-2", "simple-1-1", "simple-2-2", "pingpong", "wake")
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=modes)
    ap.add_argument("iterations", type=positive_int)
    args = ap.parse_args()
    if args.mode == "pingpong":
        run_pingpong(args.iterations)
    elif args.mode == "wake":
        run_wake(args.iterations)
    else:
        kind, shape = args.mode.split("-", 1)
        make_queue = ctx.Queue if kind == "queue" else ctx.SimpleQueue
        run_throughput(make_queue, int(shape.split("-")[0]), args.iterations)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # any failure: one line on stderr, status 1
        print(f"py_queue.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
