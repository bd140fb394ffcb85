"""The Audit screen: the audit log (docs/security.md), latest last: who cancelled, retried, paused, drained,
changed a limit, a breaker or a schedule, changed a user or a token, and the failed logins."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from ...protocol.errors import RunqError
from ..widgets import sync_table
from .base import LoadingScreen, data_table

__all__ = ["AuditScreen"]

COLUMNS = ("id", "time", "actor", "kind", "scope", "detail")
#: seconds between two reads of the log while the screen is in view
RELOAD = 2.0


class AuditScreen(LoadingScreen):
    """The latest events of the audit log (the events of no task with an actor; the server's own changes, a
    breaker opening by itself, as ``(server)``). Read-only; admins and viewers may read it."""

    DEFAULT_CSS = """
    AuditScreen DataTable { height: 1fr; }
    AuditScreen #summary { height: auto; padding: 0 1; color: $text-muted; }
    """
    LIMIT: ClassVar[int] = 200

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def body(self) -> ComposeResult:
        yield data_table("audit", COLUMNS)
        yield Static("", id="summary")

    def load_due(self, force: bool) -> bool:
        return force or self.load_age >= RELOAD

    async def fetch(self) -> None:
        if not self.source.may("server_events"):
            self.events = []
            raise RunqError("the audit log is for admins and viewers (docs/security.md)")
        self.events = await self.source.server_events(self.LIMIT)

    def show(self) -> None:
        rows = [(str(e["id"]), [str(e["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(e["at"]))),
                                e.get("actor") or "(server)", str(e["kind"]), str(e["scope"]),
                                str(e.get("detail") or "")])
                for e in self.events]
        sync_table(self.query_one("#audit", DataTable), rows)
        text = self.error or f"{len(rows)} event(s), latest last."
        self.query_one("#summary", Static).update(text)
