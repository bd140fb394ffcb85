"""Shared pieces of the benchmarks: start a real server and worker processes, read RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from runq.demo import start_server, stop_process

__all__ = ["server", "workers", "rss_mb", "fmt"]

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)


@contextmanager
def server(db: str | None = None, extra: list[str] | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `runq serve` process on a fresh temporary database (or ``db``); yields (process, address)."""
    tmp = None
    if db is None:
        tmp = tempfile.mkdtemp(prefix="runq-bench-")
        db = os.path.join(tmp, "bench.db")
    proc, port = start_server(db, 0, extra)
    try:
        yield proc, f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


@contextmanager
def workers(address: str, n: int, concurrency: int, target: str = "bench.noop_tasks:worker",
            backend: str = "trio") -> Iterator[list[subprocess.Popen[bytes]]]:
    """``n`` `runq worker` processes running ``target``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "worker", target,
                               "--server", address, "--concurrency", str(concurrency), "--backend", backend],
                              env=env, cwd=ROOT) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            stop_process(p)


def rss_mb(pid: int) -> float:
    """Resident set size of a process, MiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def fmt(n: float) -> str:
    return f"{n:,.0f}"


def wait_for(pred, timeout: float = 60.0, step: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached in time")
        time.sleep(step)
