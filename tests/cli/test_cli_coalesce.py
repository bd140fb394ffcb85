"""``runq enqueue --coalesce-key/--coalesce/--limit-key`` (docs/cli.md): a real ``runq`` process against a real
``runq serve`` with a real worker (the ``served`` fixture)."""

from __future__ import annotations

from cli_helpers import Served, run_cli

from runq import SyncClient


def test_enqueue_with_a_coalesce_key_prints_the_waiting_tasks_id(served: Served) -> None:
    s = ["--server", served.address]
    first = run_cli("enqueue", "echo", "--payload", '{"word": "a"}', "--delay", "3600", "--coalesce-key", "k7", *s)
    assert first.returncode == 0, first.stderr
    tid = int(first.stdout)
    again = run_cli("enqueue", "echo", "--payload", '{"word": "b"}', "--coalesce-key", "k7", *s)
    kept = run_cli("enqueue", "echo", "--payload", '{"word": "c"}', "--coalesce-key", "k7", "--coalesce", "keep", *s)
    assert (again.returncode, int(again.stdout), kept.returncode, int(kept.stdout)) == (0, tid, 0, tid)
    limited = run_cli("enqueue", "echo", "--delay", "3600", "--limit-key", "acme", *s)
    with SyncClient(served.address) as c:
        task = c.get(tid)
        assert task["payload"] == {"word": "b"} and task["coalesce_key"] == "k7" and task["state"] == "scheduled"
        assert c.get(int(limited.stdout))["limit_key"] == "acme"
    bad = run_cli("enqueue", "echo", "--coalesce", "keep", *s)
    assert bad.returncode == 2 and "--coalesce needs --coalesce-key" in bad.stderr
