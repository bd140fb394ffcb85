"""The Timeline screen: per-worker lanes of recent attempts on a shared time axis (a Gantt view)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from ..widgets import LanesView, fmt_duration
from .base import DashboardScreen

__all__ = ["WINDOWS", "TimelineScreen"]

WINDOWS = (30.0, 60.0, 120.0, 300.0, 600.0)


class TimelineScreen(DashboardScreen):
    """Which worker ran what over the last minutes: a stall is a gap, a slow type a long bar."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("plus,equals_sign", "wider", "Wider"),
        Binding("minus", "narrower", "Narrower"),
    ]
    always_draw = True  # the window slides with the clock
    DEFAULT_CSS = """
    TimelineScreen #title { height: 1; padding: 0 1; text-style: bold; }
    TimelineScreen VerticalScroll { height: 1fr; }
    TimelineScreen LanesView { height: auto; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = 120.0

    def body(self) -> ComposeResult:
        yield Static("", id="title")
        with VerticalScroll():
            yield LanesView(id="lanes")

    def draw(self) -> None:
        now = self.source.now()
        start = now - self.window
        lanes = self.state.lanes.window(start, now)
        n = sum(len(b) for b in lanes.values())
        self.query_one("#title", Static).update(
            f"Attempts per worker over the last {fmt_duration(self.window)} ({n} attempts, "
            f"{len(lanes)} workers)   +/- window")
        self.query_one("#lanes", LanesView).show(lanes, start, now)

    def action_wider(self) -> None:
        i = WINDOWS.index(self.window) if self.window in WINDOWS else 2
        self.window = WINDOWS[min(i + 1, len(WINDOWS) - 1)]
        self.refresh_data(force=True)

    def action_narrower(self) -> None:
        i = WINDOWS.index(self.window) if self.window in WINDOWS else 2
        self.window = WINDOWS[max(i - 1, 0)]
        self.refresh_data(force=True)
