"""The interface between the dashboard and where its data comes from.

Theory of operation
-------------------
A ``Source`` owns one ``DashboardState`` and keeps it current in the
background (``start``); screens read ``state`` on their timer and call the
async methods for what is too big to keep in memory (a page of tasks, one
task, its events) and for actions. Two implementations: ``LiveSource`` (a
running server, through the public client SDK) and ``OfflineSource`` (a
database file, read-only). Tests may add their own with fixed data.
"""

from __future__ import annotations

import abc
from typing import Any

from ..protocol.errors import RunqError
from .model import DashboardState

__all__ = ["TASK_STATES", "NotConnected", "ReadOnly", "Source", "TaskPage"]

TaskPage = tuple[list[dict[str, Any]], "int | None"]
TASK_STATES = ("scheduled", "ready", "running", "succeeded", "dead", "cancelled")


class ReadOnly(RunqError):
    """Raised by an action on a source that cannot change anything (offline mode)."""


class NotConnected(RunqError):
    """Raised by a request while the live source has no connection (it is reconnecting)."""


class Source(abc.ABC):
    """Where the dashboard's data comes from.

    Attributes:
        state: the coalesced state the screens draw.
        description: a short text for the title bar (server address or file).
    """

    state: DashboardState
    description: str = ""

    @property
    def offline(self) -> bool:
        return self.state.offline

    def may(self, op: str) -> bool:
        """Whether the identity the source connected as may ask for ``op`` (a protocol op name; docs/security.md):
        the screens hide the actions it may not take. True when the server does not say (an older one)."""
        return True

    async def start(self) -> None:
        """Start keeping ``state`` current (returns at once; the work goes on in the background)."""

    async def close(self) -> None:
        """Stop the background work and release connections."""

    @abc.abstractmethod
    def now(self) -> float:
        """The current time on the source's clock (server time; the file's last event offline)."""

    # ------------------------------------------------------------------ reads
    @abc.abstractmethod
    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> TaskPage:
        """A page of tasks, newest first, and the cursor of the next page."""

    @abc.abstractmethod
    async def get(self, task_id: int) -> dict[str, Any]:
        """One task (payload, result and progress decoded).

        Raises:
            NotFound: no such task.
        """

    @abc.abstractmethod
    async def events(self, task_id: int) -> list[dict[str, Any]]:
        """The task's timeline, oldest first."""

    async def why(self, task_id: int) -> dict[str, Any] | None:
        """Why a ready task does not run yet (the ``why`` op: a rate limit, a cap, an open breaker, ...), or
        None: nothing holds it, or the source cannot tell (a database file says nothing about live limits)."""
        return None

    async def dead_list(self, *, queue: str | None = None, type: str | None = None, error: str | None = None,
                        since: float | None = None, until: float | None = None, limit: int = 100) -> TaskPage:
        """Dead tasks, newest first, by queue, type, error text (a substring, without case) and the time they died
        (docs/dead-letters.md). This default reads one page of ``list_tasks`` (state dead) and filters it here
        (a database file); a live source asks the server (``dead_list``)."""
        tasks, cursor = await self.list_tasks(state="dead", queue=queue, type=type, limit=limit)
        low = None if error is None else error.lower()
        kept = [t for t in tasks
                if (low is None or low in (t.get("error") or "").lower())
                and (since is None or (t.get("finished_at") or 0.0) >= since)
                and (until is None or (t.get("finished_at") or 0.0) < until)]
        return kept, cursor

    # ------------------------------------------------------------------ actions
    async def dead_retry(self, **dead_filter: Any) -> dict[str, Any]:
        """Retry the dead tasks a filter selects (``Client.dead_retry``)."""
        raise ReadOnly("this view is read-only")

    async def dead_delete(self, **dead_filter: Any) -> dict[str, Any]:
        """Delete the dead tasks a filter selects (``Client.dead_delete``)."""
        raise ReadOnly("this view is read-only")

    async def cancel(self, task_id: int) -> dict[str, Any]:
        raise ReadOnly("this view is read-only")

    async def retry(self, task_id: int) -> dict[str, Any]:
        raise ReadOnly("this view is read-only")

    async def pause(self, queue: str) -> None:
        raise ReadOnly("this view is read-only")

    async def resume(self, queue: str) -> None:
        raise ReadOnly("this view is read-only")

    async def drain(self, worker_id: str) -> dict[str, Any]:
        raise ReadOnly("this view is read-only")

    async def enqueue(self, type: str, payload: Any = None, *, queue: str | None = None,
                      priority: int | None = None, delay: float | None = None) -> int:
        raise ReadOnly("this view is read-only")

    # ------------------------------------------------------------------ schedules (periodic tasks)
    async def pause_schedule(self, name: str) -> dict[str, Any]:
        raise ReadOnly("this view is read-only")

    async def resume_schedule(self, name: str) -> dict[str, Any]:
        raise ReadOnly("this view is read-only")

    async def run_schedule_now(self, name: str) -> int:
        raise ReadOnly("this view is read-only")

    # ------------------------------------------------------------------ the audit log (docs/security.md)
    async def server_events(self, limit: int = 200) -> list[dict[str, Any]]:
        """The latest ``limit`` events of no task (the audit log with its actors, and the server's own),
        oldest first."""
        return []
