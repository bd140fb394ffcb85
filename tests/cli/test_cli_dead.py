"""``runq dead`` and its ``retry`` and ``delete`` (issue 11): real ``runq`` processes against a real ``runq serve``
with a real worker (the ``served`` fixture), whose ``boom`` task fails every time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cli_helpers import Served, run_cli

from runq import SyncClient
from runq.cli.dead import parse_when


def _dead(c: SyncClient, n: int, queue: str) -> list[int]:
    ids = [c.enqueue("boom", i, queue=queue, retries=0) for i in range(n)]
    for tid in ids:
        assert c.wait(tid, timeout=20)["state"] == "dead"
    return ids


def test_dead_tasks_listed_retried_and_deleted_by_filter(served: Served) -> None:
    s = ["--server", served.address]
    with SyncClient(served.address) as c:
        mail = _dead(c, 3, "mail")
        other = _dead(c, 2, "default")
        r = run_cli("dead", "--json", *s)
        assert r.returncode == 0, r.stderr
        assert [t["id"] for t in json.loads(r.stdout)["tasks"]] == [*other[::-1], *mail[::-1]]
        r = run_cli("dead", "--queue", "mail", "--since", "1h", *s)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["ID", "QUEUE", "TYPE", "ATTEMPT", "DEAD", "ERROR"]
        assert [int(ln.split()[0]) for ln in lines[1:]] == mail[::-1]
        assert "ValueError: boom: 2" in lines[1]
        r = run_cli("dead", "--error", "BOOM: 1", "--json", *s)
        assert [t["id"] for t in json.loads(r.stdout)["tasks"]] == [other[1], mail[1]]
        r = run_cli("dead", "--until", "1h", *s)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "runq dead: no dead task matches\n")
        r = run_cli("dead", "--limit", "2", *s)
        assert r.stderr == f"runq dead: more with --cursor {other[0]}\n"

        # retry at most --limit, the oldest first; --all goes on until none is left
        r = run_cli("dead", "retry", "--queue", "mail", "--limit", "2", *s)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"2 dead task(s) retried: {mail[0]}, {mail[1]}\n"
        assert "more dead tasks match" in r.stderr
        for tid in mail[:2]:
            assert c.wait(tid, timeout=20)["state"] == "dead"  # (boom fails again: dead again, attempt 1)
        # one per call, the three of them (each dead before the command started: those it retries that die
        # again meanwhile are not taken again)
        r = run_cli("dead", "retry", "--queue", "mail", "--limit", "1", "--all", "--json", *s)
        assert json.loads(r.stdout) == {"ids": mail, "skipped": [], "more": False}
        for tid in mail:
            assert c.wait(tid, timeout=20)["state"] == "dead"
        events = c.events(mail[0])
        assert [e["kind"] for e in events][-4:] == ["retried", "started", "failed", "dead"]

        # delete: no filter asks first; --yes does not
        r = run_cli("dead", "delete", *s)
        assert r.returncode != 0 and "no filter given" in r.stderr
        r = run_cli("dead", "delete", "--queue", "default", *s)
        assert r.stdout == f"2 dead task(s) deleted: {other[0]}, {other[1]}\n"
        assert c.get(other[0])["state"] == "cancelled"
        r = run_cli("dead", "delete", "--yes", "--json", *s)
        assert json.loads(r.stdout) == {"ids": mail, "skipped": [], "more": False}
        assert run_cli("dead", "--json", *s).stdout.strip() == '{\n  "tasks": [],\n  "cursor": null\n}'
        kinds = [(e["kind"], e["actor"]) for e in c.server_events() if e["kind"].startswith("dead_")]
        assert [k for k, _ in kinds] == ["dead_retried"] * 4 + ["dead_deleted"] * 2
        assert all(actor for _, actor in kinds)


def test_bad_dead_letter_options_are_usage_errors(served: Served) -> None:
    s = ["--server", served.address]
    r = run_cli("dead", "--since", "yesterday", *s)
    assert r.returncode == 2 and "is not a time" in r.stderr
    r = run_cli("dead", "retry", "--limit", "0", *s)
    assert r.returncode == 2 and "--limit" in r.stderr
    r = run_cli("dead", "retry", "--error", "x" * 1001, *s)
    assert r.returncode == 1 and "'error'" in r.stderr


def test_enqueue_with_a_retry_policy_of_its_own(served: Served) -> None:
    s = ["--server", served.address]
    r = run_cli("enqueue", "boom", "--retries", "1", "--retry-policy", '{"delays": [0.2], "never_retry": ["KeyError"]}',
                *s)
    assert r.returncode == 0, r.stderr
    tid = int(r.stdout)
    with SyncClient(served.address) as c:
        t = c.wait(tid, timeout=20)
        assert (t["state"], t["attempt"]) == ("dead", 2)
        assert t["retry_policy"] == '{"delays":[0.2],"never_retry":["KeyError"]}'
        assert [e["detail"] for e in c.events(tid) if e["kind"] == "retry_scheduled"] == ["in 0.200s"]
    r = run_cli("enqueue", "boom", "--retry-policy", '{"jitter": 5}', *s)
    assert r.returncode == 2 and "'jitter' must be a number from 0 to 1" in r.stderr
    r = run_cli("enqueue", "boom", "--retry-policy", "{delays", *s)
    assert r.returncode == 2 and "is not JSON" in r.stderr


def test_the_servers_default_backoff_is_checked(tmp_path: Path) -> None:
    r = run_cli("serve", "--db", str(tmp_path / "x.db"), "--port", "0", "--backoff-base", "5", "--backoff-max", "1")
    assert r.returncode == 2 and "--backoff-max (1) must not be below --backoff-base (5)" in r.stderr
    r = run_cli("serve", "--db", str(tmp_path / "x.db"), "--port", "0", "--jitter", "2")
    assert r.returncode == 2 and "--jitter" in r.stderr
    assert not (tmp_path / "x.db").exists()


def test_times_on_the_command_line() -> None:
    assert parse_when("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_when("90s", now=100.0) == 10.0
    assert parse_when("1700000000") == 1_700_000_000.0
    assert parse_when("2026-11-30T09:00:00+00:00") == 1_796_029_200.0
    with pytest.raises(ValueError, match="not a time"):
        parse_when("soon")
    assert abs(parse_when("1d") - (time.time() - 86400)) < 5
