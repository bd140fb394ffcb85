"""Fixtures of the ``runq`` command's tests: a real ``runq serve`` (TCP and HTTP) and ``runq worker``,
started once per module, and ``runq ...`` run as a subprocess (``cli``) or in this process (``main``)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``runq`` subprocess: this checkout first, no RUNQ_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNQ_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    env["RUNQ_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30,
            cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    """``python -m runq.cli ARGS``, its output captured (so stdout is a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-m", "runq.cli", *args], env=env or cli_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@dataclass
class Served:
    """A ``runq serve`` process with its HTTP API, and one ``runq worker cli_tasks:worker`` joined to it."""

    address: str
    http_port: int
    server: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def _wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        assert proc.poll() is None, f"exited {proc.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"{pattern!r} not seen in time:\n{text}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from runq import SyncClient

    tmp = tmp_path_factory.mktemp("served")
    log = tmp / "serve.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with open(log, "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", "serve", "--db", str(tmp / "runq.db"),
                                           "--port", "0"], env=cli_env(), cwd=tmp,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT))
        m = _wait_for(log, r"runq serving on (127\.0\.0\.1:\d+), HTTP API on http://127\.0\.0\.1:(\d+)", procs[0])
        address, http_port = m.group(1), int(m.group(2))
        with open(tmp / "worker.log", "wb") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", "worker", "cli_tasks:worker", "-c", "2",
                                           "--server", address], env=cli_env(), cwd=HERE, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT))
        with SyncClient(address) as c:
            deadline = time.monotonic() + 30
            while not c.workers():
                assert procs[1].poll() is None, (tmp / "worker.log").read_text()
                assert time.monotonic() < deadline, "the worker did not join"
                time.sleep(0.02)
        yield Served(address, http_port, procs[0], procs[1], log)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """``main()`` in this process configures the root logger (as the command does): put it back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
