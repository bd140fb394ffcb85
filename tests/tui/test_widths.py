"""Every row of the task screens fits its width and uses only characters of one cell in every terminal.

Block, box-drawing and middle-dot characters (``█ · ─ ┴``), Textual's header icon and the footer's palette
mark are of ambiguous East-Asian width: some terminals (tmux with some fonts and locales) draw them two cells
wide, so a row that uses them overflows its end and leaves stray blocks there. And a line longer than its
widget was wrapped onto a row of its own (Textual does not keep Rich's ``no_wrap``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

import anyio
import pytest
from fixed_source import NOW, FixedSource
from rich.cells import cell_len
from test_live import until
from textual.widget import Widget

from runq.tui import RunqDashboard
from runq.tui.model import Bar, Phase
from runq.tui.screens import TaskDetailScreen, TasksScreen, TimelineScreen
from runq.tui.widgets import render_lanes, render_marks, render_phases

pytestmark = [pytest.mark.tui]


def odd_width(text: str) -> set[str]:
    """The characters of ``text`` whose width is not one cell everywhere (ambiguous, wide, fullwidth)."""
    return {ch for ch in text if unicodedata.east_asian_width(ch) in ("A", "W", "F")}


def screen_rows(app: RunqDashboard) -> list[str]:
    update = app.screen._compositor.render_update(full=True)
    return ["".join(seg.text for seg in strip) for strip in update.strips]  # type: ignore[union-attr]


def widget_rows(app: RunqDashboard, widget: Widget) -> list[str]:
    """The rows the screen shows inside ``widget``'s content region."""
    region = widget.content_region
    rows = screen_rows(app)[region.y:region.bottom]
    return [row[region.x:region.right].rstrip() for row in rows]


async def shown(app: RunqDashboard, pilot: Any) -> dict[str, list[str]]:
    """The rows of the task list, a task's detail and the timeline."""
    out = {}
    await pilot.press("3")
    await until(pilot, lambda: isinstance(app.screen, TasksScreen) and app.screen.loads >= 1)
    await pilot.pause(0.1)
    out["tasks"] = screen_rows(app)
    await app.push_screen(TaskDetailScreen(42))
    await until(pilot, lambda: app.screen.loads >= 1)  # type: ignore[attr-defined]
    await pilot.pause(0.1)
    out["detail"] = screen_rows(app)
    await pilot.press("escape", "4")
    await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
    await pilot.pause(0.1)
    out["timeline"] = screen_rows(app)
    return out


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("size", [(150, 40), (100, 40)])
async def test_task_screens_use_one_cell_characters(size: tuple[int, int]) -> None:
    with anyio.fail_after(30):
        app = RunqDashboard(FixedSource())
        async with app.run_test(size=size) as pilot:
            for name, rows in (await shown(app, pilot)).items():
                assert len(rows) == size[1], name
                assert all(cell_len(row) == size[0] for row in rows), name
                assert set().union(*map(odd_width, rows)) == set(), name


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("width", [40, 60, 90])
async def test_lanes_and_strip_are_cut_not_wrapped(width: int) -> None:
    """At narrow widths the Gantt legend and the phase strip are cut at the edge: each row shown is the start
    of one line of what was drawn, never a line's end wrapped onto a row of its own."""
    with anyio.fail_after(30):
        app = RunqDashboard(FixedSource())
        async with app.run_test(size=(width, 40)) as pilot:
            await app.push_screen(TaskDetailScreen(42))
            await until(pilot, lambda: app.screen.loads >= 1)  # type: ignore[attr-defined]
            await pilot.pause(0.1)
            strip = app.screen.query_one("#strip")
            drawn = str(strip.render()).splitlines()
            rows = widget_rows(app, strip)
            assert rows[0] and all(any(line.startswith(row) for line in drawn) for row in rows), rows
            await pilot.press("escape", "4")
            await until(pilot, lambda: isinstance(app.screen, TimelineScreen))
            await pilot.pause(0.1)
            lanes = app.screen.query_one("#lanes")
            drawn = str(lanes.render()).splitlines()
            rows = [r for r in widget_rows(app, lanes) if r]
            assert len(rows) == len(drawn) == 4 + 2  # the axis, four workers, the legend
            assert all(any(line.startswith(row.rstrip()) for line in drawn) for row in rows), rows


def test_renderers_draw_ascii_within_their_width() -> None:
    bars = [Bar(1, 1, "send_email", "w1", NOW - 50, NOW - 10, "succeeded"), Bar(2, 1, "x", "w1", NOW - 5, None, None),
            Bar(3, 2, "boom", "w2", NOW - 40, NOW - 30, "failed")]
    for width in (10, 33, 80):
        text = render_lanes({"w1": bars[:2], "w2": bars[2:]}, NOW - 60, NOW, width)
        assert all(cell_len(line) <= 14 + width for line in text.plain.splitlines())
        assert text.plain.isascii()
        phases = [Phase("waiting", NOW - 60, NOW - 50, None, 0), Phase("running", NOW - 50, NOW, "w1", 1)]
        assert render_phases(phases, width).plain.isascii()
        marks = render_marks([{"at": NOW - 60, "kind": "enqueued"}, {"at": NOW, "kind": "succeeded"}],
                             NOW - 60, NOW, width)
        assert marks.plain.isascii() and all(len(line) <= max(10, width) for line in marks.plain.splitlines())
