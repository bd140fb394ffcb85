"""Helpers of the ``runq`` command's tests: ``runq ...`` as a subprocess, and the ``Served`` processes of the
``served`` fixture (conftest.py). A module of its own name: ``conftest`` is ambiguous between test folders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def wait_for(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m
        assert proc.poll() is None, f"exited {proc.returncode}:\n{text}"
        assert time.monotonic() < deadline, f"{pattern!r} not seen in time:\n{text}"
        time.sleep(0.02)


