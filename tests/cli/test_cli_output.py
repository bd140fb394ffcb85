"""What ``runq`` prints: tables and task views for people (plain text in a pipe, rich on a terminal), human
times in ``status``, ``--json`` exactly as before for scripts, and a line on stderr when nothing matches."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from typing import Any

import pytest
from cli_helpers import HERE, Served, cli_env

from runq import SyncClient
from runq.cli import main
from runq.cli.output import ago, duration

ANSI = re.compile(r"\x1b\[")
BOX = re.compile(r"[\u2500-\u257f]")  # box drawing


@pytest.fixture(scope="module")
def done(served: Served) -> dict[str, Any]:
    """A succeeded task and a dead one (its error a traceback), by name."""
    with SyncClient(served.address) as c:
        ok = c.enqueue("echo", {"word": "héllo", "n": [1, 2]}, priority=5, key="k1")
        bad = c.enqueue("boom", "x", retries=0, queue="mail")
        return {"ok": c.wait(ok, 10), "bad": c.wait(bad, 10)}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0004, "0.4 ms"), (0.0042, "4.2 ms"), (0.25, "250 ms"), (3.46, "3.5 s"), (42, "42 s"), (200, "3 min 20 s"),
    (600, "10 min"), (754, "12 min"), (7500, "2 h 5 min"), (7200, "2 h"), (3 * 86400 + 4 * 3600 + 5, "3 d 4 h"),
    (-42, "42 s"),
])
def test_durations(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_ages() -> None:
    assert ago(100.0, 280.0) == "3 min ago"
    assert ago(130.0, 100.0) == "in 30 s"


def test_status_for_people_names_the_fields_and_gives_local_times_and_ages(
        served: Served, done: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    task = done["ok"]
    rc, out, err = run(capsys, "status", str(task["id"]), "-s", served.address)
    assert (rc, err) == (0, "")
    view = dict(line.split(None, 1) for line in out.splitlines())
    assert list(view) == ["id", "type", "state", "queue", "priority", "attempt", "timeout", "key", "worker",
                          "created_at", "started_at", "finished_at", "payload", "result"]
    assert (view["id"], view["type"], view["state"], view["queue"], view["priority"]) == (
        str(task["id"]), "echo", "succeeded", "default", "5")
    assert (view["attempt"], view["timeout"], view["key"]) == ("1 (max_retries 3)", "10 min", "k1")
    assert view["payload"] == view["result"] == '{"word": "héllo", "n": [1, 2]}'
    for field in ("created_at", "started_at", "finished_at"):
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task[field]))
        assert re.fullmatch(re.escape(local) + r" \(\d+(\.\d)? (ms|s) ago(; ran [\d.]+ ms)?\)", view[field]), view[field]
    assert "; ran " in view["finished_at"]


def test_status_of_a_dead_task_shows_its_traceback_as_it_is(served: Served, done: dict[str, Any],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "status", str(done["bad"]["id"]), "-s", served.address)
    assert rc == 0
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error "))
    assert lines[first].split(None, 1)[1] == "Traceback (most recent call last):"
    assert lines[-1].strip() == "ValueError: boom: x" and "result" not in out
    assert [line.split(None, 1)[1] for line in lines if line.startswith("state ")] == ["dead"]
    rc, out, _ = run(capsys, "wait", str(done["bad"]["id"]), "-s", served.address)
    assert rc == 1 and "ValueError: boom: x" in out  # wait: the same view, exit 1 unless it succeeded


@pytest.mark.parametrize("args", [["status", "ok"], ["wait", "ok"], ["status", "bad"], ["cancel", "bad"],
                                  ["events", "ok"], ["queues"], ["types"], ["tasks"]])
def test_json_is_what_the_sdk_returns_written_as_before(served: Served, done: dict[str, Any], args: list[str],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints json.dumps(indent=2, ensure_ascii=False) of the SDK's answer (what the commands
    printed before there was a human view); tasks: {"tasks": [...], "cursor": ...} as the HTTP API."""
    command, *rest = args
    tid = done[rest[0]]["id"] if rest else None
    with SyncClient(served.address) as c:
        expected: Any = {"status": lambda: c.get(tid), "wait": lambda: c.wait(tid), "events": lambda: c.events(tid),
                         "cancel": lambda: None, "queues": c.queues, "types": c.task_types,
                         "tasks": lambda: dict(zip(("tasks", "cursor"), c.list_tasks(limit=50), strict=True))}[command]()
    rc, out, _ = run(capsys, command, *([str(tid)] if tid else []), "--json", "-s", served.address)
    if command == "cancel":  # (a dead task cannot be cancelled: the one-line error, no JSON)
        assert rc == 1 and out == ""
        return
    assert rc == 0
    assert out == json.dumps(expected, indent=2, ensure_ascii=False) + "\n"


def test_tables_in_a_pipe_are_plain_rows(served: Served, done: dict[str, Any],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "types", "-s", served.address)
    assert rc == 0 and [line.split() for line in out.splitlines()] == [
        ["TYPE", "WORKERS", "QUEUES", "BATCH", "REQUIRES"], ["boom", "1", "default,mail", "-", "-"],
        ["echo", "1", "default,mail", "-", "-"]]
    rc, out, _ = run(capsys, "tasks", "-s", served.address)
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["ID", "STATE", "QUEUE", "TYPE", "PRIORITY", "ATTEMPT", "CREATED"]
    with SyncClient(served.address) as c:
        listed = c.list_tasks(limit=50)[0]
    assert [r[:6] for r in rows[1:]] == [[str(t["id"]), t["state"], t["queue"], t["type"], str(t["priority"]),
                                          str(t["attempt"])] for t in listed]
    assert all(r[7:] in (["ms", "ago"], ["s", "ago"]) and float(r[6]) >= 0 for r in rows[1:]), rows
    rc, out, _ = run(capsys, "queues", "-s", served.address)
    assert out.splitlines()[0].split() == ["QUEUE", "PAUSED", "SCHEDULED", "READY", "RUNNING", "WORKERS"]
    assert {line.split()[0] for line in out.splitlines()[1:]} == {"default", "mail"}
    rc, out, _ = run(capsys, "workers", "-s", served.address)
    header, (row,) = out.splitlines()[0].split(), out.splitlines()[1:]
    assert header == ["ID", "STATE", "HOST", "PID", "QUEUES", "IN_FLIGHT", "COMPLETED", "FAILED", "HEARTBEAT",
                      "CONNECTED"]
    assert row.split()[1] == "active" and row.split()[3] == str(served.worker.pid) and "0/2" in row.split()
    rc, out, _ = run(capsys, "events", str(done["bad"]["id"]), "-s", served.address)
    rows = out.splitlines()
    assert rows[0].split() == ["TIME", "SINCE", "EVENT", "STATE", "ATTEMPT", "WORKER", "DETAIL"]
    kinds = [re.findall(r" (enqueued|started|failed|dead|ready|running) ", r) for r in rows[1:]]
    assert kinds == [["enqueued", "ready"], ["started", "running"], ["failed", "failed"], ["dead", "dead"]]
    assert rows[3].endswith("ValueError: boom: x") and rows[4].endswith(" 1 attempt, retries spent")
    for command in (["types"], ["tasks"], ["queues"], ["workers"], ["events", str(done["bad"]["id"])],
                    ["status", str(done["ok"]["id"])]):
        rc, out, _ = run(capsys, *command, "-s", served.address)
        assert not ANSI.search(out) and not BOX.search(out), (command, out)
        assert all(line == line.rstrip() for line in out.splitlines()), command


def test_a_long_row_is_one_line_in_a_pipe(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    """Rich lays tables out for 80 columns when it is not on a terminal: cells were cut or wrapped."""
    name = "a_task_type_with_a_name_far_longer_than_any_terminal_is_wide_" * 3
    with SyncClient(served.address) as c:
        c.enqueue(name, None, queue="wide")
    rc, out, _ = run(capsys, "tasks", "--queue", "wide", "-s", served.address)
    assert rc == 0 and len(out.splitlines()) == 2 and out.splitlines()[1].split()[3] == name


def test_nothing_found_is_a_line_on_stderr_and_exit_0(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tasks", "--state", "running", "-s", served.address) == (
        0, "", "runq tasks: no tasks match --state running\n")
    assert run(capsys, "tasks", "--queue", "nosuch", "--type", "echo", "-s", served.address) == (
        0, "", "runq tasks: no tasks match --queue nosuch --type echo\n")
    assert run(capsys, "tasks", "--cursor", "1", "-s", served.address) == (0, "", "runq tasks: no more tasks\n")
    rc, out, _ = run(capsys, "tasks", "--state", "running", "--json", "-s", served.address)
    assert (rc, json.loads(out)) == (0, {"tasks": [], "cursor": None})


def test_head_reads_one_line_and_the_command_ends_quietly(served: Served) -> None:
    """`runq tasks | head -1`: the header, and runq exits 0 with nothing on stderr (its stdout may be closed
    before it wrote everything: tests/e2e/test_e2e.py closes it before the first byte)."""
    with SyncClient(served.address) as c:
        c.enqueue_many([{"type": "x" * 100, "queue": "pipe"} for _ in range(999)])  # ~150 kB, one page
    script = f"{sys.executable} -m runq.cli tasks --queue pipe --limit 1000 -s {served.address} | head -1; " \
             "echo \"status ${PIPESTATUS[0]}\""
    r = subprocess.run(["bash", "-c", script], env=cli_env(), cwd=HERE, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.stdout.split() == ["ID", "STATE", "QUEUE", "TYPE", "PRIORITY", "ATTEMPT", "CREATED", "status", "0"]
    assert r.stderr == ""


def test_on_a_terminal_tables_are_drawn_by_rich(served: Served) -> None:
    """In a pseudo-terminal: a bold header, a rule under it, the state in colour (rich's), no --json change."""
    main_fd, child_fd = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="120")
    env.pop("NO_COLOR", None)
    p = subprocess.Popen([sys.executable, "-m", "runq.cli", "types", "-s", served.address], env=env, cwd=HERE,
                         stdin=subprocess.DEVNULL, stdout=child_fd, stderr=child_fd)
    os.close(child_fd)
    out = b""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, out
        ready, _, _ = select.select([main_fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(main_fd)
    assert p.wait(30) == 0
    text = out.decode()
    assert "\x1b[1m" in text and "─" in text and "echo" in text and "boom" in text


def test_types_show_a_batched_type_and_the_labels_a_type_requires() -> None:
    from runq.cli.queues import types_rows

    assert types_rows([{"type": "index", "workers": 2, "queues": ["a", "b"],
                        "batch": {"max_size": 50, "max_wait": 2.0}, "requires": {"region": "eu", "gpu": "1"}},
                       {"type": "plain", "workers": 1, "queues": ["default"], "batch": None, "requires": None}]) == [
        ("index", 2, "a,b", "50 / 2s", "gpu=1,region=eu"), ("plain", 1, "default", "-", "-")]
