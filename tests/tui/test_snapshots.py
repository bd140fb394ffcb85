"""SVG snapshots of every screen (pytest-textual-snapshot), drawn from fixed data with a stopped clock.

Update them after a deliberate change of the screens: ``pytest tests/tui/test_snapshots.py --snapshot-update``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fixed_source import FixedSource
from textual.pilot import Pilot

from runq.tui import RunqDashboard
from runq.tui.screens import TaskDetailScreen, TasksScreen

pytestmark = pytest.mark.tui

SIZE = (150, 40)
Compare = Callable[..., bool]


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Times on screen are local times: fix the zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def app(**kw: Any) -> RunqDashboard:
    return RunqDashboard(FixedSource(**kw))


async def loaded(pilot: Pilot[Any]) -> None:
    """Wait for the screen's first page of tasks (or task) to be drawn."""
    screen = pilot.app.screen
    for _ in range(200):
        if getattr(screen, "loads", 1) >= 1:
            break
        await pilot.pause(0.01)
    await pilot.pause()


def test_queues(snap_compare: Compare) -> None:
    assert snap_compare(app(), terminal_size=SIZE)


def test_workers(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["2"], terminal_size=SIZE)


def test_tasks(snap_compare: Compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("3")
        await loaded(pilot)
        assert isinstance(pilot.app.screen, TasksScreen)

    assert snap_compare(app(), terminal_size=SIZE, run_before=run_before)


def test_task_detail(snap_compare: Compare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("3")
        await loaded(pilot)
        await pilot.press("enter")  # the first row: task 42, dead after four attempts
        await loaded(pilot)
        assert isinstance(pilot.app.screen, TaskDetailScreen)

    assert snap_compare(app(), terminal_size=(150, 50), run_before=run_before)


def test_timeline(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["4"], terminal_size=SIZE)


def test_help(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["question_mark"], terminal_size=SIZE)


def test_enqueue_form(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["e", *"resize_image"], terminal_size=SIZE)


def test_confirm_pause(snap_compare: Compare) -> None:
    assert snap_compare(app(), press=["p"], terminal_size=SIZE)


def test_disconnected_banner(snap_compare: Compare) -> None:
    assert snap_compare(app(connected=False), press=["2"], terminal_size=SIZE)
