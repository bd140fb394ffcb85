"""The Queues screen: counts per state, enqueue and completion rates with sparklines, paused flag, and the limits
that apply to each queue (its rate limit and concurrency cap, per key too: docs/limits.md)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from ..widgets import fmt_limit, fmt_rate, sparkline, sync_table
from .base import DashboardScreen, data_table

__all__ = ["QueuesScreen"]

SPARK_SECONDS = 120  # the sparklines cover the last two minutes
SPARK_WIDTH = 24  # ... in 5-second columns
RATE_SECONDS = 10  # the rate figures average the last ten seconds

COLUMNS = ("queue", "paused", "ready", "scheduled", "running", "succeeded", "failed", "dead", "workers",
           "enq/s", "enqueued (2m)", "done/s", "completed (2m)", "limits")


class QueuesScreen(DashboardScreen):
    """Per queue: ready / scheduled / running / succeeded / failed / dead, rates, sparklines, paused."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("e", "enqueue", "Enqueue"),
    ]
    always_draw = True  # the rate windows move with the clock
    DEFAULT_CSS = """
    QueuesScreen DataTable { height: 1fr; }
    QueuesScreen #summary { height: auto; padding: 0 1; color: $text-muted; }
    """

    def body(self) -> ComposeResult:
        yield data_table("queues", COLUMNS)
        yield Static("", id="summary")

    def draw(self) -> None:
        st = self.state
        now = self.source.now()
        rows = []
        for name, q in sorted(st.queues.items()):
            enq = q.enqueue_rate.series(now, SPARK_SECONDS, SPARK_WIDTH)
            done = q.complete_rate.series(now, SPARK_SECONDS, SPARK_WIDTH)
            rows.append((name, [
                name,
                Text("paused", style="bold yellow") if q.paused else Text("-", style="bright_black"),
                q.ready, q.scheduled, q.running, q.succeeded,
                Text(str(q.failed), style="red" if q.failed else ""),
                Text(str(q.dead), style="bold red" if q.dead else ""),
                q.workers,
                fmt_rate(q.enqueue_rate.rate(now, RATE_SECONDS)),
                Text(sparkline(enq), style="cyan"),
                fmt_rate(q.complete_rate.rate(now, RATE_SECONDS)),
                Text(sparkline(done), style="green"),
                Text("; ".join(fmt_limit(lim) for lim in st.queue_limits(name)) or "-",
                     style="magenta" if st.queue_limits(name) else "bright_black"),
            ]))
        sync_table(self.query_one("#queues", DataTable), rows)
        if st.offline:
            counts = "succeeded/dead: tasks in the file; failed: failed attempts in the file"
        elif st.totals_from_server:
            counts = "succeeded/failed/dead: totals since the server started"
        else:
            counts = "succeeded/failed/dead: counted from live events since the dashboard connected"
        s = st.stats
        server = f"server {st.server}" + (f", up {s['uptime']:.0f}s" if "uptime" in s else "")
        dropped = f", {st.dropped} events dropped by the server" if st.dropped else ""
        # the limits of each queue (docs/limits.md), also in the last column, which a narrow terminal cuts off
        limits = "".join(f"\nlimits of {name}: " + "; ".join(fmt_limit(lim) for lim in st.queue_limits(name))
                         for name in sorted(st.queues) if st.queue_limits(name))
        self.query_one("#summary", Static).update(
            f"{server}; {st.events_seen} live events{dropped}. Rates: per second over {RATE_SECONDS}s; "
            f"sparklines: last {SPARK_SECONDS // 60} minutes. {counts}." + limits + (f"\n{st.note}" if st.note else ""))

    def selected_queue(self) -> str | None:
        table = self.query_one("#queues", DataTable)
        if not table.row_count:
            return None
        row = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(row.value)

    def action_toggle_pause(self) -> None:
        name = self.selected_queue()
        if name is None:
            return
        q = self.state.queues.get(name)
        if q is not None and q.paused:
            self.run_action_call(lambda: self.source.resume(name), f"queue {name} resumed")
        else:
            self.confirm_then(f"Pause queue '{name}'? Workers get no more of its tasks until it is resumed.",
                              lambda: self.source.pause(name), f"queue {name} paused")

    def action_enqueue(self) -> None:
        self.enqueue_from_form(self.selected_queue() or "default")
