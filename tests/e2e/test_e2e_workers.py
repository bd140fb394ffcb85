"""End to end, the ``runq worker`` command (issue 8): its event loop, its logs, ``--processes``, ``--reload``,
and a worker paused past its lease timeout. Real ``runq serve`` and ``runq worker`` processes."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from pathlib import Path

import pytest
import trio
from e2e_cluster import Cluster, wait_until

from runq import SyncClient
from runq.protocol.calls import Backoff
from runq.protocol.supervisor import Supervisor

pytestmark = pytest.mark.e2e


def worker_pids(c: SyncClient) -> set[int]:
    return {w["pid"] for w in c.workers()}


def test_asyncio_by_default_and_a_hint_naming_the_flag_under_trio(cluster: Cluster) -> None:
    cluster.start_server()
    default = cluster.start_worker("--log-level", "INFO")  # (options after the subcommand work)
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, default)
        ok = c.wait(c.enqueue("loop_name", retries=0), timeout=20)
        assert ok["state"] == "succeeded" and "EventLoop" in ok["result"], ok
        default.signal(signal.SIGTERM)
        assert default.wait(15) == 0
        on_trio = cluster.start_worker("--backend", "trio")
        cluster.wait_joined(c, on_trio)
        bad = c.wait(c.enqueue("loop_name", retries=0), timeout=20)
    assert bad["state"] == "dead" and "RuntimeError: no running event loop" in bad["error"]
    assert "--backend asyncio" in bad["error"]
    out = default.output()
    assert f"task {ok['id']} loop_name attempt 1 succeeded (" in out
    # the failure's traceback in the log too, starting at the user's handler
    logged = on_trio.output()
    assert f"task {bad['id']} loop_name attempt 1 failed (" in logged and "--backend asyncio" in logged
    tb = logged[logged.index("Traceback (most recent call last)"):]
    assert tb.splitlines()[1].strip().startswith('File "') and "e2e_tasks.py" in tb.splitlines()[1]


def test_json_logs_with_the_options_after_the_subcommand(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_server()
    w = cluster.start_worker("--log-format", "json", "--log-level", "DEBUG")
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        tid = c.enqueue("compute", 20)
        assert c.wait(tid, timeout=20)["result"] == 41
        wait_until(lambda: f'"task_id": {tid}' in w.output(), timeout=10)
    lines = [json.loads(line) for line in w.output().splitlines() if line.startswith("{")]
    (task_line,) = [x for x in lines if x.get("task_id") == tid]
    assert {k: task_line[k] for k in ("logger", "level", "task_type", "attempt", "outcome")} == {
        "logger": "runq.worker.task", "level": "INFO", "task_type": "compute", "attempt": 1, "outcome": "succeeded"}
    assert task_line["duration"] >= 0 and task_line["pid"] == w.pid
    assert any(x["logger"] == "runq.worker" and "joined" in x["message"] for x in lines)


def test_log_config_file(cluster: Cluster, tmp_path: Path) -> None:
    log_file = tmp_path / "worker.log"
    conf = {"formatters": {"plain": {"format": "%(levelname)s|%(name)s|%(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain"}},
            "loggers": {"runq.worker.task": {"level": "INFO"}},
            "root": {"level": "WARNING", "handlers": ["file"]}}
    (tmp_path / "logging.json").write_text(json.dumps(conf))
    cluster.start_server()
    w = cluster.start_worker("--log-config", str(tmp_path / "logging.json"))
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        tid = c.enqueue("compute", 1)
        c.wait(tid, timeout=20)
        wait_until(lambda: log_file.exists() and f"task {tid} " in log_file.read_text(), timeout=10)
    text = log_file.read_text()
    assert f"INFO|runq.worker.task|task {tid} compute attempt 1 succeeded" in text
    assert "joined" not in text  # runq.worker stays at the file's root level, WARNING


def test_processes_restart_a_dead_child_and_stop_together(cluster: Cluster) -> None:
    cluster.start_server()
    sup = cluster.start_worker("--processes", "2", "--concurrency", "1", "--grace", "5")
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(worker_pids(c)) == 2, timeout=30)
        first = worker_pids(c)
        assert sup.pid not in first  # the supervisor runs no handler itself
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        second: set[int] = set()

        def replaced() -> bool:
            second.clear()
            second.update(worker_pids(c))
            return len(second) == 2 and victim not in second

        wait_until(replaced, timeout=30)
        assert second & first == first - {victim}, (first, second)  # one new child, the other untouched
        # a task running in a child when the supervisor gets SIGTERM finishes before that child leaves
        tid = c.enqueue("sleep", {"s": 1.0, "tag": "finished"})
        cluster.wait_runs(lambda r: any(x.id == tid and x.what == "start" for x in r))
        sup.signal(signal.SIGTERM)
        assert sup.wait(20) == 0
        assert c.get(tid)["state"] == "succeeded"
        wait_until(lambda: not worker_pids(c), timeout=10)
    for pid in second:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_drained_child_is_not_started_again(cluster: Cluster) -> None:
    """`runq drain` of one child under --processes: it leaves, and the supervisor does not undo that by
    starting another (it did, at once); the supervisor ends with its last child."""
    cluster.start_server()
    sup = cluster.start_worker("--processes", "2", "--concurrency", "1")
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(worker_pids(c)) == 2, timeout=30)
        for n, w in enumerate(sorted(c.workers(), key=lambda w: w["pid"])):
            c.drain(w["id"])
            wait_until(lambda n=n: len(worker_pids(c)) == 1 - n, timeout=15)  # type: ignore[misc]
            time.sleep(1.5)  # a restart would come within the supervisor's first delay (0.5 s)
            assert len(worker_pids(c)) == 1 - n, worker_pids(c)
        assert sup.wait(15) == 0  # nothing left to supervise
    assert "was drained (runq drain): not started again" in sup.output()


def test_children_stop_when_their_supervisor_is_killed(cluster: Cluster) -> None:
    """SIGKILL of the supervisor: its children notice (their parent changed) and stop gracefully, instead of
    working on unsupervised beside the next supervisor's."""
    cluster.start_server()
    sup = cluster.start_worker("--processes", "2")
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(worker_pids(c)) == 2, timeout=30)
        children = worker_pids(c)
        sup.kill9()
        wait_until(lambda: not worker_pids(c), timeout=15)

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # (a zombie until init reaps it)
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in children), timeout=15)
    assert f"the supervisor (pid {sup.pid}) is gone: stopping" in sup.output()


def test_reload_restarts_the_worker_when_its_code_changes(cluster: Cluster, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = "from runq import Worker\nworker = Worker(concurrency=1)\n\n@worker.task('version')\nasync def v(p):\n" \
             "    return {}\n"
    (code / "reload_tasks.py").write_text(module.format(1))
    cluster.env["PYTHONPATH"] = os.pathsep.join([str(code), cluster.env["PYTHONPATH"]])
    cluster.start_server()
    sup = cluster._spawn("worker", ["worker", "reload_tasks:worker", "--server", cluster.address, "--reload",
                                    "--reload-dir", str(code), "--grace", "5"])
    with SyncClient(cluster.address) as c:
        wait_until(lambda: len(worker_pids(c)) == 1, timeout=30)
        (before,) = worker_pids(c)
        assert c.wait(c.enqueue("version"), timeout=20)["result"] == 1
        (code / "reload_tasks.py").write_text(module.format(2))
        wait_until(lambda: worker_pids(c) not in (set(), {before}), timeout=30)
        assert c.wait(c.enqueue("version"), timeout=20)["result"] == 2
        # a syntax error mid-edit: reported, then the supervisor waits for the next change (no restart loop)
        (code / "reload_tasks.py").write_text("def broken(:\n")
        wait_until(lambda: "waiting for a code change" in sup.output(), timeout=30)
        assert not worker_pids(c) and sup.alive()
        (code / "reload_tasks.py").write_text(module.format(3))
        assert c.wait(c.enqueue("version"), timeout=30)["result"] == 3
        assert sup.output().count("SyntaxError") == 1
        sup.signal(signal.SIGTERM)
        assert sup.wait(20) == 0
    assert "changed: " in sup.output()
    assert f"watching {code} for changes to *.py, *.pyx, *.pyd files (not under __pycache__, .git," in sup.output()


@pytest.mark.trio
async def test_reload_says_which_folder_and_files_it_watches(caplog: pytest.LogCaptureFixture, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             runq_env: dict[str, str]) -> None:
    """``runq worker --reload`` watches the current folder unless told: its first line says which, and what."""
    caplog.set_level(logging.INFO, logger="runq.supervisor")
    monkeypatch.chdir(tmp_path)
    sup = Supervisor(["--log-level", "NOPE", "worker", "e2e_tasks:worker"], 1, reload=True, env=runq_env,
                     first_backoff=0.1)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            sup.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("watching")]
    assert lines == [(f"watching {tmp_path} (the current folder; --reload-dir to choose) for changes to *.py, "
                      "*.pyx, *.pyd files (not under __pycache__, .git, .hg, .svn, .tox, .venv, .idea, node_modules, "
                      ".mypy_cache, .pytest_cache, .hypothesis)")]


@pytest.mark.trio
async def test_a_child_that_keeps_dying_is_restarted_with_growing_delays(caplog: pytest.LogCaptureFixture,
                                                                         runq_env: dict[str, str]) -> None:
    """Children that exit at once (here: an unknown log level, exit 2) come back after 0.1, 0.2, 0.4 s...
    (calls.Backoff: each jittered to between half and all of it)."""
    caplog.set_level(logging.INFO, logger="runq.supervisor")
    sup = Supervisor(["--log-level", "NOPE", "worker", "e2e_tasks:worker"], 1, env=runq_env, first_backoff=0.1,
                     rng=random.Random(7))
    same = Backoff(0.1, sup.max_backoff, random.Random(7))  # the policy the SDK reconnects with

    def delays() -> list[str]:
        return [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "starting another in" in r.getMessage()]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            while len(delays()) < 3:
                await trio.sleep(0.01)
            sup.stop()
    assert delays()[:3] == [f"{same.next():.2f}s" for _ in range(3)]
    seconds = [float(d.removesuffix("s")) for d in delays()[:3]]
    assert 0.05 <= seconds[0] <= 0.1 and 0.1 <= seconds[1] <= 0.2 and 0.2 <= seconds[2] <= 0.4, seconds
    assert sup.exit_code == 0


def test_a_paused_worker_starts_no_prefetched_task_whose_lease_expired(cluster: Cluster) -> None:
    """SIGSTOP past the lease timeout, then SIGCONT: the tasks it had prefetched were taken back by the
    server meanwhile, so it must not start them under those leases (their first side effects would run twice
    when they run again)."""
    cluster.start_server("--lease-timeout", "1")
    w = cluster.start_worker("--concurrency", "2")  # credit 4: 2 run, 2 wait in its buffer
    with SyncClient(cluster.address) as c:
        cluster.wait_joined(c, w)
        running = c.enqueue_many([{"type": "sleep", "payload": {"s": 0.3}} for _ in range(2)])
        prefetched = c.enqueue_many([{"type": "compute", "payload": i} for i in range(2)])
        cluster.wait_runs(lambda r: sum(1 for x in r if x.what == "start") == 2)
        wait_until(lambda: all(c.get(t)["state"] == "running" for t in prefetched), timeout=10)
        w.signal(signal.SIGSTOP)
        wait_until(lambda: all("lost" in [e["kind"] for e in c.events(t)] for t in prefetched), timeout=15)
        w.signal(signal.SIGCONT)
        tasks = [c.wait(t, timeout=20) for t in running + prefetched]
    assert [t["state"] for t in tasks] == ["succeeded"] * 4
    runs = [(r.id, r.attempt) for r in cluster.runs() if r.id in prefetched]
    assert sorted(runs) == [(t, 2) for t in prefetched], runs  # each ran once, under its new lease
