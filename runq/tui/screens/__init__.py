"""The dashboard's screens, one per concern."""

from __future__ import annotations

from .audit import AuditScreen
from .base import DashboardScreen
from .dead import DeadScreen
from .queues import QueuesScreen
from .schedules import SchedulesScreen
from .tasks import TaskDetailScreen, TasksScreen
from .timeline import TimelineScreen
from .workers import WorkersScreen

__all__ = ["AuditScreen", "DashboardScreen", "DeadScreen", "QueuesScreen", "SchedulesScreen", "TaskDetailScreen", "TasksScreen", "TimelineScreen", "WorkersScreen"]
