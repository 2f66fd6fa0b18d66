#!/usr/bin/env python3
"""`mproc run` against gunicorn: the supervisor figures (issue 7).

    bench_run.py <mproc|gunicorn>-<figure> <n> --mproc BIN --http BIN --idle-worker BIN

Figures (n is what is repeated or counted):

    replace  n SIGKILLs of a worker (4 workers serving HTTP): time from the
             kill to the replacement's "ready" log line (mproc) and to the
             first answer from the new pid (both)
    reload   wrk -t2 -c32 for 6 s through n HUP reloads (4 workers):
             failed requests (socket errors + non-2xx) and requests/s
    reload-heavy  the same with 256 connections (-c256)
    upgrade  the same through n binary upgrades (mproc: USR2, the master
             re-executes itself; gunicorn: USR2 starts a new master, whose
             workers boot, then TERM to the old master, as its docs say)
    ttin     n SIGTTINs (each followed by a TTOU): time from the signal to
             the new worker's "ready" log line (mproc) / first answer (gunicorn)
    timeout  n hung workers (mproc: --timeout 1, a worker that sends READY=1
             and never beats; gunicorn: --timeout 2, a request that sleeps):
             how long after the deadline the worker is killed
    idle     n idle workers: master start -> all up, master RSS, master CPU
             over 10 s idle

Prints one line of key=value pairs (run.py reads it). Every log line is
timestamped on arrival here (the master's stderr is a pipe read with
select, never left waiting more than a request's time), on
time.perf_counter_ns (CLOCK_MONOTONIC), as the signals and requests are.

Every server runs in its own session, with PR_SET_PDEATHSIG (it dies with
this program); at the end it is stopped with SIGTERM, then its whole
process group with SIGKILL if it lingers, and a leftover process is an
error. The HTTP example runs without HTTP_COUNTER_SHM: no shared memory.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = 4  # replace, reload, ttin
WRK_SECONDS = 6
HEAVY_CONNS = 256  # reload-heavy: 8x the connections, 64 per worker
IDLE_SECONDS = 10
MPROC_TIMEOUT_S = 1
GUNICORN_TIMEOUT_S = 2


class BenchError(Exception):
    pass


def now_ns() -> int:
    return time.perf_counter_ns()


def ms(ns: float) -> float:
    return ns / 1e6


def _pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Server:
    """A master process whose stderr lines are kept with their arrival time."""

    def __init__(self, argv: List[str], env: Optional[Dict[str, str]] = None):
        self.t_start = now_ns()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=_pdeathsig,
        )
        self.pid = self.proc.pid
        self.fd = self.proc.stderr.fileno()
        fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self.buf = b""
        self.lines: List[Tuple[int, str]] = []
        self.eof = False
        self.on_line: Optional[Callable[[int, str], None]] = None

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            t = now_ns()
            if not chunk:
                self.eof = True
                return
            self.buf += chunk
            *full, self.buf = self.buf.split(b"\n")
            for raw in full:
                line = raw.decode(errors="replace")
                self.lines.append((t, line))
                if self.on_line:
                    self.on_line(t, line)

    def pump(self, timeout: float = 0.0, extra: Tuple[int, ...] = ()) -> List[int]:
        """Read what the master wrote, waiting up to timeout; returns which of
        the extra fds are readable."""
        fds = ([] if self.eof else [self.fd]) + list(extra)
        if not fds:
            time.sleep(timeout)
            return []
        r, _, _ = select.select(fds, [], [], timeout)
        if self.fd in r:
            self._read()
        return [fd for fd in r if fd != self.fd]

    def wait_line(self, pattern: str, start: int = 0, timeout: float = 10.0,
                  pred: Callable[[re.Match], bool] = lambda m: True) -> Tuple[int, re.Match, int]:
        """The first line from index start on matching pattern (and pred):
        (arrival time, match, index)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.lines):
                t, line = self.lines[i]
                m = rx.search(line)
                if m and pred(m):
                    return t, m, i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0 or (self.eof and self.proc.poll() is not None):
                raise BenchError(f"no log line /{pattern}/ within {timeout} s; last lines: "
                                 + " | ".join(l for _, l in self.lines[-5:]))
            self.pump(min(left, 0.2))

    def count(self, pattern: str, start: int = 0) -> int:
        rx = re.compile(pattern)
        return sum(1 for _, line in self.lines[start:] if rx.search(line))

    def children(self) -> List[int]:
        return children_of(self.pid)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, wait, then SIGKILL the process group; leftovers are an error."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.05)
        # The session's processes (the workers) must all be gone too.
        leftover = False
        while time.monotonic() < deadline + 5:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            leftover = True
        if self.proc.poll() is None or leftover:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            raise BenchError(f"master {self.pid} or its workers did not stop: SIGKILLed")
        while not self.eof:
            self.pump(0.05)

    def kill_all(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


PID_RX = re.compile(rb"pid (\d+)")


def http_get(port: int, path: str = "/", server: Optional[Server] = None,
             timeout: float = 2.0) -> Optional[int]:
    """One request on a new connection (Connection: close); the pid in the
    answer, or None on any failure. While it waits, the server's log is read."""
    s = socket.socket()
    s.setblocking(False)
    try:
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        deadline = time.monotonic() + timeout
        sent = False
        data = b""
        req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()
        while time.monotonic() < deadline:
            if not sent:
                _, w, _ = select.select([], [s], [], 0.05)
                if not w:
                    if server:
                        server.pump(0)
                    continue
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    return None
                s.send(req)
                sent = True
            r = server.pump(0.05, (s.fileno(),)) if server else \
                select.select([s], [], [], 0.05)[0]
            if r:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        m = PID_RX.search(data) if data.startswith(b"HTTP/1.1 200") else None
        return int(m.group(1)) if m else None
    except OSError:
        return None
    finally:
        s.close()


def summary(samples_ns: List[int]) -> Tuple[float, float, float]:
    v = sorted(ms(x) for x in samples_ns)
    q = statistics.quantiles(v, n=10, method="inclusive") if len(v) > 1 else [v[0]] * 9
    return statistics.median(v), q[0], q[-1]


def ms_fields(samples_ns: List[int]) -> str:
    """Median, p10 and p90 in ms, as key=value pairs."""
    r = summary(samples_ns)
    return f"median_ms={r[0]:.3f} p10_ms={r[1]:.3f} p90_ms={r[2]:.3f}"


def ms_line(samples_ns: List[int], n: int) -> str:
    """The output line of a figure measured in ms: median, p10, p90."""
    return f"{ms_fields(samples_ns)} n={n}"


# --------------------------------------------------------------------------
# The two servers
# --------------------------------------------------------------------------


class Mproc:
    READY = r"worker (\d+) pid (\d+) ready"

    def __init__(self, args, workers: int, command: List[str], opts: List[str] = (),
                 bind: bool = True):
        env = dict(os.environ)
        env.pop("HTTP_COUNTER_SHM", None)
        argv = [args.mproc, "run", "-w", str(workers), "--ready", "--max-restarts", "1000000",
                "--graceful-timeout", "10"] + list(opts)
        if bind:
            argv += ["--bind", "127.0.0.1:0"]
        self.srv = Server(argv + ["--"] + command, env)
        self.ready: Dict[int, int] = {}  # slot -> pid of its ready worker
        self.srv.on_line = self._track
        self.port = 0
        if bind:
            _, m, _ = self.srv.wait_line(r"listening on 127\.0\.0\.1:(\d+) ")
            self.port = int(m.group(1))

    def _track(self, t: int, line: str) -> None:
        m = re.search(self.READY, line)
        if m:
            self.ready[int(m.group(1))] = int(m.group(2))

    def check_generations(self, pattern: str, start: int, n: int) -> None:
        """n events (log lines matching pattern) since log line start, each
        with a generation of WORKERS ready."""
        deadline = time.monotonic() + 10
        while self.srv.count(self.READY, start) < n * WORKERS and time.monotonic() < deadline:
            self.srv.pump(0.1)
        events, ready = self.srv.count(pattern, start), self.srv.count(self.READY, start)
        if events != n or ready < n * WORKERS:
            raise BenchError(f"{events} of {n} /{pattern}/, {ready} new workers ready")

    def wait_ready(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready) < n:
            if time.monotonic() > deadline or self.srv.proc.poll() is not None:
                raise BenchError(f"only {len(self.ready)} of {n} workers ready")
            self.srv.pump(0.1)


def gunicorn_bin() -> str:
    g = shutil.which("gunicorn")
    if not g:
        raise BenchError("gunicorn is missing (Debian package gunicorn; scripts/deps.sh)")
    return g


class Gunicorn:
    def __init__(self, workers: int, opts: List[str] = ()):
        self.port = free_port()
        argv = [gunicorn_bin(), "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{self.port}",
                "--chdir", HERE, "--log-level", "info"] + list(opts) + ["wsgi_hello:app"]
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        self.srv = Server(argv, env)
        self.workers = workers

    def wait_up(self, n: Optional[int] = None, timeout: float = 30.0) -> None:
        """n workers booted and the server answering."""
        n = n or self.workers
        deadline = time.monotonic() + timeout
        while True:
            if len(self.srv.children()) == n and \
                    self.srv.count(r"Booting worker with pid") >= n and \
                    http_get(self.port, server=self.srv) is not None:
                return
            if time.monotonic() > deadline or self.srv.proc.poll() is not None:
                raise BenchError(f"gunicorn: {len(self.srv.children())} of {n} workers up")
            self.srv.pump(0.02)


def first_new_answer(port: int, old: set, srv: Server, t0: int, timeout: float = 10.0) -> int:
    """Requests in a loop until one comes from a pid not in old: its time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = http_get(port, server=srv)
        if pid is not None and pid not in old:
            return now_ns() - t0
    raise BenchError(f"no answer from a new worker within {timeout} s")


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def mproc_replace(args, n: int) -> str:
    m = Mproc(args, WORKERS, [args.http])
    try:
        m.wait_ready(WORKERS)
        ready, answer = [], []
        for i in range(n):
            slot = i % WORKERS
            victim = m.ready[slot]
            old = set(m.ready.values())
            start = len(m.srv.lines)
            t0 = now_ns()
            os.kill(victim, signal.SIGKILL)
            answer.append(first_new_answer(m.port, old, m.srv, t0))
            t, _, _ = m.srv.wait_line(m.READY, start, 10,
                                      lambda mt: int(mt.group(1)) == slot and
                                      int(mt.group(2)) != victim)
            ready.append(t - t0)
            settle(m.srv, 0.1)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    r, a = summary(ready), summary(answer)
    return (f"median_ms={r[0]:.3f} p10_ms={r[1]:.3f} p90_ms={r[2]:.3f} "
            f"answer_ms={a[0]:.3f} answer_p90_ms={a[2]:.3f} n={n}")


def gunicorn_replace(args, n: int) -> str:
    g = Gunicorn(WORKERS)
    try:
        g.wait_up()
        answer, booted = [], []
        for i in range(n):
            kids = sorted(g.srv.children())
            victim = kids[i % len(kids)]
            start = len(g.srv.lines)
            t0 = now_ns()
            os.kill(victim, signal.SIGKILL)
            answer.append(first_new_answer(g.port, set(kids), g.srv, t0))
            t, _, _ = g.srv.wait_line(r"Booting worker with pid", start, 10)
            booted.append(t - t0)
            g.wait_up()
            settle(g.srv, 0.1)
        g.srv.stop()
    except BaseException:
        g.srv.kill_all()
        raise
    a, b = summary(answer), summary(booted)
    return (f"median_ms={a[0]:.3f} p10_ms={a[1]:.3f} p90_ms={a[2]:.3f} "
            f"answer_ms={a[0]:.3f} answer_p90_ms={a[2]:.3f} booting_ms={b[0]:.3f} n={n}")


def settle(srv: Server, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        srv.pump(end - time.monotonic())


def run_wrk(srv: Server, port: int, hups: int,
            act: Optional[Callable[[int], None]] = None, conns: int = 32) -> Dict[str, float]:
    """wrk for WRK_SECONDS; at hups evenly spaced moments, act(i) (default:
    SIGHUP to the master)."""
    if not shutil.which("wrk"):
        raise BenchError("wrk is missing (Debian package wrk; scripts/deps.sh)")
    wrk = subprocess.Popen(
        ["wrk", "-t2", f"-c{conns}", f"-d{WRK_SECONDS}s", f"http://127.0.0.1:{port}/"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_pdeathsig,
    )
    t0 = time.monotonic()
    for i in range(hups):
        at = t0 + WRK_SECONDS * (i + 1) / (hups + 1)
        while time.monotonic() < at:
            srv.pump(max(0.0, at - time.monotonic()))
        if act:
            act(i)
        else:
            os.kill(srv.pid, signal.SIGHUP)
    while wrk.poll() is None:
        srv.pump(0.1)
    out = wrk.stdout.read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise BenchError(f"wrk: no Requests/sec in {out!r}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in sock.groups()) if sock else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    return dict(rps=float(rps.group(1)), socket_errors=socket_errors, non2xx=non2xx)


def mproc_reload(args, n: int, conns: int = 32) -> str:
    m = Mproc(args, WORKERS, [args.http])
    try:
        m.wait_ready(WORKERS)
        start = len(m.srv.lines)
        w = run_wrk(m.srv, m.port, n, conns=conns)
        m.check_generations(r"reload: starting a new generation", start, n)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return reload_line(w, n)


def gunicorn_reload(args, n: int, conns: int = 32) -> str:
    g = Gunicorn(WORKERS)
    try:
        g.wait_up()
        start = len(g.srv.lines)
        w = run_wrk(g.srv, g.port, n, conns=conns)
        booted = g.srv.count(r"Booting worker with pid", start)
        if booted < n * WORKERS:
            raise BenchError(f"only {booted} workers booted by {n} reloads")
        g.srv.stop()
    except BaseException:
        g.srv.kill_all()
        raise
    return reload_line(w, n)


def mproc_upgrade(args, n: int) -> str:
    m = Mproc(args, WORKERS, [args.http])
    try:
        m.wait_ready(WORKERS)
        start = len(m.srv.lines)
        sent: List[Tuple[int, int]] = []  # (time, log index) of each USR2

        def upgrade(i: int) -> None:
            m.srv.pump()
            sent.append((now_ns(), len(m.srv.lines)))
            os.kill(m.srv.pid, signal.SIGUSR2)

        w = run_wrk(m.srv, m.port, n, upgrade)
        # By the same pid each time.
        pid = m.srv.pid
        m.check_generations(rf"mproc\[{pid}\]: master pid {pid}: re-executed", start, n)
        # Each upgrade's time: USR2 to the last of the new generation ready.
        took = []
        for t0, at in sent:
            t = t0
            for _ in range(WORKERS):
                t, _, at = m.srv.wait_line(m.READY, at)
                at += 1
            took.append(t - t0)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return reload_line(w, n) + " " + ms_fields(took)


def gunicorn_upgrade(args, n: int) -> str:
    g = Gunicorn(WORKERS)
    master = [g.srv.pid]
    took: List[int] = []  # USR2 to the new master's workers booted (log)

    def upgrade(i: int) -> None:
        old = master[0]
        booted = g.srv.count(r"Booting worker with pid")
        t0 = now_ns()
        os.kill(old, signal.SIGUSR2)
        deadline = time.monotonic() + 20
        new = 0
        while not new:  # the new master (forked by the old one) has booted its workers
            if g.srv.count(r"Booting worker with pid") >= booted + WORKERS:
                new = next((c for c in children_of(old) if len(children_of(c)) >= WORKERS), 0)
                t_up = g.srv.lines[-1][0]
            if time.monotonic() > deadline:
                raise BenchError(f"gunicorn upgrade {i}: no new master with {WORKERS} workers")
            g.srv.pump(0.02)
        took.append(t_up - t0)
        os.kill(old, signal.SIGTERM)  # graceful: its workers finish what they hold
        master[0] = new

    try:
        g.wait_up()
        w = run_wrk(g.srv, g.port, n, upgrade)
        if master[0] != g.srv.pid:
            os.kill(master[0], signal.SIGTERM)
        g.srv.stop()
    except BaseException:
        g.srv.kill_all()
        raise
    return reload_line(w, n) + " " + ms_fields(took)


def reload_line(w: Dict[str, float], n: int) -> str:
    failed = w["socket_errors"] + w["non2xx"]
    return (f"failed={failed} socket_errors={w['socket_errors']} non2xx={w['non2xx']} "
            f"rps={w['rps']:.0f} n={n}")


def mproc_ttin(args, n: int) -> str:
    m = Mproc(args, WORKERS, [args.http])
    try:
        m.wait_ready(WORKERS)
        samples = []
        for _ in range(n):
            start = len(m.srv.lines)
            t0 = now_ns()
            os.kill(m.srv.pid, signal.SIGTTIN)
            t, mt, _ = m.srv.wait_line(m.READY, start, 10,
                                       lambda x: int(x.group(1)) == WORKERS)
            samples.append(t - t0)
            pid = int(mt.group(2))
            start = len(m.srv.lines)
            os.kill(m.srv.pid, signal.SIGTTOU)
            m.srv.wait_line(rf"worker {WORKERS} pid {pid} exited", start, 15)
            m.ready.pop(WORKERS, None)
            settle(m.srv, 0.05)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return ms_line(samples, n)


def gunicorn_ttin(args, n: int) -> str:
    g = Gunicorn(WORKERS)
    try:
        g.wait_up()
        samples = []
        for _ in range(n):
            old = set(g.srv.children())
            t0 = now_ns()
            os.kill(g.srv.pid, signal.SIGTTIN)
            samples.append(first_new_answer(g.port, old, g.srv, t0))
            os.kill(g.srv.pid, signal.SIGTTOU)
            deadline = time.monotonic() + 15
            while len(g.srv.children()) != WORKERS:
                if time.monotonic() > deadline:
                    raise BenchError("gunicorn: TTOU did not take a worker away")
                g.srv.pump(0.02)
            g.wait_up()
            settle(g.srv, 0.05)
        g.srv.stop()
    except BaseException:
        g.srv.kill_all()
        raise
    return ms_line(samples, n)


def mproc_timeout(args, n: int) -> str:
    """A worker that sends READY=1 and never beats: the master's deadline is
    its READY=1 (logged as "ready") plus --timeout; the kill is its
    "silent ... SIGKILL" line. Each replacement hangs the same way."""
    m = Mproc(args, 1, [args.idle_worker], ["--timeout", str(MPROC_TIMEOUT_S)], bind=False)
    try:
        over = []
        start = 0
        for _ in range(n):
            t_ready, mt, i = m.srv.wait_line(m.READY, start, 10)
            pid = mt.group(2)
            t_kill, _, j = m.srv.wait_line(rf"worker 0 pid {pid} silent for \d+ ms", i, 10)
            over.append(t_kill - t_ready - MPROC_TIMEOUT_S * 1_000_000_000)
            start = j
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return ms_line(over, n)


def gunicorn_timeout(args, n: int) -> str:
    """One sync worker, --timeout 2: a request to /sleep hangs it; the
    master's "WORKER TIMEOUT" line is the kill (SIGABRT)."""
    g = Gunicorn(1, ["--timeout", str(GUNICORN_TIMEOUT_S), "--graceful-timeout", "2"])
    try:
        over = []
        for i in range(n):
            g.wait_up(1)
            worker = g.srv.children()[0]
            # The master looks at its workers once a second: a hang at a
            # fixed delay after the worker's boot would always hit the same
            # phase of that tick. Spread the hangs over the second instead.
            settle(g.srv, ((i * 0.618034) % 1.0))
            start = len(g.srv.lines)
            s = socket.create_connection(("127.0.0.1", g.port))
            try:
                t0 = now_ns()
                s.sendall(b"GET /sleep HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                t, mt, _ = g.srv.wait_line(r"WORKER TIMEOUT \(pid:(\d+)\)", start,
                                           GUNICORN_TIMEOUT_S + 10)
                if int(mt.group(1)) != worker:
                    raise BenchError(f"WORKER TIMEOUT for {mt.group(1)}, not {worker}")
            finally:
                s.close()
            over.append(t - t0 - GUNICORN_TIMEOUT_S * 1_000_000_000)
            g.srv.wait_line(r"Booting worker with pid", start, 15)
        g.srv.stop()
    except BaseException:
        g.srv.kill_all()
        raise
    return ms_line(over, n)


def proc_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError("no VmRSS")


def proc_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def proc_runtime_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def idle_figures(srv: Server, t_all: int) -> str:
    """RSS now, then CPU over IDLE_SECONDS of idling."""
    rss = proc_rss_mib(srv.pid)
    tick = os.sysconf("SC_CLK_TCK")
    c0, r0, w0 = proc_cpu_ticks(srv.pid), proc_runtime_ns(srv.pid), now_ns()
    settle(srv, IDLE_SECONDS)
    c1, r1, w1 = proc_cpu_ticks(srv.pid), proc_runtime_ns(srv.pid), now_ns()
    wall = (w1 - w0) / 1e9
    cpu = 100.0 * (c1 - c0) / tick / wall
    sched = 100.0 * (r1 - r0) / 1e9 / wall
    return (f"start_ms={ms(t_all):.1f} rss_mib={rss:.2f} cpu_pct={cpu:.3f} "
            f"sched_cpu_pct={sched:.4f}")


def mproc_idle(args, n: int) -> str:
    m = Mproc(args, n, [args.idle_worker], bind=False)
    try:
        m.wait_ready(n, timeout=120)
        # the arrival of the last "ready" line
        t_last = max(t for t, line in m.srv.lines if re.search(m.READY, line))
        t_all = t_last - m.srv.t_start
        out = idle_figures(m.srv, t_all)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return f"{out} n={n}"


def gunicorn_idle(args, n: int) -> str:
    g = Gunicorn(n)
    try:
        t, _, _ = g.srv.wait_line(r"Booting worker with pid", 0, 300)
        deadline = time.monotonic() + 300
        while g.srv.count(r"Booting worker with pid") < n:
            if time.monotonic() > deadline or g.srv.proc.poll() is not None:
                raise BenchError(f"gunicorn: {g.srv.count('Booting worker')} of {n} booted")
            g.srv.pump(0.1)
        t_all = [t for t, line in g.srv.lines if "Booting worker with pid" in line][n - 1]
        out = idle_figures(g.srv, t_all - g.srv.t_start)
        g.srv.stop(60)
    except BaseException:
        g.srv.kill_all()
        raise
    return f"{out} n={n}"


def mproc_prefork(args, n: int) -> str:
    """The library's prefork mode (bench/prefork_server.c: fork, no exec):
    from a worker's SIGKILL to its replacement's READY=1 in the log."""
    m = Mproc.__new__(Mproc)
    m.srv = Server([args.prefork], dict(os.environ))
    m.ready, m.port = {}, 0
    m.srv.on_line = m._track
    try:
        m.wait_ready(WORKERS)
        ready = []
        for i in range(n):
            slot = i % WORKERS
            victim = m.ready[slot]
            start = len(m.srv.lines)
            t0 = now_ns()
            os.kill(victim, signal.SIGKILL)
            t, _, _ = m.srv.wait_line(m.READY, start, 10,
                                      lambda mt: int(mt.group(1)) == slot and
                                      int(mt.group(2)) != victim)
            ready.append(t - t0)
            settle(m.srv, 0.05)
        m.srv.stop()
    except BaseException:
        m.srv.kill_all()
        raise
    return ms_line(ready, n)


MODES = {
    "mproc-prefork": mproc_prefork,
    "mproc-replace": mproc_replace, "gunicorn-replace": gunicorn_replace,
    "mproc-reload": mproc_reload, "gunicorn-reload": gunicorn_reload,
    "mproc-reload-heavy": lambda args, n: mproc_reload(args, n, HEAVY_CONNS),
    "gunicorn-reload-heavy": lambda args, n: gunicorn_reload(args, n, HEAVY_CONNS),
    "mproc-upgrade": mproc_upgrade, "gunicorn-upgrade": gunicorn_upgrade,
    "mproc-ttin": mproc_ttin, "gunicorn-ttin": gunicorn_ttin,
    "mproc-timeout": mproc_timeout, "gunicorn-timeout": gunicorn_timeout,
    "mproc-idle": mproc_idle, "gunicorn-idle": gunicorn_idle,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=sorted(MODES))
    ap.add_argument("n", type=int)
    ap.add_argument("--mproc", help="the mproc CLI (build/tools/mproc)")
    ap.add_argument("--http", help="the prefork HTTP example (build/examples/http_prefork)")
    ap.add_argument("--idle-worker", help="bench's idle_worker (build/bench/idle_worker)")
    ap.add_argument("--prefork", help="bench's prefork_server (build/bench/prefork_server)")
    args = ap.parse_args()
    if args.mode.startswith("mproc-"):
        for name in ("mproc", "http", "idle_worker", "prefork"):
            p = getattr(args, name)
            if not p or not os.access(p, os.X_OK):
                ap.error(f"--{name.replace('_', '-')}: not an executable: {p}")
    # SIGTERM (run.py's timeout, a ^C) goes through the finally/except paths.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        print(MODES[args.mode](args, args.n), flush=True)
    except BenchError as e:
        print(f"bench_run.py {args.mode}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
