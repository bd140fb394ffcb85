"""The Schedules screen: the periodic tasks, when each fires, its next fire time (from now), its last one."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from ..widgets import fmt_duration, sync_table
from .base import DashboardScreen, data_table

__all__ = ["SchedulesScreen", "when"]

COLUMNS = ("schedule", "type", "when", "next fire", "in", "last fire", "missed", "paused")
#: this screen's actions that change the server (not offered on a read-only source)
_WRITES = frozenset({"toggle_schedule", "run_schedule"})


def when(s: dict[str, Any]) -> str:
    """``0 9 * * MON-FRI Europe/Berlin`` or ``every 1m00s``."""
    if s.get("cron") is not None:
        return f"{s['cron']} {s.get('tz') or 'UTC'}"
    return f"every {fmt_duration(float(s['every']))}" if s.get("every") is not None else "?"


def _stamp(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


class SchedulesScreen(DashboardScreen):
    """Schedules by name with their next fire time; ``p`` pauses or resumes one, ``r`` runs it now."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_schedule", "Pause/resume"),
        Binding("r", "run_schedule", "Run now"),
    ]
    always_draw = True  # "in" counts down with the clock
    DEFAULT_CSS = """
    SchedulesScreen DataTable { height: 1fr; }
    SchedulesScreen #summary { height: auto; padding: 0 1; color: $text-muted; }
    """

    def on_mount(self) -> None:
        self.state.schedules_wanted = True
        super().on_mount()

    def on_screen_resume(self) -> None:
        self.state.schedules_wanted = True
        super().on_screen_resume()

    def on_screen_suspend(self) -> None:
        self.state.schedules_wanted = False

    def body(self) -> ComposeResult:
        yield data_table("schedules", COLUMNS)
        yield Static("", id="summary")

    def draw(self) -> None:
        st = self.state
        now = self.source.now()
        rows = []
        for s in sorted(st.schedules, key=lambda s: str(s.get("name"))):
            nxt = s.get("next_fire")
            rows.append((str(s["name"]), [
                str(s["name"]), str(s.get("type")), when(s),
                _stamp(nxt), "-" if nxt is None else fmt_duration(max(0.0, float(nxt) - now)),
                _stamp(s.get("last_fire")), str(s.get("missed")),
                Text("paused", style="bold yellow") if s.get("paused") else Text("-", style="bright_black"),
            ]))
        sync_table(self.query_one("#schedules", DataTable), rows)
        if st.schedules_error:
            text = st.schedules_error
        elif not rows:
            text = "No schedules: runq schedules add, or schedule= on a task (docs/schedules.md)."
        else:
            text = f"{len(rows)} schedule(s); times are local." + (
                " Read-only (the file's stored schedules)." if st.offline else " p: pause/resume, r: run now.")
        self.query_one("#summary", Static).update(text)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in _WRITES and self.source.offline:
            return False
        return super().check_action(action, parameters)

    def selected_schedule(self) -> dict[str, Any] | None:
        table = self.query_one("#schedules", DataTable)
        if not table.row_count:
            return None
        name = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        return next((s for s in self.state.schedules if s.get("name") == name), None)

    def action_toggle_schedule(self) -> None:
        s = self.selected_schedule()
        if s is None:
            return
        name = str(s["name"])
        if s.get("paused"):
            self.run_action_call(lambda: self.source.resume_schedule(name), f"schedule {name} resumed")
        else:
            self.confirm_then(f"Pause schedule '{name}'? It enqueues nothing until it is resumed.",
                              lambda: self.source.pause_schedule(name), f"schedule {name} paused")

    def action_run_schedule(self) -> None:
        s = self.selected_schedule()
        if s is None:
            return
        name = str(s["name"])
        self.run_action_call(lambda: self.source.run_schedule_now(name),
                             lambda tid: f"schedule {name} ran: task {tid} enqueued")
