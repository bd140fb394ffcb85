"""Real `runq serve` and `runq worker` processes for the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


class Proc:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.popen = subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", *args],
                                      env=env, cwd=str(HERE))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass


class Cluster:
    """Starts servers and workers; kills every one of them at the end of the test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = str(tmp / "runq.db")
        self.log = tmp / "runs.log"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), self.env.get("PYTHONPATH", "")])
        self.env["RUNQ_E2E_LOG"] = str(self.log)
        self.procs: list[Proc] = []
        self.port = 0
        self.server: Proc | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_server(self, *extra: str, port: int = 0) -> Proc:
        port_file = self.tmp / "port"
        if port_file.exists():
            port_file.unlink()
        p = Proc(["serve", "--db", self.db, "--port", str(port), "--port-file", str(port_file), *extra], self.env)
        self.procs.append(p)
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert p.popen.poll() is None, f"runq serve exited with {p.popen.returncode}"
            assert time.monotonic() < deadline, "runq serve did not start"
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.server = p
        return p

    def start_worker(self, *extra: str) -> Proc:
        p = Proc(["worker", "e2e_tasks:worker", "--server", self.address, *extra], self.env)
        self.procs.append(p)
        return p

    def runs(self) -> list[tuple[str, int, int, float, str]]:
        """Parsed log lines: (what, task id, pid, monotonic time, extra)."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            what, tid, pid, t, *extra = line.split(" ")
            out.append((what, int(tid), int(pid), float(t), " ".join(extra)))
        return out

    def wait_runs(self, pred: Callable[[list[tuple[str, int, int, float, str]]], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not pred(self.runs()):
            assert time.monotonic() < deadline, "the expected runs did not happen in time"
            time.sleep(0.02)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", *args,
                               "--server", self.address], env=self.env, cwd=str(HERE), capture_output=True,
                              text=True, timeout=timeout)

    def close(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.close()


def wait_until(pred: Callable[[], bool], timeout: float = 20, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(step)
