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
    (tmp_path / "two.py").write_text("from runq import Worker\na = Worker()\nb = Worker()\n")
    (tmp_path / "shop").mkdir(exist_ok=True)
    (tmp_path / "shop" / "tasks.py").write_text("from runq import task\n\n@task\ndef ship(n: int) -> int:\n    return n\n")
    # port 1: nothing listens there; every case below must stop before it matters
    return subprocess.run([sys.executable, "-m", "runq.cli", "worker", "--server", "127.0.0.1:1", *args],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("args", "status", "message"), [
    # the target (exit 3: starting again would not help, a supervisor stops)
    (["nosuchmodule:worker"], 3, ("runq worker: no module named 'nosuchmodule' (from 'nosuchmodule:worker'; run it "
                                 "from the folder that holds it, or set PYTHONPATH)")),
    (["nosuchpackage.tasks"], 3, "runq worker: no module named 'nosuchpackage' (from 'nosuchpackage.tasks'"),
    (["mytasks:nope"], 3, "runq worker: 'mytasks' has no attribute 'nope' (from 'mytasks:nope')"),
    (["mytasks:worker.nope"], 3, "runq worker: 'mytasks' has no attribute 'worker.nope' (from 'mytasks:worker.nope')"),
    (["mytasks.worker"], 3, "runq worker: no module named 'mytasks.worker'"),  # (a bare name is a module)
    (["my-tasks:worker"], 3, "runq worker: 'my-tasks:worker' is not module:attr or module"),
    (["empty"], 3, "runq worker: 'empty' holds no runq.Worker and no task definition"),
    (["mytasks:t"], 3, "runq worker: mytasks:t is a function, not a runq.Worker or task definition"),
    (["two"], 3, "runq worker: 'two' holds 2 runq.Worker objects: name one (two:NAME)"),
    # a newcomer's slips, each with the way out
    (["shop/tasks.py"], 3, "runq worker: 'shop/tasks.py' is a file path; give its module: runq worker shop.tasks"),
    (["shop.task"], 3, "runq worker: no module named 'shop.task' (from 'shop.task'; did you mean 'shop.tasks'?)"),
    (["shop.tasks:worker"], 3, ("'shop.tasks' has no attribute 'worker' (from 'shop.tasks:worker'); it holds the task "
                                "definitions ship: `runq worker shop.tasks` runs them")),
    # the options (exit 2: usage)
    (["mytasks:worker", "--concurrency", "0"], 2, "Invalid value for '--concurrency' / '-c': 0 is not in the range x>=1"),
    (["mytasks:worker", "--queues", ","], 2, "Invalid value for '--queues' / '-q': needs at least one queue name"),
    (["mytasks:worker", "--processes", "0"], 2, "Invalid value for '--processes' / '-p': 0 is not in the range x>=1"),
    (["mytasks:worker", "--log-level", "LOUD"], 2, "unknown log level 'LOUD'"),  # (after the subcommand too)
    (["mytasks:worker", "--log-config", "nosuchfile.json"], 2, "--log-config nosuchfile.json"),
    (["mytasks:worker", "--server", "host:port"], 2, "bad server address 'host:port': the port must be a number"),
    # the supervisor stops at once instead of restarting children that cannot start
    (["nosuchmodule:worker", "--processes", "2"], 3, "cannot start (exit 3): stopping"),
])
def test_wrong_input_is_one_clear_line(tmp_path: Path, runq_env: dict[str, str], args: list[str], status: int,
                                       message: str) -> None:
    r = runq_worker(tmp_path, runq_env, *args)
    assert r.returncode == status and message in r.stderr, r.stderr
    if "--processes" in args and args[0] == "nosuchmodule:worker":
        assert "no module named 'nosuchmodule'" in r.stderr
    assert "Traceback" not in r.stderr and "retrying" not in r.stderr


def test_load_worker_resolves_targets_with_pkgutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package's module, ``module:attr``, a dotted ``attr``, a task definition: each gives its Worker."""
    from runq.cli import load_worker

    (tmp_path / "loadpkg").mkdir()
    (tmp_path / "loadpkg" / "__init__.py").write_text("")
    (tmp_path / "loadpkg" / "jobs.py").write_text(
        TASKS + "\nclass Holder:\n    w = worker\n\n\nfrom runq import task\n\n\n@task\ndef add(x: int) -> int:\n"
                "    return x + 1\n")
    monkeypatch.chdir(tmp_path)  # (load_worker puts the current folder on sys.path, as `runq worker` does)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        w = load_worker("loadpkg.jobs")  # a bare module: its one Worker
        jobs = sys.modules["loadpkg.jobs"]
        assert w is jobs.worker
        assert load_worker("loadpkg.jobs:worker") is jobs.worker
        assert load_worker("loadpkg.jobs:Holder.w") is jobs.worker
        assert sorted(load_worker("loadpkg.jobs:add").handlers) == ["add"]
    finally:
        for name in ("loadpkg", "loadpkg.jobs"):
            sys.modules.pop(name, None)


def test_an_attribute_error_inside_the_users_module_keeps_its_traceback(tmp_path: Path,
                                                                        runq_env: dict[str, str]) -> None:
    """Not 'has no attribute': the module itself raised while importing, and its traceback says where."""
    (tmp_path / "attrerr.py").write_text("import os\nos.no_such_function()\n")
    r = runq_worker(tmp_path, runq_env, "attrerr:worker")
    assert r.returncode == 3 and "attrerr.py" in r.stderr and "Traceback" in r.stderr
    assert "module 'os' has no attribute 'no_such_function'" in r.stderr and "(from 'attrerr:worker')" not in r.stderr


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
