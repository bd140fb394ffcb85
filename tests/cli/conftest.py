"""Fixtures of the ``runq`` command's tests: a real ``runq serve`` (TCP and HTTP) and ``runq worker``,
started once per module (helpers in cli_helpers.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from cli_helpers import HERE, Served, cli_env, wait_for


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
        m = wait_for(log, r"runq serving on (127\.0\.0\.1:\d+), HTTP API on http://127\.0\.0\.1:(\d+)", procs[0])
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


