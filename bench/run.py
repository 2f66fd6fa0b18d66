#!/usr/bin/env python3
"""Run mproc's benchmarks and print one table.

    python3 bench/run.py --build-dir build [--quick] [--filter start]

Every figure is measured for mproc, for Python's multiprocessing doing the
same work, and for the raw OS floor (the same operation written directly
against the kernel), all in this one run. Each program runs several times,
the implementations interleaved so that the machine's noise hits them alike;
a cell is the median of the programs' medians. The table goes to stdout and,
as markdown, to <build-dir>/bench.md. Progress goes to stderr.

A figure is one entry of FIGURES below: add a row by giving its mproc,
Python and raw commands and, if it has any, its targets.

Exit status: 0 when every program ran (whatever the targets say: benchmarks
are not tests), 1 when a program failed or a program could not be found.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

IMPLS = ("mproc", "python", "raw")
IMPL_TITLES = {"mproc": "mproc", "python": "Python", "raw": "raw floor"}

# A program may not take longer than this (seconds) before it counts as failed.
PROGRAM_TIMEOUT = 600


# --------------------------------------------------------------------------
# Figure definitions
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One implementation of a figure.

    argv is a template: "{bench_bin}" is the directory of the C programs,
    "{python}" the interpreter for the Python side, "{bench_src}" this
    directory, "{n}" the iteration count (n, or n_quick under --quick).
    The program prints one line of key=value pairs; the figure's metric key
    is read from it.
    """

    argv: Tuple[str, ...]
    n: int
    n_quick: int
    # An optional program (one the build may skip, like the Boost
    # comparison): when it was not built, its cell says so instead of
    # failing.
    optional: bool = False
    # A program whose one output line carries several figures' metrics (the
    # `mproc run` figures: a 6 s wrk run gives both failures and
    # requests/s): within one repetition, figures with the same shared
    # argv run it once and read their metrics from the same line.
    shared: bool = False


# Results of a whole run: figure key -> implementation -> median of medians.
Results = Dict[str, Dict[str, float]]


@dataclass(frozen=True)
class Target:
    """A goal checked against the results.

    value(results) gives the measured ratio (None when a figure it needs
    did not run); the target passes when it is <= limit (at_least False) or
    >= limit (at_least True). unit is how the value is shown: "×" for a
    ratio, or a figure's unit for an absolute limit (see absolute()).
    """

    label: str
    value: Callable[[Results], Optional[float]]
    limit: float
    at_least: bool = False
    unit: str = "×"


@dataclass(frozen=True)
class Figure:
    key: str  # unique, dotted: "<group>.<...>"; --filter matches it and title
    title: str
    mproc: Optional[Command]
    python: Optional[Command]
    raw: Optional[Command]
    targets: Tuple[Target, ...] = ()
    metric: str = "median_us"  # key read from the program's output line
    unit: str = "µs"
    lower_is_better: bool = True  # latency: True; throughput: False
    # For a row that has only some implementations (a second floor, another
    # library in the raw column, a second Python class): the figure whose
    # values stand in for the missing ones in the mproc/raw and
    # Python/mproc columns.
    ratio_with: Optional[str] = None

    def command(self, impl: str) -> Optional[Command]:
        return getattr(self, impl)


def figures_by_key() -> Dict[str, Figure]:
    return {f.key: f for f in FIGURES}


def cost_ratio(key_a: str, impl_a: str, key_b: str, impl_b: str):
    """How many times a costs b: a/b for latencies, b/a for throughputs."""

    def value(results: Results) -> Optional[float]:
        a = results.get(key_a, {}).get(impl_a)
        b = results.get(key_b, {}).get(impl_b)
        if a is None or b is None or a <= 0 or b <= 0:
            return None
        fig = figures_by_key()[key_a]
        return a / b if fig.lower_is_better else b / a

    return value


def absolute(key: str, impl: str):
    """The measured value itself, in the figure's unit: for a target that is
    a limit on the time, not a ratio."""

    def value(results: Results) -> Optional[float]:
        return results.get(key, {}).get(impl)

    return value


# ---- start+join ------------------------------------------------------------

BIG_PARENT_MIB = 1024

# Iterations per program run (full, quick), sized for a 2-core noisy VM: a
# 1 GiB parent forks in ~40 ms, a Python spawn takes ~40-60 ms.
START_ITERATIONS = {
    # (method, big parent): {impl: (n, n_quick)}
    ("fork", False): {"mproc": (1000, 300), "python": (200, 60), "raw": (1000, 300)},
    ("fork", True): {"mproc": (20, 10), "python": (20, 10), "raw": (20, 10)},
    ("spawn", False): {"mproc": (500, 150), "python": (25, 8), "raw": (500, 150)},
    ("spawn", True): {"mproc": (100, 30), "python": (15, 5), "raw": (100, 30)},
    ("forkserver", False): {"mproc": (1000, 300), "python": (100, 30), "raw": (1000, 300)},
    ("forkserver", True): {"mproc": (200, 60), "python": (50, 15), "raw": (200, 60)},
}


def size_label(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def start_key(method: str, big: bool) -> str:
    return f"start.{method}.{'big' if big else 'small'}"


def start_figure(method: str, big: bool, targets: Sequence[Target] = ()) -> Figure:
    rss = ("--rss-mib", str(BIG_PARENT_MIB)) if big else ()
    n = START_ITERATIONS[(method, big)]
    bench = "{bench_bin}/bench_start"
    return Figure(
        key=start_key(method, big),
        title=f"start+join {method}, {size_label(BIG_PARENT_MIB) if big else 'small'} parent",
        mproc=Command((bench, f"mproc-{method}", "{n}") + rss, *n["mproc"]),
        python=Command(("{python}", "{bench_src}/py_start.py", method, "{n}") + rss, *n["python"]),
        raw=Command((bench, f"raw-{method}", "{n}") + rss, *n["raw"]),
        targets=tuple(targets),
    )


def start_figures() -> List[Figure]:
    fork_s, spawn_s = start_key("fork", False), start_key("spawn", False)
    fs_s, fs_b = start_key("forkserver", False), start_key("forkserver", True)

    def vs_raw(key: str, limit: float, what: str) -> Target:
        return Target(f"mproc ≤{limit:g}× {what}", cost_ratio(key, "mproc", key, "raw"), limit)

    def py_speedup(key: str, limit: float) -> Target:
        return Target(
            f"Python/mproc ≥{limit:g}×", cost_ratio(key, "python", key, "mproc"), limit, True
        )

    return [
        start_figure("fork", False, [vs_raw(fork_s, 1.3, "raw fork"), py_speedup(fork_s, 10)]),
        start_figure("fork", True, [vs_raw(start_key("fork", True), 1.3, "raw fork")]),
        start_figure(
            "spawn", False, [vs_raw(spawn_s, 1.5, "raw posix_spawn"), py_speedup(spawn_s, 50)]
        ),
        start_figure("spawn", True),
        start_figure(
            "forkserver",
            False,
            [
                Target("mproc ≤2× raw fork", cost_ratio(fs_s, "mproc", fork_s, "raw"), 2.0),
                py_speedup(fs_s, 20),
            ],
        ),
        start_figure(
            "forkserver",
            True,
            [Target("mproc ≤1.2× its small parent", cost_ratio(fs_b, "mproc", fs_s, "mproc"), 1.2)],
        ),
    ]


# ---- guard check ------------------------------------------------------------

# Calls per program run (full, quick). The mproc check takes a few ns, so it
# needs many calls for a batch to dwarf clock_gettime; getpid (a system call)
# and Python take tens to hundreds of ns.
GUARD_ITERATIONS = {
    "mproc": (10_000_000, 2_000_000),
    "python": (1_000_000, 300_000),
    "raw": (1_000_000, 300_000),
}


def guard_figures() -> List[Figure]:
    n = GUARD_ITERATIONS
    bench = "{bench_bin}/bench_guard"
    return [
        Figure(
            key="guard.check",
            title="guard check",
            mproc=Command((bench, "mproc-inherited", "{n}"), *n["mproc"]),
            python=Command(("{python}", "{bench_src}/py_guard.py", "{n}"), *n["python"]),
            raw=Command((bench, "raw-getpid", "{n}"), *n["raw"]),
            targets=(Target("mproc < 5 ns", absolute("guard.check", "mproc"), 5.0, unit="ns"),),
            metric="median_ns",
            unit="ns",
        ),
    ]


# ---- sync objects: lock, semaphore, event -------------------------------------

# Operations per program run (full, quick). Uncontended: an acquire+release
# pair is ~10-20 ns in C and ~35 ns in Python (an Event round ~1.6 µs).
# Contended: operations per worker per round (5 rounds, 2 workers); Python
# does ~2.5 M ops/s there. Ping-pong: round trips, ~5 µs each when both
# processes share a CPU, ~50-60 µs across CPUs, ~150 µs in Python.
SYNC_ITERATIONS = {
    "lock": {"mproc": (10_000_000, 2_000_000), "python": (3_000_000, 1_000_000),
             "raw": (10_000_000, 2_000_000)},
    "lock-contended": {"mproc": (1_000_000, 300_000), "python": (200_000, 60_000),
                       "raw": (1_000_000, 300_000)},
    "sem": {"mproc": (10_000_000, 2_000_000), "python": (3_000_000, 1_000_000),
            "raw": (10_000_000, 2_000_000)},
    "event": {"mproc": (10_000_000, 2_000_000), "python": (200_000, 60_000),
              "raw": (10_000_000, 2_000_000)},
    "pingpong": {"mproc": (20_000, 5_000), "python": (5_000, 1_500),
                 "raw": (20_000, 5_000)},
}


def sync_figures() -> List[Figure]:
    bench = "{bench_bin}/bench_sync"
    py = ("{python}", "{bench_src}/py_sync.py")
    n = SYNC_ITERATIONS

    def cmds(what: str, mproc_mode: str, raw_mode: str):
        return dict(
            mproc=Command((bench, mproc_mode, "{n}"), *n[what]["mproc"]),
            python=Command(py + (what, "{n}"), *n[what]["python"]),
            raw=Command((bench, raw_mode, "{n}"), *n[what]["raw"]),
        )

    def raw_only(what: str, raw_mode: str):
        return dict(mproc=None, python=None, raw=Command((bench, raw_mode, "{n}"), *n[what]["raw"]))

    def vs_raw(key: str, limit: float, what: str, raw_key: Optional[str] = None) -> Target:
        return Target(
            f"mproc ≤{limit:g}× {what}", cost_ratio(key, "mproc", raw_key or key, "raw"), limit
        )

    def py_speedup(key: str, limit: float) -> Target:
        return Target(
            f"Python/mproc ≥{limit:g}×", cost_ratio(key, "python", key, "mproc"), limit, True
        )

    lu, lc = "lock.uncontended", "lock.contended"
    su, eu, ep = "sem.uncontended", "event.uncontended", "event.pingpong"
    return [
        Figure(
            key=lu,
            title="lock uncontended, acquire+release (raw: robust pthread)",
            **cmds("lock", "mproc-lock", "raw-pthread-lock"),
            targets=(vs_raw(lu, 1.0, "robust pthread"), py_speedup(lu, 3)),
            metric="median_ns",
            unit="ns",
        ),
        Figure(
            key=lu + ".futex",
            title="lock uncontended, raw non-robust futex floor",
            **raw_only("lock", "raw-futex-lock"),
            targets=(vs_raw(lu, 2.0, "non-robust futex", lu + ".futex"),),
            metric="median_ns",
            unit="ns",
        ),
        Figure(
            key=lc,
            title="lock contended, 2 processes (raw: robust pthread)",
            **cmds("lock-contended", "mproc-lock-contended", "raw-pthread-lock-contended"),
            targets=(vs_raw(lc, 1.0, "robust pthread"), py_speedup(lc, 10)),
            metric="median_ns",
            unit="ns/op",
        ),
        Figure(
            key=lc + ".futex",
            title="lock contended, raw non-robust futex floor",
            **raw_only("lock-contended", "raw-futex-lock-contended"),
            targets=(vs_raw(lc, 2.0, "non-robust futex", lc + ".futex"),),
            metric="median_ns",
            unit="ns/op",
        ),
        Figure(
            key=su,
            title="semaphore uncontended, acquire+release",
            **cmds("sem", "mproc-sem", "raw-sem"),
            targets=(vs_raw(su, 1.2, "sem_t"), py_speedup(su, 3)),
            metric="median_ns",
            unit="ns",
        ),
        Figure(
            key=eu,
            title="event set+wait+clear+is_set",
            **cmds("event", "mproc-event", "raw-event"),
            targets=(vs_raw(eu, 1.2, "futex flag"), py_speedup(eu, 3)),
            metric="median_ns",
            unit="ns",
        ),
        Figure(
            key=ep,
            title="event ping-pong, 2 processes",
            **cmds("pingpong", "mproc-pingpong", "raw-pingpong"),
            targets=(vs_raw(ep, 1.2, "futex flags"), py_speedup(ep, 3)),
            metric="median_per_s",
            unit="round trips/s",
            lower_is_better=False,
        ),
    ]


# ---- connections -------------------------------------------------------------

# Per program run (full, quick). Ping-pong: round trips, ~45-60 µs each
# across CPUs (mproc, raw pipes, Python alike). Stream: messages in all (5
# rounds): ~1.2 M/s of 64 B, ~0.5 M/s of 4 KiB, ~4-5 k/s of 1 MiB in C;
# Python ~0.4 M/s, ~0.3 M/s and ~2 k/s.
CONN_ITERATIONS = {
    "pingpong": {"mproc": (20_000, 5_000), "python": (10_000, 3_000), "raw": (20_000, 5_000)},
    "stream-64": {"mproc": (1_000_000, 300_000), "python": (300_000, 100_000),
                  "raw": (1_000_000, 300_000)},
    "stream-4k": {"mproc": (500_000, 150_000), "python": (300_000, 100_000),
                  "raw": (500_000, 150_000)},
    "stream-1m": {"mproc": (5_000, 1_500), "python": (2_000, 600), "raw": (5_000, 1_500)},
}


def vs_raw(key: str, limit: float, what: str, raw_key: Optional[str] = None) -> Target:
    return Target(
        f"mproc ≤{limit:g}× {what}", cost_ratio(key, "mproc", raw_key or key, "raw"), limit
    )


def conn_figures() -> List[Figure]:
    bench = "{bench_bin}/bench_conn"
    py = ("{python}", "{bench_src}/py_conn.py")
    n = CONN_ITERATIONS
    pp = "conn.pingpong"

    def stream(size: str, label: str, metric: str, unit: str, targets=()) -> Figure:
        key = f"conn.stream.{size}"
        what = f"stream-{size}"
        return Figure(
            key=key,
            title=f"conn one-way {label} messages (raw: socketpair)",
            mproc=Command((bench, f"mproc-{what}", "{n}"), *n[what]["mproc"]),
            python=Command(py + (what, "{n}"), *n[what]["python"]),
            raw=Command((bench, f"raw-{what}", "{n}"), *n[what]["raw"]),
            targets=tuple(t(key) for t in targets),
            metric=metric,
            unit=unit,
            lower_is_better=False,
        )

    return [
        Figure(
            key=pp,
            title="conn ping-pong 64 B round trip (raw: 2 pipes)",
            mproc=Command((bench, "mproc-pingpong", "{n}"), *n["pingpong"]["mproc"]),
            python=Command(py + ("pingpong", "{n}"), *n["pingpong"]["python"]),
            raw=Command((bench, "raw-pipe-pingpong", "{n}"), *n["pingpong"]["raw"]),
            targets=(vs_raw(pp, 1.2, "raw pipes"),),
        ),
        Figure(
            key=pp + ".socketpair",
            title="conn ping-pong 64 B, raw socketpair floor",
            mproc=None,
            python=None,
            raw=Command((bench, "raw-socketpair-pingpong", "{n}"), *n["pingpong"]["raw"]),
            ratio_with=pp,
        ),
        stream("64", "64 B", "median_per_s", "msg/s"),
        stream("4k", "4 KiB", "median_mb_s", "MB/s"),
        stream("1m", "1 MiB", "median_mb_s", "MB/s",
               [lambda k: vs_raw(k, 1.5, "raw socketpair")]),
    ]


# ---- queues -----------------------------------------------------------------

# Per program run (full, quick). Throughput: messages per round (5 rounds
# plus a tenth): mproc ~7-10 M/s, the raw SPSC ring ~30 M/s, Boost ~6 M/s,
# Python ~150-300 k/s. Ping-pong: round trips, ~0.2 µs spinning, ~45 µs
# sleeping, ~50 µs in Python. Wake: messages 2 ms apart.
QUEUE_ITERATIONS = {
    "1-1": {"mproc": (1_000_000, 300_000), "python": (60_000, 20_000),
            "raw": (2_000_000, 600_000), "boost": (1_000_000, 300_000)},
    "2-2": {"mproc": (1_000_000, 300_000), "python": (60_000, 20_000)},
    "pingpong": {"mproc": (50_000, 20_000), "python": (10_000, 3_000),
                 "raw": (20_000, 5_000), "spsc": (200_000, 50_000)},
    "pingpong-nospin": {"mproc": (20_000, 5_000)},
    "wake": {"mproc": (500, 150), "python": (500, 150), "raw": (500, 150)},
}


def queue_figures() -> List[Figure]:
    bench = "{bench_bin}/bench_queue"
    pipes = ("{bench_bin}/bench_conn", "raw-pipe-pingpong", "{n}")
    py = ("{python}", "{bench_src}/py_queue.py")
    n = QUEUE_ITERATIONS
    q11, q22, pp, wake = "queue.1-1", "queue.2-2", "queue.pingpong", "queue.wake"
    rate = dict(metric="median_per_s", unit="msg/s", lower_is_better=False)

    def simple(shape: str, key: str) -> Figure:
        return Figure(
            key=key + ".simple",
            title=f"queue {shape} 64 B, Python SimpleQueue",
            mproc=None,
            python=Command(py + (f"simple-{shape.replace('->', '-')}", "{n}"),
                           *n[shape.replace("->", "-")]["python"]),
            raw=None,
            ratio_with=key,
            **rate,
        )

    return [
        Figure(
            key=q11,
            title="queue 1->1 64 B, Python Queue (raw: SPSC ring)",
            mproc=Command((bench, "mproc-1-1", "{n}"), *n["1-1"]["mproc"]),
            python=Command(py + ("queue-1-1", "{n}"), *n["1-1"]["python"]),
            raw=Command((bench, "raw-spsc-1-1", "{n}"), *n["1-1"]["raw"]),
            **rate,
        ),
        simple("1->1", q11),
        Figure(
            key=q11 + ".boost",
            title="queue 1->1 64 B, Boost message_queue in the raw column",
            mproc=None,
            python=None,
            raw=Command(("{bench_bin}/bench_boost_mq", "boost-1-1", "{n}"), *n["1-1"]["boost"],
                        optional=True),
            ratio_with=q11,
            **rate,
        ),
        Figure(
            key=q22,
            title="queue 2->2 64 B, Python Queue (no raw floor)",
            mproc=Command((bench, "mproc-2-2", "{n}"), *n["2-2"]["mproc"]),
            python=Command(py + ("queue-2-2", "{n}"), *n["2-2"]["python"]),
            raw=None,
            **rate,
        ),
        simple("2->2", q22),
        Figure(
            key=pp,
            title="queue ping-pong 64 B round trip, default spin (raw: 2 pipes)",
            mproc=Command((bench, "mproc-pingpong", "{n}"), *n["pingpong"]["mproc"]),
            python=Command(py + ("pingpong", "{n}"), *n["pingpong"]["python"]),
            raw=Command(pipes, *n["pingpong"]["raw"]),
        ),
        Figure(
            key=pp + ".nospin",
            title="queue ping-pong 64 B round trip, spin_us -1 (raw: 2 pipes)",
            mproc=Command((bench, "mproc-pingpong-nospin", "{n}"), *n["pingpong-nospin"]["mproc"]),
            python=None,
            raw=Command(pipes, *n["pingpong"]["raw"]),
        ),
        Figure(
            key=pp + ".spsc",
            title="queue ping-pong, raw SPSC ring spin-then-futex floor",
            mproc=None,
            python=None,
            raw=Command((bench, "raw-spsc-pingpong", "{n}"), *n["pingpong"]["spsc"]),
            ratio_with=pp,
        ),
        Figure(
            key=wake,
            title="queue wake-up of a sleeping consumer (raw: futex wake)",
            mproc=Command((bench, "mproc-wake", "{n}"), *n["wake"]["mproc"]),
            python=Command(py + ("wake", "{n}"), *n["wake"]["python"]),
            raw=Command((bench, "raw-futex-wake", "{n}"), *n["wake"]["raw"]),
        ),
    ]


# ---- worker pool -------------------------------------------------------------

# Per program run (full, quick): items per map for the x -> x + 1 rows
# (100,000: the automatic chunk size, mproc's and Pool.map's default,
# depends on it: 12,500 on 2 workers), tasks per map for the CPU-bound rows.
# mproc does ~5-10 M items/s at chunk 1 and ~100-150 M/s at chunk 100 and
# above (20 maps per run); Python's Pool ~60 k/s at chunk 1, ~3 M/s at 100,
# ~7 M/s at its default; the executor ~15 k/s, ~1 M/s, ~3 M/s (5 maps per
# run). The CPU-bound tasks take ~1 ms each.
POOL_ITEMS = 100_000
POOL_ITERATIONS = {
    "1": {"mproc": (POOL_ITEMS, POOL_ITEMS), "pool": (100_000, 30_000),
          "executor": (30_000, 10_000)},
    "100": {"mproc": (POOL_ITEMS, POOL_ITEMS), "pool": (POOL_ITEMS, POOL_ITEMS),
            "executor": (POOL_ITEMS, POOL_ITEMS)},
    "auto": {"mproc": (POOL_ITEMS, POOL_ITEMS), "pool": (POOL_ITEMS, POOL_ITEMS),
             "executor": (POOL_ITEMS, POOL_ITEMS), "raw": (POOL_ITEMS, POOL_ITEMS)},
    "cpu": {"mproc": (200, 200), "python": (200, 200)},
}


def pool_figures() -> List[Figure]:
    bench = "{bench_bin}/bench_pool"
    py = ("{python}", "{bench_src}/py_pool.py")
    n = POOL_ITERATIONS
    auto, c1 = "pool.map.auto", "pool.map.1"
    cpu1, cpu2 = "pool.cpu.1", "pool.cpu.2"
    rate = dict(metric="median_per_s", unit="tasks/s", lower_is_better=False)

    def py_speedup(key: str, limit: float, what: str) -> Target:
        return Target(
            f"Python/mproc ≥{limit:g}×{what}", cost_ratio(key, "python", key, "mproc"), limit, True
        )

    def chunk_rows(chunk: str, label: str, targets=()) -> List[Figure]:
        key = f"pool.map.{chunk}"
        is_auto = chunk == "auto"
        return [
            Figure(
                key=key,
                title=f"pool map x+1, {label}, Python Pool"
                + (" (raw: static split, no dispatch)" if is_auto else " (raw: auto row's)"),
                mproc=Command((bench, f"mproc-map-{chunk}", "{n}"), *n[chunk]["mproc"]),
                python=Command(py + (f"pool-{chunk}", "{n}"), *n[chunk]["pool"]),
                raw=Command((bench, "raw-split", "{n}"), *n[chunk]["raw"]) if is_auto else None,
                targets=tuple(targets),
                ratio_with=None if is_auto else auto,
                **rate,
            ),
            Figure(
                key=key + ".executor",
                title=f"pool map x+1, {label}, Python ProcessPoolExecutor"
                + (" (Pool's chunk)" if is_auto else ""),
                mproc=None,
                python=Command(py + (f"executor-{chunk}", "{n}"), *n[chunk]["executor"]),
                raw=None,
                ratio_with=key,
                **rate,
            ),
        ]

    def cpu_row(workers: int, targets=()) -> Figure:
        what = "1 worker" if workers == 1 else f"{workers} workers"
        return Figure(
            key=f"pool.cpu.{workers}",
            title=f"pool map 1 ms CPU-bound tasks, {what} (no raw floor)",
            mproc=Command((bench, f"mproc-cpu-{workers}", "{n}"), *n["cpu"]["mproc"]),
            python=Command(py + (f"cpu-{workers}", "{n}"), *n["cpu"]["python"]),
            raw=None,
            targets=tuple(targets),
            **rate,
        )

    return (
        chunk_rows("1", "chunk 1", [py_speedup(c1, 20, "")])
        + chunk_rows("100", "chunk 100")
        + chunk_rows("auto", "auto chunk", [py_speedup(auto, 10, " (Pool's default chunk)")])
        + [
            cpu_row(1),
            cpu_row(2, [Target("mproc ≥1.8× 1 worker", cost_ratio(cpu1, "mproc", cpu2, "mproc"),
                               1.8, True)]),
        ]
    )


# ---- the supervisor, `mproc run`, against gunicorn ---------------------------

# bench_run.py drives both: mproc run serving examples/http_prefork (or
# bench/idle_worker) and gunicorn (sync workers) serving bench/wsgi_hello.py.
# gunicorn sits in the Python column. Per program run (full, quick): kills,
# HUPs, TTINs, hung workers, idle workers. A replacement takes ~2 ms in mproc
# and ~10-30 ms in gunicorn; a reload run is 6 s of wrk; a hung mproc worker
# costs 1 s (--timeout 1), a gunicorn one 2-3 s; 300 gunicorn workers take
# ~15-20 s to start (the master sleeps up to 0.1 s between two forks).
RUN_ITERATIONS = {
    "replace": {"mproc": (20, 8), "gunicorn": (20, 8)},
    "reload": {"mproc": (3, 3), "gunicorn": (3, 3)},
    "upgrade": {"mproc": (3, 3), "gunicorn": (3, 3)},
    "reload-heavy": {"mproc": (3, 3), "gunicorn": (3, 3)},
    "ttin": {"mproc": (20, 8), "gunicorn": (20, 8)},
    "timeout": {"mproc": (5, 3), "gunicorn": (5, 3)},
    "idle": {"mproc": (1000, 1000), "gunicorn": (300, 300)},
    "prefork": {"mproc": (40, 12)},
}


def run_figures() -> List[Figure]:
    drv = ("{python}", "{bench_src}/bench_run.py")
    bins = ("--mproc", "{mproc_cli}", "--http", "{http_prefork}",
            "--idle-worker", "{bench_bin}/idle_worker", "--prefork", "{bench_bin}/prefork_server")
    n = RUN_ITERATIONS

    def cmds(what: str, mproc: bool = True, gunicorn: bool = True) -> Dict[str, Optional[Command]]:
        def one(impl: str) -> Command:
            return Command(drv + (f"{impl}-{what}", "{n}") + bins, *n[what][impl], shared=True)

        return dict(mproc=one("mproc") if mproc else None,
                    python=one("gunicorn") if gunicorn else None, raw=None)

    def at_most(key: str, limit: float, unit: str, label: str = "") -> Target:
        return Target(label or f"mproc ≤{limit:g} {unit}", absolute(key, "mproc"), limit, unit=unit)

    rep, ans, rl = "run.replace.ready", "run.replace.answer", "run.reload.failed"
    ttin, hang = "run.ttin", "run.timeout"
    idle_t, idle_m, idle_c = "run.idle.start", "run.idle.rss", "run.idle.cpu"
    ms = dict(metric="median_ms", unit="ms")
    pre = "run.prefork.ready"
    return [
        Figure(
            key=pre,
            title="run: library prefork worker (fork, no exec) SIGKILLed -> replacement ready "
                  "(log), 4 workers (no gunicorn equivalent)",
            **cmds("prefork", gunicorn=False),
            targets=(at_most(pre, 1, "ms"),),
            **ms,
        ),
        Figure(
            key=rep,
            title="run: worker SIGKILLed -> replacement ready (log), 4 workers; gunicorn's: "
                  "row below",
            **cmds("replace", gunicorn=False),
            targets=(at_most(rep, 5, "ms"),),
            ratio_with=ans,
            **ms,
        ),
        Figure(
            key=ans,
            title="run: worker SIGKILLed -> first answer from the new pid, 4 workers, gunicorn",
            **cmds("replace"),
            targets=(at_most(ans, 5, "ms"),),
            metric="answer_ms",
            unit="ms",
        ),
        Figure(
            key=rl,
            title="run: failed requests, wrk -c32 6 s through 3 HUP reloads, gunicorn",
            **cmds("reload"),
            targets=(Target("mproc = 0", absolute(rl, "mproc"), 0, unit="failed"),),
            metric="failed",
            unit="failed",
        ),
        Figure(
            key="run.reload.heavy",
            title="run: failed requests, wrk -c256 6 s through 3 HUP reloads, gunicorn",
            **cmds("reload-heavy"),
            targets=(Target("mproc = 0", absolute("run.reload.heavy", "mproc"), 0,
                            unit="failed"),),
            metric="failed",
            unit="failed",
        ),
        Figure(
            key="run.upgrade.failed",
            title="run: failed requests, wrk -c32 6 s through 3 binary upgrades (USR2; "
                  "gunicorn: USR2, then TERM to the old master)",
            **cmds("upgrade"),
            targets=(Target("mproc = 0", absolute("run.upgrade.failed", "mproc"), 0,
                            unit="failed"),),
            metric="failed",
            unit="failed",
        ),
        Figure(
            key="run.upgrade.time",
            title="run: USR2 -> new generation of 4 up (mproc: last READY=1, under that wrk "
                  "load; gunicorn: last worker booted)",
            **cmds("upgrade"),
            **ms,
        ),
        Figure(
            key="run.reload.rps",
            title="run: requests/s during those reloads, gunicorn",
            **cmds("reload"),
            metric="rps",
            unit="req/s",
            lower_is_better=False,
        ),
        Figure(
            key=ttin,
            title="run: SIGTTIN -> new worker ready (log; gunicorn: first answer from it)",
            **cmds("ttin"),
            targets=(at_most(ttin, 2, "ms"),),
            **ms,
        ),
        Figure(
            key=hang,
            title="run: hung worker killed, overshoot past --timeout (1 s; gunicorn 2 s)",
            **cmds("timeout"),
            targets=(at_most(hang, 100, "ms"),),
            **ms,
        ),
        Figure(
            key=idle_t,
            title="run: start -> 1,000 idle workers ready (gunicorn: 300 booted)",
            **cmds("idle"),
            targets=(at_most(idle_t, 2000, "ms"),),
            metric="start_ms",
            unit="ms",
        ),
        Figure(
            key=idle_m,
            title="run: master RSS, 1,000 idle workers (gunicorn: 300)",
            **cmds("idle"),
            targets=(Target("mproc < 20 MiB", absolute(idle_m, "mproc"), 20, unit="MiB"),),
            metric="rss_mib",
            unit="MiB",
        ),
        Figure(
            key=idle_c,
            title="run: master CPU idle 10 s, 1,000 workers (gunicorn: 300)",
            **cmds("idle"),
            targets=(Target("mproc < 1%", absolute(idle_c, "mproc"), 1, unit="%"),),
            metric="cpu_pct",
            unit="% of a core",
        ),
    ]


# Every figure, in table order.
FIGURES: List[Figure] = (
    start_figures() + guard_figures() + sync_figures() + conn_figures() + queue_figures()
    + pool_figures() + run_figures()
)


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


@dataclass
class Cell:
    """All runs of one implementation of one figure."""

    medians: List[float] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    not_built: bool = False  # an optional program that is not there

    def value(self) -> Optional[float]:
        return statistics.median(self.medians) if self.medians else None


class ProgramError(Exception):
    pass


def parse_output(stdout: str) -> Dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise ProgramError("no output")
    fields = {}
    for word in lines[-1].split():
        k, sep, v = word.partition("=")
        if not sep:
            raise ProgramError(f"malformed output line: {lines[-1]!r}")
        fields[k] = v
    return fields


def run_program(argv: List[str], metric: str, n: int,
                fields: Optional[Dict[str, str]] = None) -> Tuple[float, Dict[str, str]]:
    """Run argv (unless fields, an earlier run's output line, is given)
    and read metric from its output: (value, the output's fields)."""
    if fields is None:
        fields = run_fields(argv)
    try:
        value = float(fields[metric])
        got_n = int(fields.get("n", n))
    except (KeyError, ValueError) as e:
        raise ProgramError(f"no valid {metric} in {fields!r}") from e
    if got_n != n:
        raise ProgramError(f"ran {got_n} iterations, asked {n}")
    return value, fields


def run_fields(argv: List[str]) -> Dict[str, str]:
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=PROGRAM_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProgramError(str(e)) from e
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1:] or ["(no message)"]
        status = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        raise ProgramError(f"{status}: {why[0]}")
    return parse_output(proc.stdout)


def expand(cmd: Command, quick: bool, paths: Dict[str, str]) -> Tuple[List[str], int]:
    n = cmd.n_quick if quick else cmd.n
    return [arg.format(n=n, **paths) for arg in cmd.argv], n


def run_all(
    figures: List[Figure], reps: int, quick: bool, paths: Dict[str, str]
) -> Dict[str, Dict[str, Cell]]:
    cells = {f.key: {impl: Cell() for impl in IMPLS if f.command(impl)} for f in figures}
    for rep in range(reps):
        # Shared commands' outputs (or errors) in this repetition, by argv.
        shared: Dict[Tuple[str, ...], object] = {}
        for fig in figures:
            impls = [impl for impl in IMPLS if fig.command(impl)]
            # Rotate the order each repetition: no implementation always runs
            # first (cold) or right after a particular other one.
            k = rep % len(impls)
            for impl in impls[k:] + impls[:k]:
                cmd = fig.command(impl)
                argv, n = expand(cmd, quick, paths)
                cell = cells[fig.key][impl]
                if cmd.optional and not os.access(argv[0], os.X_OK):
                    cell.not_built = True
                    if rep == 0:
                        print(f"[{rep + 1}/{reps}] {fig.key:<24} {impl:<7} not built: {argv[0]}",
                              file=sys.stderr, flush=True)
                    continue
                try:
                    earlier = shared.get(tuple(argv)) if cmd.shared else None
                    if isinstance(earlier, ProgramError):
                        raise earlier
                    try:
                        v, fields = run_program(argv, fig.metric, n, earlier)
                    except ProgramError as e:
                        if cmd.shared and earlier is None:
                            shared[tuple(argv)] = e
                        raise
                    if cmd.shared:
                        shared[tuple(argv)] = fields
                    cell.medians.append(v)
                    note = f"{v:.1f} {fig.unit}" + (" (same run)" if earlier else "")
                except ProgramError as e:
                    cell.errors.append(str(e))
                    note = f"FAILED: {e}"
                print(
                    f"[{rep + 1}/{reps}] {fig.key:<24} {impl:<7} {note}",
                    file=sys.stderr,
                    flush=True,
                )
    return cells


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------


def fmt_value(v: Optional[float]) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ratio(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}×" if v < 10 else f"{v:.0f}×"


def fmt_target(t: Target, results: Results) -> str:
    v = t.value(results)
    if v is None:
        return f"{t.label}: n/a"
    ok = v >= t.limit if t.at_least else v <= t.limit
    shown = fmt_ratio(v) if t.unit == "×" else f"{fmt_value(v)} {t.unit}"
    return f"{t.label}: {'PASS' if ok else 'MISS'} ({shown})"


def row_ratio(fig: Figure, impl_a: str, impl_b: str, results: Results) -> Optional[float]:
    """A ratio column of fig's row. When the row has one of the two
    implementations, the other may come from its ratio_with figure; a row
    with neither shows no ratio (the ratio_with row has it)."""
    has_a, has_b = fig.command(impl_a) is not None, fig.command(impl_b) is not None
    if not (has_a and has_b) and not (fig.ratio_with and (has_a or has_b)):
        return None
    key_a = fig.key if has_a else fig.ratio_with
    key_b = fig.key if has_b else fig.ratio_with
    return cost_ratio(key_a, impl_a, key_b, impl_b)(results)


def build_rows(
    figures: List[Figure], cells: Dict[str, Dict[str, Cell]]
) -> Tuple[List[str], List[List[str]], int]:
    results: Results = {}
    for key, by_impl in cells.items():
        results[key] = {impl: c.value() for impl, c in by_impl.items() if c.value() is not None}

    header = [
        "figure",
        "mproc",
        "Python",
        "raw floor",
        "mproc/raw",
        "Python/mproc",
        "targets",
    ]
    rows = []
    failed = 0
    for fig in figures:
        r = results[fig.key]
        vals = []
        for impl in IMPLS:
            cell = cells[fig.key].get(impl)
            if cell is None:
                vals.append("")
            elif cell.not_built:
                vals.append("not built")
            elif cell.errors and not cell.medians:
                vals.append("FAILED")
            else:
                vals.append(fmt_value(r.get(impl)) + (" (!)" if cell.errors else ""))
            if cell is not None and cell.errors:
                failed += 1
        rows.append(
            [f"{fig.title} ({fig.unit})"]
            + vals
            + [
                fmt_ratio(row_ratio(fig, "mproc", "raw", results)),
                fmt_ratio(row_ratio(fig, "python", "mproc", results)),
                "; ".join(fmt_target(t, results) for t in fig.targets),
            ]
        )
    return header, rows, failed


def text_table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r: List[str]) -> str:
        out = []
        for i, cell in enumerate(r):
            # figure and targets left-aligned, numbers right-aligned
            left = i == 0 or i == len(r) - 1
            out.append(cell.ljust(widths[i]) if left else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    def line(r: List[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"

    align = ["---"] + ["---:"] * (len(header) - 2) + ["---"]
    return "\n".join([line(header), "| " + " | ".join(align) + " |"] + [line(r) for r in rows])


def machine_info(python: str) -> List[str]:
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    cpu = platform.machine()
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    thp = read("/sys/kernel/mm/transparent_hugepage/enabled").strip() or "n/a"
    try:
        pyver = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pyver = "?"
    u = platform.uname()
    return [
        f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {os.cpu_count()} CPUs ({cpu}), load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"kernel:  {u.system} {u.release} {u.machine}, transparent hugepages: {thp}",
        f"python:  {python} ({pyver})",
    ]


def details(figures: List[Figure], cells: Dict[str, Dict[str, Cell]]) -> List[str]:
    out = []
    for fig in figures:
        for impl, cell in cells[fig.key].items():
            runs = ", ".join(fmt_value(v) for v in cell.medians) or "none"
            out.append(f"- {fig.key} {impl}: {runs}")
            out.extend(f"  - error: {e}" for e in cell.errors)
    return out


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def find_bin_dir(build_dir: str, bin_dir: Optional[str]) -> str:
    candidates = [bin_dir] if bin_dir else [
        os.path.join(build_dir, "bench"),
        build_dir,
        os.path.join(build_dir, "bin"),
    ]
    for d in candidates:
        if os.access(os.path.join(d, "bench_start"), os.X_OK):
            return os.path.abspath(d)
    sys.exit(
        f"run.py: no bench_start in {', '.join(candidates)}: build first "
        f"(cmake -S . -B {build_dir} && cmake --build {build_dir})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description="Run mproc's benchmarks and print one table.")
    ap.add_argument("--build-dir", default="build", help="CMake build directory (default: build)")
    ap.add_argument("--bin-dir", help="where the bench programs are (default: searched)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and iterations")
    ap.add_argument("--reps", type=int, help="repetitions of each program (default 5, quick 3)")
    ap.add_argument(
        "--filter", action="append", default=[],
        help="only figures whose key or title contains this (repeatable)",
    )
    ap.add_argument(
        "--python", default=sys.executable,
        help="interpreter for the Python figures (default: the one running this)",
    )
    ap.add_argument("--list", action="store_true", help="list the figures and exit")
    args = ap.parse_args()

    figures = [
        f for f in FIGURES
        if not args.filter or any(s in f.key or s in f.title for s in args.filter)
    ]
    if args.list:
        for f in figures:
            print(f"{f.key:<24} {f.title}")
        return 0
    if not figures:
        print(f"run.py: no figure matches {args.filter}", file=sys.stderr)
        return 1
    reps = args.reps or (3 if args.quick else 5)
    if reps < 1:
        ap.error("--reps must be at least 1")

    paths = {
        "bench_bin": find_bin_dir(args.build_dir, args.bin_dir),
        "bench_src": HERE,
        "python": args.python,
        # the `mproc run` figures: the CLI and the prefork HTTP example
        "mproc_cli": os.path.abspath(os.path.join(args.build_dir, "tools", "mproc")),
        "http_prefork": os.path.abspath(os.path.join(args.build_dir, "examples", "http_prefork")),
    }
    info = machine_info(args.python)
    for line in info:
        print(line, file=sys.stderr)
    print(file=sys.stderr, flush=True)

    cells = run_all(figures, reps, args.quick, paths)
    header, rows, failed = build_rows(figures, cells)

    notes = [
        f"Each cell: median over {reps} runs of each program's median"
        f"{' (quick)' if args.quick else ''}; implementations interleaved.",
        "mproc/raw: times the raw OS floor mproc costs (1.00× = the floor).",
        "Python/mproc: times faster mproc is than Python's multiprocessing.",
        "(!): some runs failed; FAILED: every run failed (see stderr).",
    ]
    text = "\n".join(info + [""] + [text_table(header, rows)] + [""] + notes)
    print(text, flush=True)

    md = "\n".join(
        ["# mproc benchmarks", ""]
        + [f"- {line}" for line in info]
        + ["", markdown_table(header, rows), ""]
        + [f"- {note}" for note in notes]
        + ["", "## Every run (program medians)", ""]
        + details(figures, cells)
        + [""]
    )
    md_path = os.path.join(args.build_dir, "bench.md")
    try:
        os.makedirs(args.build_dir, exist_ok=True)
        with open(md_path, "w") as f:
            f.write(md)
        print(f"\nwritten: {md_path}", file=sys.stderr)
    except OSError as e:
        print(f"run.py: cannot write {md_path}: {e}", file=sys.stderr)
        return 1
    if failed:
        print(f"run.py: {failed} program(s) failed at least once", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
