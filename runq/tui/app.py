"""The dashboard application: four screens (one key each), a refresh timer, the source's lifecycle.

Theory of operation
-------------------
The source fills its ``DashboardState`` in the background. One timer, at
``refresh_hz`` (5 per second by default), asks the visible dashboard screen to
redraw from that state; a screen redraws only when the state's ``version``
moved (or its figures depend on the clock). So the cost of drawing does not
grow with the event rate: 10 or 10,000 events per second, it is one redraw per
tick. ``RefreshStats`` records each tick, for the benchmark and the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.scrollbar import ScrollBar, ScrollBarRender

from .forms import HelpScreen
from .screens import (
    AuditScreen,
    DashboardScreen,
    DeadScreen,
    QueuesScreen,
    SchedulesScreen,
    TasksScreen,
    TimelineScreen,
    WorkersScreen,
)
from .source import Source

__all__ = ["RefreshStats", "RunqDashboard"]


@dataclass
class RefreshStats:
    """What the refresh timer did: ticks, their spacing and their cost (seconds)."""

    interval: float
    ticks: int = 0
    first: float = 0.0
    last: float = 0.0
    worst_gap: float = 0.0  # longest time between two ticks
    worst_draw: float = 0.0  # longest redraw
    draw_total: float = 0.0
    gaps: list[float] = field(default_factory=list)

    def tick(self, started: float, ended: float) -> None:
        if self.ticks:
            gap = started - self.last
            self.worst_gap = max(self.worst_gap, gap)
            self.gaps.append(gap)
        else:
            self.first = started
        self.ticks += 1
        self.last = started
        self.worst_draw = max(self.worst_draw, ended - started)
        self.draw_total += ended - started

    def reset(self) -> None:
        self.ticks = 0
        self.worst_gap = self.worst_draw = self.draw_total = 0.0
        self.gaps.clear()

    @property
    def per_second(self) -> float:
        span = self.last - self.first
        return (self.ticks - 1) / span if self.ticks > 1 and span > 0 else 0.0


class AsciiScrollBarRender(ScrollBarRender):
    """Scrollbars without partial blocks at the thumb's ends (``▁▂▃`` ``▉▊▋``): those are of ambiguous
    width, drawn two cells wide by some terminals (tmux with some fonts), which pushed the row's end over the
    edge. The thumb is whole cells of its colour."""

    VERTICAL_BARS: ClassVar[list[str]] = [" "] * 8
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "] * 8


class RunqDashboard(App[None]):
    """``runq tui``: queues, workers, tasks and timelines of a live server or a database file.

    Args:
        source: where the data comes from (``LiveSource`` or ``OfflineSource``).
        refresh_hz: redraws per second.
    """

    TITLE = "runq"
    MODES: ClassVar[dict[str, str | Callable[[], Screen[Any]]]] = {"queues": QueuesScreen, "workers": WorkersScreen, "tasks": TasksScreen, "timeline": TimelineScreen, "schedules": SchedulesScreen,
                                                                   "dead": DeadScreen, "audit": AuditScreen}
    DEFAULT_MODE = "queues"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "switch_mode('queues')", "Queues"),
        Binding("2", "switch_mode('workers')", "Workers"),
        Binding("3", "switch_mode('tasks')", "Tasks"),
        Binding("4", "switch_mode('timeline')", "Timeline"),
        # (not in the footer, which is full: the help screen and docs/tui.md name it)
        Binding("5", "switch_mode('schedules')", "Schedules", show=False),
        Binding("6", "switch_mode('dead')", "Dead letters", show=False),
        Binding("7", "switch_mode('audit')", "Audit", show=False),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: Source, *, refresh_hz: float = 5.0) -> None:
        super().__init__()
        ScrollBar.renderer = AsciiScrollBarRender  # Textual's documented way: for every scrollbar of the process
        self.source = source
        self.refresh_stats = RefreshStats(1.0 / refresh_hz)
        self.title = f"runq  {source.description}"  # not a sub_title: Textual joins them with an em dash

    async def on_mount(self) -> None:
        await self.source.start()
        self.set_interval(self.refresh_stats.interval, self._tick)

    async def on_unmount(self) -> None:
        await self.source.close()

    def dashboard_screen(self) -> DashboardScreen | None:
        """The dashboard screen in view (under a modal, if one is open)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    def _tick(self) -> None:
        started = time.perf_counter()
        screen = self.dashboard_screen()
        if screen is not None and screen.drawable:
            screen.refresh_data()
        self.refresh_stats.tick(started, time.perf_counter())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

