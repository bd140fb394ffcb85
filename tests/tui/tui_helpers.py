"""Helpers of the dashboard tests: real ``runq serve`` and ``runq worker`` subprocesses (a module of its own,
not conftest: ``from conftest import`` finds another folder's conftest when several test folders run together)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from runq.demo import start_server, stop_process

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

__all__ = ["HERE", "ROOT", "Procs", "free_port"]


class Procs:
    """A server and workers of one test; every process is killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.db = str(tmp / "runq.db")
        self.server: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workers: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), self.env.get("PYTHONPATH", "")])
        self.env.pop("RUNQ_TOKEN", None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_server(self, port: int = 0, http_port: int = 0) -> None:
        """Start ``runq serve`` (TCP ``port``, 0: a free one; HTTP API on ``http_port``, 0: off)."""
        self.server, self.port = start_server(self.db, port, ["--http-port", str(http_port)])

    def stop_server(self) -> None:
        if self.server is not None:
            stop_process(self.server)
            self.server = None

    def start_worker(self, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "worker",
                              "tui_tasks:worker", "--server", self.address, *extra],
                             cwd=str(HERE), env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.workers.append(p)
        return p

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if self.server is not None:
            self.server.kill()
            self.server.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
