"""The offline dashboard reads a database file with the store's own queries (runq/app/store/queries.py): the
same task pages and the same timelines, the unstored ``enqueued`` event rebuilt, as the server gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runq.app.core import EventRecord, State, Task
from runq.app.store import Batch, SQLiteStore
from runq.protocol.values import decode_task
from runq.tui import OfflineSource

pytestmark = [pytest.mark.tui, pytest.mark.anyio]

T0 = 1_000.0


def task(tid: int, state: State, queue: str = "default", run_at: float | None = None) -> Task:
    return Task(tid, queue, "t", b"\xc0", 0, state, run_at, 60.0, 3, 0, None, None, None, None, T0 + tid)


async def test_offline_pages_and_timelines_are_the_stores(tmp_path: Path) -> None:
    db = str(tmp_path / "runq.db")
    store = SQLiteStore(db)
    try:
        ready, delayed, done, other = (task(1, State.READY), task(2, State.SCHEDULED, run_at=T0 + 50),
                                       task(3, State.SUCCEEDED), task(4, State.READY, queue="other"))
        store.write_now(Batch(new_rows=[ready.new_row(), delayed.new_row(), other.new_row()], rows=[done.row()],
                              events=[EventRecord(2, T0 + 2, "scheduled", "scheduled", None, 0, None, 1),
                                      EventRecord(3, T0 + 4, "started", "running", "w1", 1, None, 2),
                                      EventRecord(3, T0 + 5, "succeeded", "succeeded", "w1", 1, None, 3)]))
        server_side: dict[str, Any] = {
            "pages": [[Task.from_row(r).as_dict()["id"] for r in store.list_tasks(limit=2)],
                      [r.id for r in store.list_tasks(queue="other")], [r.id for r in store.list_tasks(state="ready")]],
            "timelines": {tid: [e.as_dict() for e in store.events(tid)] for tid in (1, 2, 3, 99)},
            "task": decode_task(Task.from_row(store.get_task(3)).as_dict()),  # type: ignore[arg-type]
        }
    finally:
        store.close()
    src = OfflineSource(db)
    await src.start()
    try:
        first, cursor = await src.list_tasks(limit=2)
        assert [t["id"] for t in first] == [4, 3] and cursor == 3
        second, _ = await src.list_tasks(limit=2, cursor=cursor)
        assert [t["id"] for t in second] == [2, 1]
        other_q, _ = await src.list_tasks(queue="other")
        ready_q, _ = await src.list_tasks(state="ready")
        assert [[t["id"] for t in first], [t["id"] for t in other_q], [t["id"] for t in ready_q]] == \
            server_side["pages"] == [[4, 3], [4], [4, 1]]
        timelines = {tid: await src.events(tid) for tid in (1, 2, 3, 99)}
        assert timelines == server_side["timelines"]
        assert [e["kind"] for e in timelines[1]] == ["enqueued"] and timelines[1][0]["at"] == T0 + 1
        assert [e["kind"] for e in timelines[2]] == ["scheduled"]  # (stored: nothing rebuilt)
        assert [e["kind"] for e in timelines[3]] == ["enqueued", "started", "succeeded"]
        assert timelines[99] == []
        assert await src.get(3) == server_side["task"]
    finally:
        await src.close()
