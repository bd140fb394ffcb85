"""The queue as a pure state machine: no I/O, no clock reads (see queue.py)."""

from __future__ import annotations

from .model import EVENT_COLUMNS, TASK_COLUMNS, CoreConfig, ReadyQueue, Task, WorkerInfo
from .queue import Core, CoreStats, Effects, TaskMissing
from .states import FINAL_STATES, TRANSITIONS, IllegalTransition, State, Transition, next_state

__all__ = [
    "Core", "CoreConfig", "CoreStats", "Effects", "TaskMissing", "Task", "WorkerInfo", "ReadyQueue",
    "State", "Transition", "TRANSITIONS", "FINAL_STATES", "IllegalTransition", "next_state",
    "TASK_COLUMNS", "EVENT_COLUMNS",
]
