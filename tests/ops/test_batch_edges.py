"""The edges of the task spec's coalesce_key, coalesce and limit_key and of a hello's type_options batch and
requires, as docs/protocol.md section 0 states them, over a raw TCP connection to a real server (``Peer``):
a refused enqueue is ``bad_request`` and the connection stays open; a refused hello is ``bad_message``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_spec_gaps import Peer, start

_TASKS = [
    ({"coalesce_key": "k" * 1000}, "enqueued"), ({"coalesce_key": "k" * 1001}, "bad_request"),
    ({"coalesce_key": ""}, "bad_request"), ({"coalesce_key": "k", "coalesce": "keep"}, "enqueued"),
    ({"coalesce_key": "k", "coalesce": "replace"}, "enqueued"), ({"coalesce_key": "k", "coalesce": "merge"}, "bad_request"),
    ({"coalesce": "keep"}, "bad_request"), ({"limit_key": "x" * 200}, "enqueued"),
    ({"limit_key": "x" * 201}, "bad_request"), ({"limit_key": ""}, "bad_request"),
]


@pytest.mark.trio
@pytest.mark.parametrize(("fields", "code"), _TASKS)
async def test_task_spec_fields_are_checked_at_their_edges(nursery: trio.Nursery, tmp_path: Path,
                                                           fields: dict[str, Any], code: str) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, _ = await Peer.connect(srv.port)
        got = await peer.call({"op": "enqueue", "rid": 1, "tasks": [{"type": "t", **fields}]})
        assert (got["code"] if got["op"] == "error" else got["op"]) == code, got
        assert await peer.still_open()
    await peer.stream.aclose()


_BATCHES = [
    ({"batch": {"max_size": 1, "max_wait": 0}}, "welcome"), ({"batch": {"max_size": 10_000, "max_wait": 3600}}, "welcome"),
    ({"batch": {"max_size": 10_001, "max_wait": 1}}, "bad_message"), ({"batch": {"max_size": 0}}, "bad_message"),
    ({"batch": {"max_size": 5, "max_wait": 3600.5}}, "bad_message"), ({"batch": 5}, "bad_message"),
    ({"requires": {"gpu": "1"}}, "welcome"), ({"requires": {"gpu": ""}}, "bad_message"),
]


@pytest.mark.trio
@pytest.mark.parametrize(("options", "code"), _BATCHES)
async def test_type_options_batch_and_requires_are_checked_at_their_edges(nursery: trio.Nursery, tmp_path: Path,
                                                                          options: dict[str, Any], code: str) -> None:
    srv = await start(nursery, tmp_path)
    with trio.fail_after(10):
        peer, got = await Peer.connect(srv.port, role="worker", types=["t"], type_options={"t": options})
        assert (got["code"] if got["op"] == "error" else got["op"]) == code, got
    await peer.stream.aclose()
