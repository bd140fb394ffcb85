"""`runq worker` on wrong input: one clear line and a non-zero exit, never a traceback or a retry loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from runq import Worker
from runq.app.server import Server
from runq.protocol.worker import HelloRefused

TASKS = "from runq import Worker\nworker = Worker()\n\n@worker.task('t')\nasync def t(p):\n    return p\n"


def runq_worker(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mytasks.py").write_text(TASKS)
    (tmp_path / "broken.py").write_text("import a_dependency_that_is_not_installed\n")
    (tmp_path / "empty.py").write_text("x = 1\n")
    # port 1: nothing listens there; every case below must stop before it matters
    return subprocess.run([sys.executable, "-m", "runq.cli", "worker", *args, "--server", "127.0.0.1:1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "message"), [
    (["nosuchmodule:worker"], "no module named 'nosuchmodule'"),
    (["mytasks:nope"], "'mytasks' has no attribute 'nope'"),
    (["empty"], "'empty' holds no runq.Worker and no task definition"),
    (["mytasks:t"], "is a function, not a runq.Worker or task definition"),
    (["mytasks:worker", "--concurrency", "0"], "--concurrency must be 1 or more"),
    (["mytasks:worker", "--queues", ","], "--queues needs at least one queue name"),
    (["mytasks:worker", "--processes", "0"], "--processes must be 1 or more"),
    (["mytasks:worker", "--log-level", "LOUD"], "unknown log level 'LOUD'"),  # (after the subcommand too)
    (["mytasks:worker", "--log-config", "nosuchfile.json"], "--log-config nosuchfile.json"),
    # the supervisor stops at once instead of restarting children that cannot start
    (["nosuchmodule:worker", "--processes", "2"], "cannot start (exit 3): stopping"),
])
def test_wrong_input_is_one_clear_line(tmp_path: Path, runq_env: dict[str, str], args: list[str],
                                       message: str) -> None:
    r = runq_worker(tmp_path, runq_env, *args)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    if "--processes" in args and args[0] == "nosuchmodule:worker":
        assert r.returncode == 3 and "no module named 'nosuchmodule'" in r.stderr
    assert "Traceback" not in r.stderr and "retrying" not in r.stderr


def test_an_import_error_inside_the_users_module_keeps_its_traceback(tmp_path: Path,
                                                                     runq_env: dict[str, str]) -> None:
    """A missing dependency of the user's own module: the traceback shows which import failed, and where."""
    r = runq_worker(tmp_path, runq_env, "broken:worker")
    assert r.returncode != 0 and "broken.py" in r.stderr
    assert "No module named 'a_dependency_that_is_not_installed'" in r.stderr


@pytest.mark.trio
async def test_a_hello_the_server_refuses_for_good_is_not_retried(server: Server) -> None:
    """A hello the server refuses as malformed (here: concurrency 0, set after construction) cannot succeed
    later: the worker stops with HelloRefused instead of reconnecting for ever."""
    worker = Worker()
    worker.concurrency = 0
    with trio.fail_after(10), pytest.raises(HelloRefused) as info:
        await worker.run(f"127.0.0.1:{server.port}")
    assert info.value.code == "bad_message" and "concurrency" in info.value.message


def test_worker_checks_its_queues() -> None:
    with pytest.raises(ValueError, match="queues"):
        Worker(queues=[])
    with pytest.raises(ValueError, match="queues"):
        Worker(queues=[""])
