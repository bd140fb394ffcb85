"""The dashboard's screens, one per concern."""

from __future__ import annotations

from .base import DashboardScreen
from .dead import DeadScreen
from .queues import QueuesScreen
from .schedules import SchedulesScreen
from .tasks import TaskDetailScreen, TasksScreen
from .timeline import TimelineScreen
from .workers import WorkersScreen

__all__ = ["DashboardScreen", "DeadScreen", "QueuesScreen", "SchedulesScreen", "TaskDetailScreen", "TasksScreen", "TimelineScreen", "WorkersScreen"]
