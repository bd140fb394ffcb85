"""The Dead letters screen: the dead tasks, filtered by queue, type, error text and how long ago they died; bulk
retry and delete of what the filter selects (docs/dead-letters.md)."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Static

from ..widgets import fmt_duration, sync_table
from .base import LoadingScreen, data_table

__all__ = ["BULK_LIMIT", "DeadScreen", "parse_ago"]

RELOAD_SECONDS = 2.0
PAGE = 200
#: a bulk action from the dashboard retries or deletes at most this many tasks (the server's bound per call)
BULK_LIMIT = 1000
COLUMNS = ("id", "queue", "type", "attempt", "dead", "error")
_WRITES = frozenset({"retry_dead", "delete_dead"})
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ago(text: str) -> float | None:
    """``30m``, ``2h``, ``7d``, ``90s`` (or a bare number of seconds) as seconds; None when it is none of those."""
    t = text.strip().lower()
    if not t:
        return None
    try:
        return float(t[:-1]) * _UNIT[t[-1]] if t[-1] in _UNIT else float(t)
    except ValueError:
        return None


def _last_line(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:100] if lines else ""


class DeadScreen(LoadingScreen):
    """Dead tasks newest first, filtered by queue, type, error text and "dead within" (``30m``, ``2h``); ``R``
    retries and ``D`` deletes every dead task the filter selects (up to ``BULK_LIMIT``, asking first)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "Filter"),
        Binding("R", "retry_dead", "Retry all shown"),
        Binding("D", "delete_dead", "Delete all shown"),
        Binding("escape", "focus_table", "Table", show=False),
    ]
    DEFAULT_CSS = """
    DeadScreen #dead-filters { height: 3; }
    DeadScreen #dead-filters Input { width: 1fr; border: ascii $border-blurred; }
    DeadScreen #dead-filters Input:focus { border: ascii $border; }
    DeadScreen #d-since { width: 20; }
    DeadScreen DataTable { height: 1fr; }
    DeadScreen #dead-count { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[dict[str, Any]] = []
        self._dirty = True

    def body(self) -> ComposeResult:
        with Horizontal(id="dead-filters"):
            yield Input(placeholder="queue", id="d-queue")
            yield Input(placeholder="type", id="d-type")
            yield Input(placeholder="error contains", id="d-error")
            yield Input(placeholder="dead within (2h)", id="d-since")
        yield data_table("dead", COLUMNS)
        yield Static("", id="dead-count")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#dead", DataTable).focus()

    # ------------------------------------------------------------------ loading
    def filters(self) -> dict[str, Any]:
        """The filter as typed: queue, type, error text, and since (a unix time on the source's clock)."""
        def text(wid: str) -> str | None:
            return self.query_one(wid, Input).value.strip() or None

        ago = parse_ago(self.query_one("#d-since", Input).value)
        return {"queue": text("#d-queue"), "type": text("#d-type"), "error": text("#d-error"),
                "since": None if ago is None else self.source.now() - ago}

    def load_due(self, force: bool) -> bool:
        if force or self._dirty or self.load_age >= RELOAD_SECONDS:
            self._dirty = False
            return True
        return False

    async def fetch(self) -> None:
        self.tasks, _ = await self.source.dead_list(limit=PAGE, **self.filters())

    def show(self) -> None:
        now = self.source.now()
        rows = []
        for t in self.tasks:
            at = t.get("finished_at")
            rows.append((str(t["id"]), [
                t["id"], t["queue"], t["type"], t["attempt"],
                "-" if at is None else fmt_duration(max(0.0, now - float(at))) + " ago",
                Text(_last_line(t.get("error")), style="red"),
            ]))
        sync_table(self.query_one("#dead", DataTable), rows)
        f = self.filters()
        shown = ", ".join(f"{k}={v}" for k, v in f.items() if v is not None and k != "since")
        since = self.query_one("#d-since", Input).value.strip()
        if since and f["since"] is not None:
            shown = ", ".join(x for x in (shown, f"dead within {since}") if x)
        more = " (newest first; narrow the filter for older ones)" if len(self.tasks) >= PAGE else ""
        err = f"  [error: {self.error}]" if self.error else ""
        hint = "" if self.source.offline else "  R: retry all that match, D: delete them."
        self.query_one("#dead-count", Static).update(
            f"{len(self.tasks)} dead task(s), {shown or 'no filter'}{more}.{hint}{err}")

    def reload(self) -> None:
        self._dirty = True

    def after_action(self) -> None:
        self.reload()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.reload()
        self.action_focus_table()

    # ------------------------------------------------------------------ actions
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _WRITES and self.source.offline:
            return False
        return super().check_action(action, parameters)

    def action_filter(self) -> None:
        self.query_one("#d-queue", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#dead", DataTable).focus()

    def _bulk(self, verb: str) -> None:
        f = self.filters()
        what = ", ".join(f"{k}={v}" for k, v in f.items() if v is not None and k != "since") or "every queue and type"
        if f["since"] is not None:
            what += f", dead within {self.query_one('#d-since', Input).value.strip()}"
        call = self.source.dead_retry if verb == "retry" else self.source.dead_delete
        past = "retried" if verb == "retry" else "deleted"
        question = (f"{verb.capitalize()} the dead tasks that match ({what}), at most {BULK_LIMIT}, the oldest first?"
                    + (" Each becomes cancelled; its timeline is kept." if verb == "delete" else ""))
        self.confirm_then(question, lambda: call(limit=BULK_LIMIT, **f),
                          lambda out: f"{len(out['ids'])} dead task(s) {past}"
                          + (" (more match: again)" if out.get("more") else ""))

    def action_retry_dead(self) -> None:
        self._bulk("retry")

    def action_delete_dead(self) -> None:
        self._bulk("delete")
