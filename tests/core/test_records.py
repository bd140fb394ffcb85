"""The records that cross from the core to the store (runq/app/core/records.py)."""

from __future__ import annotations

import typing

from runq.app.core import State, Task
from runq.app.core.records import (
    EVENT_COLUMNS,
    NEW_COLUMNS,
    TASK_COLUMNS,
    EventRecord,
    NewTaskRecord,
    NewTaskRow,
    TaskRecord,
    TaskRow,
    make_task,
)


def test_a_task_row_has_the_task_records_fields_in_order() -> None:
    assert typing.get_args(TaskRow) == tuple(typing.get_type_hints(TaskRecord).values())
    assert TASK_COLUMNS == ("id", "queue", "type", "payload", "priority", "state", "run_at", "timeout", "max_retries",
                            "attempt", "key", "result", "error", "progress", "created_at", "started_at", "finished_at",
                            "worker", "requires", "retry_policy", "coalesce_key", "limit_key", "owner")
    assert typing.get_args(NewTaskRow) == tuple(typing.get_type_hints(NewTaskRecord).values())
    assert set(NEW_COLUMNS) < set(TASK_COLUMNS) and list(NEW_COLUMNS) == [c for c in TASK_COLUMNS if c in NEW_COLUMNS]


def test_a_task_and_its_records_name_the_same_values() -> None:
    t = Task(7, "q", "t", b"p", 2, State.RUNNING, None, 30.0, 1, 1, "k", None, None, b"50", 1.0, 2.0, None, "w")
    row = t.row()
    assert type(row) is TaskRecord and row.state == "running" and row.worker == "w" and row.progress == b"50"
    assert row._asdict() == {**t.as_dict(), "state": "running"}
    new = t.new_row()
    assert type(new) is tuple and NewTaskRecord(*new)._asdict() == {c: getattr(row, c) for c in NEW_COLUMNS}
    back = Task.from_row(make_task(tuple(row)))
    assert back.as_dict() == t.as_dict() and TaskRecord(*tuple(row)) == row


def test_an_event_record_goes_on_the_wire_without_its_id() -> None:
    e = EventRecord(3, 1.5, "started", "running", "w1", 1, None, 99)
    assert e.as_dict() == {"task_id": 3, "at": 1.5, "kind": "started", "state": "running", "worker": "w1",
                           "attempt": 1, "detail": None}
    assert tuple(e.as_dict()) == EVENT_COLUMNS
