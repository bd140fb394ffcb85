"""Real ``runq serve`` and ``runq worker`` processes for the end-to-end tests.

``Cluster`` (the ``cluster`` fixture of conftest.py) starts processes on demand
and SIGKILLs every one of them at teardown. Every wait here is bounded, and a
watchdog kills the processes of a test that runs far past its budget, so that a
blocked SDK call fails (its connection closes) instead of hanging the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from runq import SyncClient

HERE = Path(__file__).resolve().parent
WATCHDOG_SECONDS = 60.0


class Run(NamedTuple):
    """One line of the handlers' run log (see ``e2e_tasks``)."""

    what: str
    id: int
    attempt: int
    pid: int
    mono: float
    wall: float


class Proc:
    """A ``python -m runq.cli ...`` subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "runq.cli", *args], env=env, cwd=str(HERE),
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL and reap (so the process is certainly gone when this returns)."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class Cluster:
    """Servers and workers of one test, sharing one database and one run log."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.db = str(tmp / "runq.db")
        self.run_log = tmp / "runs.log"
        self.env = dict(env)
        self.env["PYTHONPATH"] = os.pathsep.join([str(HERE), self.env.get("PYTHONPATH", "")])
        self.env["RUNQ_E2E_LOG"] = str(self.run_log)
        self.env["RUNQ_LOG_LEVEL"] = "INFO"  # the process logs are printed when a test fails
        self.env.pop("RUNQ_TOKEN", None)
        self.env.pop("RUNQ_SERVER", None)
        self.env.pop("RUNQ_TLS", None)
        self.env.pop("RUNQ_TLS_CA", None)
        self.procs: list[Proc] = []
        self.server: Proc | None = None
        self.port = 0
        self._n = 0
        self.watchdog_fired = False
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._fire_watchdog)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, kind: str, args: list[str]) -> Proc:
        self._n += 1
        p = Proc(args, self.env, self.tmp / f"{self._n:02d}-{kind}.log")
        self.procs.append(p)
        return p

    def start_server(self, *extra: str) -> Proc:
        """Start ``runq serve`` on this cluster's database, port 0; return once it serves."""
        port_file = self.tmp / "port"
        port_file.unlink(missing_ok=True)
        # (no HTTP API unless asked: with a --port of its own, `runq serve` would take the default 7701, which a
        # server on the machine may hold)
        p = self._spawn("serve", ["serve", "--db", self.db, "--port", "0", "--http-port", "0", "--port-file",
                                  str(port_file), *extra])
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert p.alive(), f"runq serve exited with {p.popen.returncode}:\n{p.output()}"
            assert time.monotonic() < deadline, f"runq serve did not start:\n{p.output()}"
            time.sleep(0.01)
        self.port = int(port_file.read_text())
        self.server = p
        return p

    def start_worker(self, *extra: str) -> Proc:
        """Start ``runq worker e2e_tasks:worker`` against the current server."""
        return self._spawn("worker", ["worker", "e2e_tasks:worker", "--server", self.address, *extra])

    def wait_joined(self, client: SyncClient, *workers: Proc, timeout: float = 20) -> dict[int, str]:
        """Wait until ``workers`` are connected; return their worker ids by pid."""
        pids = {w.pid for w in workers}
        found: dict[int, str] = {}

        def joined() -> bool:
            for w in workers:
                assert w.alive(), f"worker exited with {w.popen.returncode}:\n{w.output()}"
            found.clear()
            found.update({w["pid"]: w["id"] for w in client.workers() if w["pid"] in pids})
            return set(found) == pids

        wait_until(joined, timeout, step=0.02)
        return dict(found)

    def runs(self) -> list[Run]:
        """The run log so far, parsed."""
        try:
            text = self.run_log.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            what, tid, attempt, pid, mono, wall = line.split(" ")
            out.append(Run(what, int(tid), int(attempt), int(pid), float(mono), float(wall)))
        return out

    def wait_runs(self, pred: Callable[[list[Run]], bool], timeout: float = 20) -> list[Run]:
        """Wait until ``pred(runs)`` holds; return those runs."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            if pred(runs):
                return runs
            assert time.monotonic() < deadline, "the expected runs did not happen in time"
            time.sleep(0.01)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``runq ARGS --server ADDRESS`` and return what it printed."""
        return subprocess.run([sys.executable, "-m", "runq.cli", *args, "--server", self.address],
                              env=self.env, cwd=str(HERE), capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def _fire_watchdog(self) -> None:
        self.watchdog_fired = True
        for p in self.procs:
            try:
                p.signal(signal.SIGKILL)
            except OSError:
                pass

    def extend_watchdog(self, seconds: float) -> None:
        """Give this test ``seconds`` from now before the watchdog kills its processes (a longer test)."""
        self._watchdog.cancel()
        self._watchdog = threading.Timer(seconds, self._fire_watchdog)
        self._watchdog.daemon = True
        self._watchdog.start()

    def close(self) -> None:
        self._watchdog.cancel()
        for p in self.procs:
            try:
                p.kill9()
            except (OSError, subprocess.TimeoutExpired):
                pass

    def report(self) -> str:
        parts = [f"watchdog fired after {WATCHDOG_SECONDS}s" if self.watchdog_fired else ""]
        for p in self.procs:
            parts.append(f"----- {p.log_path.name} (pid {p.pid}, exit {p.popen.returncode}): runq {' '.join(p.args)}")
            parts.append(p.output()[-6000:])
        return "\n".join(parts)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 a moment ago (for a process that takes its port as a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], bool], timeout: float = 20, step: float = 0.02) -> None:
    """Poll ``pred`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)
