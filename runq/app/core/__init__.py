"""The queue as a pure state machine: no I/O, no clock reads (see queue.py)."""

from __future__ import annotations

from .model import EVENT_COLUMNS, EVENT_ROW_COLUMNS, TASK_COLUMNS, CoreConfig, ReadyQueue, Task, WorkerInfo, WorkerState
from .queue import Core, CoreStats, Effects, TaskMissing
from .requests import REQUEST_COLUMNS, Requests
from .states import FINAL_STATES, TRANSITIONS, IllegalTransition, State, Transition, next_state

__all__ = [
    "EVENT_COLUMNS",
    "EVENT_ROW_COLUMNS",
    "FINAL_STATES",
    "REQUEST_COLUMNS",
    "TASK_COLUMNS",
    "TRANSITIONS",
    "Core",
    "CoreConfig",
    "CoreStats",
    "Effects",
    "IllegalTransition",
    "ReadyQueue",
    "Requests",
    "State",
    "Task",
    "TaskMissing",
    "Transition",
    "WorkerInfo",
    "WorkerState",
    "next_state",
]
