"""The Tasks screen (filter, search, act) and a task's detail with its timeline."""

from __future__ import annotations

import itertools
import json
import pprint
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Input, Label, Static

from ...protocol.errors import RunqError
from ..model import phases
from ..source import TASK_STATES
from ..widgets import (
    PHASE_STYLE,
    STATE_STYLE,
    fmt_duration,
    fmt_labels,
    fmt_time,
    render_marks,
    render_phases,
    sync_table,
)
from .base import DashboardScreen, LoadingScreen, data_table

__all__ = ["TaskDetailScreen", "TasksScreen"]

RELOAD_SECONDS = 1.0
PAGE = 200
COLUMNS = ("id", "state", "queue", "type", "attempt", "priority", "created", "worker", "error")
FINAL = frozenset({"succeeded", "dead", "cancelled"})


def _task_id(text: str) -> int | None:
    """The task id typed in the search field, or None when it cannot be one (``-``, beyond 64 bits)."""
    try:
        tid = int(text)
    except ValueError:
        return None
    return tid if 0 < tid < 2**63 else None


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:80] if lines else ""


class TasksScreen(LoadingScreen):
    """Tasks newest first, filtered by state (``s`` cycles), queue and type; searched by id."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "cycle_state", "State filter"),
        Binding("slash", "search", "Search/filter"),
        Binding("c", "cancel_task", "Cancel"),
        Binding("r", "retry_task", "Retry"),
        Binding("e", "enqueue", "Enqueue"),
        Binding("escape", "focus_table", "Table", show=False),
    ]
    DEFAULT_CSS = """
    TasksScreen #filters { height: 3; }
    TasksScreen #filters Label { height: 3; content-align: left middle; padding: 0 1; }
    TasksScreen #filters Input { width: 1fr; }
    TasksScreen #f-id { width: 16; }
    TasksScreen #filters Input { border: ascii $border-blurred; }
    TasksScreen #filters Input:focus { border: ascii $border; }
    TasksScreen DataTable { height: 1fr; }
    TasksScreen #count { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.state_filter: str | None = None
        self.tasks: list[dict[str, Any]] = []
        self._dirty = True

    def body(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Label("state: all", id="f-state")
            yield Input(placeholder="queue", id="f-queue")
            yield Input(placeholder="type", id="f-type")
            yield Input(placeholder="task id", id="f-id", type="integer")
        yield data_table("tasks", COLUMNS)
        yield Static("", id="count")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#tasks", DataTable).focus()

    # ------------------------------------------------------------------ loading
    def filters(self) -> dict[str, Any]:
        queue = self.query_one("#f-queue", Input).value.strip() or None
        type_ = self.query_one("#f-type", Input).value.strip() or None
        return {"state": self.state_filter, "queue": queue, "type": type_}

    def load_due(self, force: bool) -> bool:
        if force or self._dirty or self.load_age >= RELOAD_SECONDS:
            self._dirty = False
            return True
        return False

    async def fetch(self) -> None:
        ident = self.query_one("#f-id", Input).value.strip()
        if ident:
            tid = _task_id(ident)
            try:
                tasks = [] if tid is None else [await self.source.get(tid)]
            except RunqError as exc:
                if "not_found" not in str(exc):
                    raise
                tasks = []
        else:
            tasks, _ = await self.source.list_tasks(limit=PAGE, **self.filters())
        self.tasks = tasks

    def show(self) -> None:
        rows = []
        for t in self.tasks:
            rows.append((str(t["id"]), [
                t["id"], Text(t["state"], style=STATE_STYLE.get(t["state"], "")), t["queue"], t["type"],
                f"{t['attempt']}/{t['max_retries'] + 1}", t["priority"], fmt_time(t.get("created_at"), False),
                t.get("worker") or "-", Text(_first_line(t.get("error")), style="red"),
            ]))
        sync_table(self.query_one("#tasks", DataTable), rows)
        f = self.filters()
        shown = ", ".join(f"{k}={v}" for k, v in f.items() if v) or "no filter"
        more = " (newest first; narrow the filter for older tasks)" if len(self.tasks) >= PAGE else ""
        err = f"  [error: {self.error}]" if self.error else ""
        self.query_one("#count", Static).update(f"{len(self.tasks)} tasks, {shown}{more}{err}")

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
    def selected_task(self) -> dict[str, Any] | None:
        table = self.query_one("#tasks", DataTable)
        if not table.row_count:
            return None
        key = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        return next((t for t in self.tasks if str(t["id"]) == key), None)

    def action_cycle_state(self) -> None:
        order: list[str | None] = [None, *TASK_STATES]
        self.state_filter = order[(order.index(self.state_filter) + 1) % len(order)]
        self.query_one("#f-state", Label).update(f"state: {self.state_filter or 'all'}")
        self.reload()

    def action_search(self) -> None:
        self.query_one("#f-id", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one("#tasks", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(TaskDetailScreen(int(str(event.row_key.value))))

    def action_cancel_task(self) -> None:
        t = self.selected_task()
        if t is not None:
            cancel_with_confirm(self, int(t["id"]), t["type"])

    def action_retry_task(self) -> None:
        t = self.selected_task()
        if t is not None:
            tid = int(t["id"])
            self.run_action_call(lambda: self.source.retry(tid), lambda r: f"task {tid} retried: {r['state']}")

    def action_enqueue(self) -> None:
        f = self.filters()
        self.enqueue_from_form(f["queue"] or "default", f["type"] or "")


def cancel_with_confirm(screen: DashboardScreen, tid: int, type_: str) -> None:
    screen.confirm_then(f"Cancel task {tid} ({type_})? A running attempt is stopped on its worker.",
                        lambda: screen.source.cancel(tid), lambda r: f"task {tid} {r['state']}")


class TaskDetailScreen(LoadingScreen):
    """One task: payload, result or error, attempts, progress, and its timeline on a time axis."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("c", "cancel_task", "Cancel"),
        Binding("r", "retry_task", "Retry"),
    ]
    DEFAULT_CSS = """
    TaskDetailScreen VerticalScroll { height: 1fr; }
    TaskDetailScreen #summary { height: auto; padding: 0 1; }
    TaskDetailScreen #strip { height: 4; padding: 0 1; text-wrap: nowrap; text-overflow: clip; }
    TaskDetailScreen #events { height: auto; max-height: 20; }
    TaskDetailScreen .section { height: auto; padding: 0 1; margin-top: 1; }
    """

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id
        self.current: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        #: what holds it back while it is ready or scheduled (the ``why`` op), None when nothing does
        self.why: dict[str, Any] | None = None
        self._seen = -1

    def body(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("", id="summary")
            yield Static("", id="strip")
            table: DataTable[Any] = DataTable(id="events", cursor_type="row")
            for name in ("time", "+since prev", "phase before", "event", "state", "attempt", "worker", "detail"):
                table.add_column(name, key=name)
            yield table
            yield Static("", id="payload", classes="section")
            yield Static("", id="outcome", classes="section")

    def on_mount(self) -> None:
        self.state.watch(self.task_id)
        super().on_mount()

    def on_unmount(self) -> None:
        self.state.unwatch(self.task_id)

    def load_due(self, force: bool) -> bool:
        touched = self.state.watched.get(self.task_id, 0)
        final = self.current is not None and self.current.get("state") in FINAL
        if force or touched != self._seen or (not final and self.load_age >= RELOAD_SECONDS):
            self._seen = touched
            return True
        return False

    async def fetch(self) -> None:
        # read all three, then set them together: a reader between two awaits never sees the new state with the
        # old events or the old why line
        current = await self.source.get(self.task_id)
        events = await self.source.events(self.task_id)
        why = None
        if current.get("state") in ("ready", "scheduled"):
            try:
                why = await self.source.why(self.task_id)
            except RunqError:  # (it just finished, or the op is unknown to an older server: nothing to say)
                why = None
        self.current, self.events, self.why = current, events, why

    def show(self) -> None:
        t = self.current
        summary = self.query_one("#summary", Static)
        if t is None:
            summary.update(f"task {self.task_id}: {self.error or 'loading'}")
            return
        now = self.source.now()
        lines = Text()
        lines.append(f"task {t['id']}  ", style="bold")
        lines.append(t["state"], style=f"bold {STATE_STYLE.get(t['state'], '')}")
        lines.append(f"   {t['type']} on queue {t['queue']}, priority {t['priority']}\n")
        lines.append(f"attempts {t['attempt']} of {t['max_retries'] + 1}, timeout {t['timeout']:g}s"
                     f"{', key ' + t['key'] if t.get('key') else ''}"
                     f"{', worker ' + t['worker'] if t.get('worker') else ''}\n")
        lines.append(f"created {fmt_time(t.get('created_at'))}  started {fmt_time(t.get('started_at'))}  "
                     f"finished {fmt_time(t.get('finished_at'))}")
        if t.get("run_at") and t["state"] == "scheduled":
            lines.append(f"  runs at {fmt_time(t['run_at'])}")
        routing = []
        if t.get("requires"):
            try:
                routing.append("requires " + fmt_labels(json.loads(t["requires"])))
            except (TypeError, ValueError):  # (not the JSON text a server writes: shown as it is)
                routing.append(f"requires {t['requires']}")
        if t.get("coalesce_key"):
            routing.append(f"coalesce key {t['coalesce_key']}")
        if t.get("limit_key"):
            routing.append(f"limit key {t['limit_key']}")
        if routing:
            lines.append("\n" + ", ".join(routing))
        if self.why is not None and t["state"] in ("ready", "scheduled"):
            lines.append(f"\nwaiting: {self.why['reason']}", style="bold yellow")
            lines.append(f" ({self.why['detail']})", style="yellow")
        if t.get("retry_policy"):  # (its own, given at enqueue: docs/tasks.md)
            lines.append(f"\nretry policy {t['retry_policy']}", style="bright_black")
        if t.get("progress") is not None:
            lines.append(f"\nprogress {t['progress']!r}", style="cyan")
        if self.error:
            lines.append(f"\n[{self.error}]", style="red")
        summary.update(lines)

        ph = phases(self.events, now)
        strip = Text()
        if ph:
            total = ph[-1].end - ph[0].start
            width = max(20, self.size.width - 4)
            strip.append(render_phases(ph, width))
            strip.append("\n")
            strip.append(render_marks(self.events, ph[0].start, ph[-1].end, width))
            strip.append(f"\n{fmt_duration(total)} from {self.events[0]['kind']} to "
                         f"{'now' if t['state'] not in FINAL else self.events[-1]['kind']}: ", style="bright_black")
            spent: dict[str, float] = {}
            for p in ph:
                spent[p.name] = spent.get(p.name, 0.0) + (p.end - p.start)
            for name, secs in spent.items():
                strip.append(f"{name} {fmt_duration(secs)}  ", style=PHASE_STYLE.get(name, ""))
        self.query_one("#strip", Static).update(strip)

        rows = []
        prev: dict[str, Any] | None = None
        for i, ev in enumerate(self.events):
            gap = "" if prev is None else "+" + fmt_duration(float(ev["at"]) - float(prev["at"]))
            before = next((p.name for p in ph if p.index == i - 1), "")
            rows.append((str(i), [
                fmt_time(ev["at"]), gap, Text(before, style=PHASE_STYLE.get(before, "")), ev["kind"],
                Text(ev["state"], style=STATE_STYLE.get(ev["state"], "")), ev["attempt"], ev.get("worker") or "",
                ev.get("detail") or "",
            ]))
            prev = ev
        sync_table(self.query_one("#events", DataTable), rows)

        self.query_one("#payload", Static).update(Text("payload\n", style="bold") + Text(_pretty(t.get("payload"))))
        outcome = Text()
        if t["state"] == "succeeded":
            outcome.append("result\n", style="bold green")
            outcome.append(_pretty(t.get("result")))
        elif t.get("error"):
            outcome.append("error (last failure)\n", style="bold red")
            outcome.append(str(t["error"]).rstrip(), style="red")
        self.query_one("#outcome", Static).update(outcome)

    def after_action(self) -> None:
        self._seen = -1

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cancel_task(self) -> None:
        cancel_with_confirm(self, self.task_id, self.current["type"] if self.current else "?")

    def action_retry_task(self) -> None:
        tid = self.task_id
        self.run_action_call(lambda: self.source.retry(tid), lambda r: f"task {tid} retried: {r['state']}")


PRETTY_CHARS = 4000  # payloads and results are shown up to this many characters
_CLIP_ITEMS = 200


def _pretty(value: Any) -> str:
    """``value`` pretty-printed, cut at ``PRETTY_CHARS``; a big value is clipped first, so the cost does not
    grow with its size (this runs on the UI loop at every reload of an open task)."""
    return pprint.pformat(_clip(value, 8), width=100, compact=True)[:PRETTY_CHARS]


def _clip(value: Any, depth: int) -> Any:
    """A copy of ``value`` with at most ``_CLIP_ITEMS`` items per container and ``PRETTY_CHARS`` per string."""
    if isinstance(value, str | bytes):
        return value[:PRETTY_CHARS]
    if depth <= 0 and isinstance(value, dict | list | tuple):
        return "..."
    if isinstance(value, dict):
        items = list(itertools.islice(value.items(), _CLIP_ITEMS))
        out = {k: _clip(v, depth - 1) for k, v in items}
        if len(value) > _CLIP_ITEMS:
            out["..."] = f"{len(value) - _CLIP_ITEMS} more"
        return out
    if isinstance(value, list | tuple):
        clipped = [_clip(v, depth - 1) for v in value[:_CLIP_ITEMS]]
        if len(value) > _CLIP_ITEMS:
            clipped.append(f"... {len(value) - _CLIP_ITEMS} more")
        return tuple(clipped) if isinstance(value, tuple) else clipped
    return value
