"""Limits from the SDK (issue 11): ``@runq.task(rate_limit=..., concurrency=...)`` sets its type's limit on the
server when a worker with it joins, and the ``SyncClient`` methods, against a real server in a thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from runq import SyncClient, Worker, task
from runq.protocol.errors import RemoteError


@task(rate_limit="600/m", concurrency=2)
def limited(n: int) -> int:
    return n


def test_a_definitions_limit_is_the_types_limit_once_a_worker_joins(threaded_server: Any) -> None:
    worker = Worker(tasks=[limited])
    found: list[Any] = []

    def produce() -> None:
        try:
            with SyncClient(threaded_server.address) as c:
                done = c.wait(c.enqueue("limited", {"n": 1}), timeout=15)
                found.append((done["state"], c.limits()))
        finally:
            worker.stop()

    t = threading.Thread(target=produce)
    t.start()
    worker.run_sync(threaded_server.address, handle_signals=False)
    t.join(15)
    state, limits = found[0]
    assert state == "succeeded"
    assert [(x["scope"], x["name"], x["rate"], x["period"], x["concurrency"]) for x in limits] == [
        ("type", "limited", 600.0, 60.0, 2)]


@pytest.mark.parametrize(("options", "why"), [
    ({"rate_limit": "fast"}, "rate 'fast'"), ({"rate_limit": "0/s"}, "must be > 0"),
    ({"concurrency": 0}, "concurrency"), ({"concurrency": True}, "concurrency"),
])
def test_bad_limits_are_refused_at_definition(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        task(**options)(limited.fn)


def test_the_blocking_client_sets_and_reads_limits_and_breakers(threaded_server: Any) -> None:
    with SyncClient(threaded_server.address) as c:
        lim = c.set_limit("queue", "mail", rate="5/2s", burst=3)
        assert (lim["rate"], lim["period"], lim["burst"], lim["concurrency"]) == (5.0, 2.0, 3, None)
        assert [x["name"] for x in c.limits()] == ["mail"]
        assert c.remove_limit("queue", "mail") is True and c.limits() == []
        assert c.set_breaker("t", threshold=0.2)["threshold"] == 0.2
        assert c.open_breaker("t")["state"] == "open"
        assert c.close_breaker("t")["state"] == "closed"
        assert [b["type"] for b in c.breakers()] == ["t"]
        assert c.remove_breaker("t") is True
        c.pause("held")
        tid = c.enqueue("t", queue="held")
        why = c.why(tid)
        assert why is not None and why["reason"] == "paused"
        assert [e["kind"] for e in c.server_events(limit=3)] == ["breaker_closed", "breaker_removed", "queue_paused"]
        with pytest.raises(RemoteError) as err:
            c.set_limit("queue", "mail", concurrency=0)
        assert err.value.code == "bad_request"
        with pytest.raises(TypeError, match="'id'"):  # (checked before it is sent: no bad_message for all)
            c.why("12")  # type: ignore[arg-type]
        assert c.limits() == []  # (the connection is fine)
        with pytest.raises(ValueError, match="not both"):
            c.set_limit("queue", "mail", rate="1/s", period=5)
