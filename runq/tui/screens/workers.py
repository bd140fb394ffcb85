"""The Workers screen: who is connected, what each runs, how late its heartbeat is."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from ..widgets import fmt_age, fmt_labels, sync_table
from .base import DashboardScreen, data_table

__all__ = ["WorkersScreen"]

COLUMNS = ("id", "name", "host", "pid", "queues", "concurrency", "in flight", "heartbeat", "state", "completed",
           "failed", "labels")
_STATE_STYLE = {"active": "green", "draining": "yellow", "lost": "bold red", "left": "bright_black",
                "seen": "bright_black"}
_LEVEL_STYLE = ("", "bold yellow", "bold white on red")


class WorkersScreen(DashboardScreen):
    """Workers with their heartbeat age (yellow when late, red when about to lose their leases)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("d", "drain", "Drain")]
    always_draw = True  # heartbeat ages grow with the clock
    DEFAULT_CSS = """
    WorkersScreen DataTable { height: 1fr; }
    WorkersScreen #summary { height: auto; padding: 0 1; color: $text-muted; }
    """

    def body(self) -> ComposeResult:
        yield data_table("workers", COLUMNS)
        yield Static("", id="summary")

    def draw(self) -> None:
        st = self.state
        now = self.source.now()
        rows = []
        for wid, w in st.workers.items():
            age = None if w.last_heartbeat is None else now - w.last_heartbeat
            level = st.heartbeat_level(w, now)
            hb = Text(fmt_age(age) if w.state not in ("lost", "left") else f"gone {fmt_age(now - (w.gone_at or now))}",
                      style=_LEVEL_STYLE[level] if w.state != "seen" else "")
            rows.append((wid, [
                wid, w.name or "-", w.host or "-", "-" if w.pid is None else str(w.pid), ",".join(w.queues) or "-",
                w.concurrency, w.in_flight, hb, Text(w.state, style=_STATE_STYLE.get(w.state, "")),
                w.completed, Text(str(w.failed), style="red" if w.failed else ""), fmt_labels(w.labels),
            ]))
        sync_table(self.query_one("#workers", DataTable), rows)
        if st.offline:
            text = "Offline: workers seen in the event log; 'heartbeat' is the age of their last event."
        else:
            text = (f"{sum(1 for w in st.workers.values() if w.state in ('active', 'draining'))} connected. "
                    f"Heartbeat every {st.heartbeat:.1f}s: late (yellow) after {2 * st.heartbeat:.1f}s, "
                    f"red after {0.8 * st.lease_timeout:.1f}s (leases expire at {st.lease_timeout:.0f}s).")
        self.query_one("#summary", Static).update(text)

    def selected_worker(self) -> str | None:
        table = self.query_one("#workers", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_drain(self) -> None:
        wid = self.selected_worker()
        if wid is None:
            return
        self.confirm_then(f"Drain worker {wid}? It finishes its running tasks, hands back the rest and leaves.",
                          lambda: self.source.drain(wid), f"worker {wid} draining")
