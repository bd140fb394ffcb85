"""Shared pieces of the benchmarks: real server and worker processes, RSS, optional py-spy profiles."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Self

from runq.demo import stop_process as _stop_process

__all__ = [
    "CpuMeter",
    "Spy",
    "cpu_seconds",
    "echo_server",
    "fmt",
    "measured",
    "profiled",
    "rss_mb",
    "server",
    "start_server",
    "stop_process",
    "summarize",
    "wait_for",
    "workers",
]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


#: a ``postgresql://`` URL of a database where ``server()`` may create databases: then each measurement's
#: server runs on a fresh PostgreSQL database made there (and dropped after) instead of a SQLite file
#: (``python -m bench.throughput --db postgresql://...``)
PG_URL: str | None = None


def start_server(db: str, timeout: float = 120.0, on_spawn: Callable[[int], object] | None = None,
                 port_file: str | None = None, extra: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], int, float]:
    """Launch ``runq serve`` on ``db`` (port 0, synchronous NORMAL, 127.0.0.1; ``extra``: more options).

    ``on_spawn(pid)`` runs right after the launch (to attach a profiler). Returns the process, its
    port and the perf_counter() time it was launched at.
    """
    port_file = port_file or db + ".port"
    if os.path.exists(port_file):
        os.unlink(port_file)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "serve", "--db", db,
                             "--host", "127.0.0.1", "--port", "0", "--port-file", port_file,
                             "--synchronous", "NORMAL", *extra],
                            stdout=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    if on_spawn is not None:
        on_spawn(proc.pid)
    deadline = time.monotonic() + timeout
    while True:
        # the port file is written once the port is bound; an empty read means we caught it mid-write
        if os.path.exists(port_file):
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                return proc, int(text), t0
        if proc.poll() is not None:
            raise RuntimeError(f"runq serve exited with {proc.returncode}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError("runq serve did not start in time")
        time.sleep(0.002)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds (runq.demo's, with a longer wait)."""
    _stop_process(proc, timeout)


@contextmanager
def server(db: str | None = None, extra: Sequence[str] = ()) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `runq serve` process on ``db``, or on a fresh database in a temporary folder (removed after);
    ``extra``: more options of `runq serve`.

    Yields (process, "127.0.0.1:PORT").
    """
    tmp = tempfile.mkdtemp(prefix="runq-bench-")
    pg_db = None
    if db is None and PG_URL is not None:
        import psycopg

        pg_db = f"runq_bench_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {pg_db}")
        db = PG_URL.rsplit("/", 1)[0] + "/" + pg_db
    elif db is None:
        db = os.path.join(tmp, "bench.db")
    try:
        proc, port, _ = start_server(db, port_file=os.path.join(tmp, "port"), extra=extra)
        try:
            yield proc, f"127.0.0.1:{port}"
        finally:
            stop_process(proc)
            if pg_db is not None:
                import psycopg

                with psycopg.connect(PG_URL or "", autocommit=True) as conn:
                    conn.execute(f"DROP DATABASE {pg_db} WITH (FORCE)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def echo_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A minimal trio echo server (``bench.echo``) on a free port; yields (process, "127.0.0.1:PORT")."""
    tmp = tempfile.mkdtemp(prefix="runq-echo-")
    port_file = os.path.join(tmp, "port")
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo", "--port-file", port_file],
                            stdout=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("bench.echo did not start")
            time.sleep(0.005)
        with open(port_file) as f:
            port = int(f.read())
        yield proc, f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def workers(address: str, n: int, concurrency: int, target: str = "bench.noop_tasks:worker",
            backend: str | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` `runq worker` processes running ``target``, stopped (SIGTERM) on exit.

    ``backend`` None is `runq worker`'s default event loop (asyncio), or ``$BENCH_WORKER_BACKEND`` when set.
    The workers log at WARNING: the line per task (INFO) is not what is measured (see bench/README.md).
    """
    backend = backend or os.environ.get("BENCH_WORKER_BACKEND")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "runq.cli", "--log-level", os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
                 "worker", target, "--server", address, "--concurrency", str(concurrency),
                 *(["--backend", backend] if backend else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if os.environ.get("BENCH_WORKER_LOG_LEVEL")
                else None, env=_env(), cwd=ROOT))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            stop_process(p)


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process used so far, all its threads (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use of named processes (or groups of processes) over a timed window."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def _now(self, name: str) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids[name])

    def __enter__(self) -> Self:
        self.start = {name: self._now(name) for name in self.pids}
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        for name in self.pids:
            try:
                self.used[name] = self._now(name) - self.start[name]
            except OSError:
                pass

    def report(self) -> str:
        """e.g. ``CPU: server 97%, client 55%`` (100% = one core busy for the whole window)."""
        parts = []
        for name, used in self.used.items():
            n = len(self.pids[name])
            label = name if n == 1 else f"{name} (x{n})"
            parts.append(f"{label} {100 * used / max(self.wall, 1e-9):.1f}%")
        return "CPU: " + ", ".join(parts)


@contextmanager
def measured(name: str, profile: str | None, server_pid: int, worker_pids: Sequence[int] = (),
             client: bool = True) -> Iterator[CpuMeter]:
    """The timed window of one measurement: CPU accounting of every process, py-spy when ``profile``."""
    targets = {f"{name}-server": server_pid}
    targets.update({f"{name}-worker{i}": pid for i, pid in enumerate(worker_pids)})
    if client:
        targets[f"{name}-client"] = os.getpid()
    groups = {"server": [server_pid]}
    if worker_pids:
        groups["workers"] = list(worker_pids)
    if client:
        groups["client"] = [os.getpid()]
    with profiled(profile, targets), CpuMeter(groups) as meter:
        yield meter


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def wait_for(pred: Callable[[], bool], timeout: float = 60.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        time.sleep(step)


# ---------------------------------------------------------------------------------------------- profiling
def _py_spy() -> str | None:
    near = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return near if os.path.exists(near) else shutil.which("py-spy")


class Spy:
    """py-spy sampling one process into ``out_dir/NAME.folded`` until ``stop()``, which also writes
    ``out_dir/NAME.txt`` (the functions with the most on-CPU samples, self and inclusive)."""

    def __init__(self, out_dir: str, name: str, pid: int, rate: int = 250) -> None:
        spy = _py_spy()
        if spy is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.name = out_dir, name
        self.folded = os.path.join(out_dir, name + ".folded")
        with open(os.path.join(out_dir, name + ".log"), "wb") as log:
            self.proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                                          "--nonblocking", "--threads", "--output", self.folded],
                                         stdout=log, stderr=subprocess.STDOUT)

    def signal_stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        self.signal_stop()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.folded):
            with open(os.path.join(self.out_dir, self.name + ".txt"), "w") as f:
                f.write(summarize(self.folded))


@contextmanager
def profiled(out_dir: str | None, targets: dict[str, int]) -> Iterator[None]:
    """Sample each ``{name: pid}`` with py-spy while the block runs (nothing when ``out_dir`` is None)."""
    if out_dir is None or not targets:
        yield
        return
    spies = [Spy(out_dir, name, pid) for name, pid in targets.items()]
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        for s in spies:
            s.signal_stop()
        for s in spies:
            s.stop()


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    elif "runq" in parts:
        parts = parts[len(parts) - 1 - parts[::-1].index("runq"):]
    elif "bench" in parts:
        parts = parts[len(parts) - 1 - parts[::-1].index("bench"):]
    else:
        parts = parts[-1:]
    return f"{name} ({'/'.join(parts)})"


def summarize(folded: str, top: int = 25) -> str:
    """Self and inclusive sample counts per function from a py-spy collapsed-stack file.

    Percentages are of all on-CPU samples of the process (threads add up to 100%); the inclusive list
    shows runq's and the benchmark's own functions only (the event loop and runpy frames are in every stack).
    """
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(folded) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            total += n
            frames = stack.split(";")
            if frames[0].startswith("thread ("):
                threads[frames[0]] += n
                frames = frames[1:]
            frames = [_short(fr) for fr in frames]
            own[frames[-1] if frames else "(no Python frame)"] += n
            for fr in set(frames):
                if fr.endswith(".py)") and (" (runq/" in fr or " (bench/" in fr):
                    incl[fr] += n
    if total == 0:
        return "no samples\n"
    out = [f"{total} on-CPU samples"]
    out += [f"  {100 * n / total:5.1f}%  {th}" for th, n in threads.most_common()]
    out.append("\nself (where the CPU was; C code such as SQLite counts in its Python caller):")
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in own.most_common(top)]
    out.append("\ninclusive, runq and bench functions (the function and what it calls):")
    out += [f"  {100 * n / total:5.1f}%  {fr}" for fr, n in incl.most_common(top)]
    return "\n".join(out) + "\n"
