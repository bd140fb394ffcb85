"""What the ``runq`` commands print: rich tables and views for people, JSON for scripts, human times.

Rules of this file:

1. ``--json`` prints exactly what the commands printed before they had a human view: ``json.dumps`` with
   ``indent=2``, ``ensure_ascii=False``, bytes as hex, anything else unknown as ``str``. Scripts rely on it.
2. The human view is rich's, on a terminal (colours, a header rule, ellipsis in cells too wide). Into a
   pipe or a file it is plain text: no colour, no box drawing, no trailing spaces, no cell cut or wrapped
   (rich would lay tables out for 80 columns), one line per row, so ``grep`` and ``head`` see whole rows.
3. Nothing found (an empty list) is a line on stderr saying so, and an empty stdout: exit status 0.
4. Times are local and human (``2026-11-29 20:21:07 (3 min ago)``); ``--json`` keeps the Unix times.
5. Text that comes from the server (types, queues, errors) is never read as rich markup.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "STATE_STYLES",
    "ago",
    "duration",
    "human_time",
    "json_text",
    "local_time",
    "note",
    "print_events",
    "print_json",
    "print_table",
    "print_task",
]

#: Colours of task and worker states on a terminal.
STATE_STYLES = {
    "succeeded": "green", "dead": "bold red", "failed": "red", "cancelled": "yellow", "running": "cyan",
    "scheduled": "magenta", "ready": "blue", "active": "green", "draining": "yellow",
}

#: Width given to rich when the output is not a terminal: wide enough that no row is ever cut or wrapped.
PIPE_WIDTH = 1_000_000


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as the commands' JSON (rule 1); ``indent=None`` for one line."""
    return json.dumps(obj, indent=indent, default=_json_default, ensure_ascii=False)


def _console() -> Console:
    from rich.console import Console

    out = sys.stdout  # (read now: tests swap it)
    console = Console(file=out, markup=False, highlight=False, emoji=False)
    if not console.is_terminal:
        console = Console(file=out, markup=False, highlight=False, emoji=False, width=PIPE_WIDTH,
                          color_system=None)
    return console


def _print(renderable: RenderableType) -> None:
    console = _console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON (rule 1), highlighted on a terminal."""
    console = _console()
    if console.is_terminal:
        console.print_json(data=obj, indent=2, default=_json_default, ensure_ascii=False)
    else:
        sys.stdout.write(json_text(obj) + "\n")


def note(message: str) -> None:
    """A line for the person at the terminal, on stderr (nothing found, more pages...)."""
    click.echo(message, err=True)


def show(found: list[Any], json: bool, empty: str, render: Callable[[list[Any]], None]) -> None:
    """What a listing command prints: ``found`` as JSON (``--json``), ``empty`` as a note when nothing was found,
    else ``render(found)`` for people."""
    if json:
        print_json(found)
    elif not found:
        note(empty)
    else:
        render(found)


# ---------------------------------------------------------------------- times
def duration(seconds: float) -> str:
    """``0.4 ms``, ``12 ms``, ``3.5 s``, ``42 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    s = abs(seconds)
    if s < 0.01:
        return f"{s * 1000:.1f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    whole = int(s)
    if whole < 3600:
        m, rest = divmod(whole, 60)
        return f"{m} min {rest} s" if rest and m < 10 else f"{m} min"
    if whole < 86400:
        h, rest = divmod(whole, 3600)
        return f"{h} h {rest // 60} min" if rest // 60 else f"{h} h"
    d, rest = divmod(whole, 86400)
    return f"{d} d {rest // 3600} h" if rest // 3600 else f"{d} d"


def ago(at: float, now: float) -> str:
    """``3 min ago``, or ``in 25 s`` for a time to come."""
    delta = now - at
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(delta)}"


def local_time(at: float, ms: bool = False) -> str:
    """``2026-11-29 20:21:07`` (``.294`` with ``ms``), local time."""
    stamp = datetime.fromtimestamp(at)
    return stamp.isoformat(sep=" ", timespec="milliseconds" if ms else "seconds")


def human_time(at: float, now: float) -> str:
    """``2026-11-29 20:21:07 (3 min ago)``."""
    return f"{local_time(at)} ({ago(at, now)})"


# ---------------------------------------------------------------------- views
def _text(value: Any, style: str | None = None) -> Any:
    from rich.text import Text

    return Text("" if value is None else str(value), style=style or "")


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, styles: dict[int, dict[str, str]] | None = None,
                right: Iterable[int] = ()) -> None:
    """A table with a header row: ``columns`` names, ``rows`` of values (``None`` is empty).

    Args:
        styles: per column index, a style per cell value (the state colours).
        right: indexes of the columns aligned right (numbers).
    """
    from rich import box
    from rich.table import Table

    terminal = _console().is_terminal
    table = Table(box=box.SIMPLE_HEAD if terminal else None, show_edge=False, pad_edge=False,
                  header_style="bold" if terminal else "", expand=False)
    right = set(right)
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if i in right else "left", no_wrap=True,
                         overflow="ellipsis", min_width=len(name))
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            style = (styles or {}).get(i, {}).get(str(value)) if terminal else None
            cells.append(_text(value, style))
        table.add_row(*cells)
    _print(table)


def _value(value: Any) -> str:
    """A payload or result on one line, as JSON (a string shows its quotes: ``"ok"`` is not ``ok``)."""
    return json_text(value, indent=None)


def print_task(task: dict[str, Any], now: float | None = None) -> None:
    """A task as a key/value view: the task map's own field names, times local and human."""
    from rich.table import Table

    now = time.time() if now is None else now
    terminal = _console().is_terminal
    rows: list[tuple[str, Any]] = [
        ("id", task.get("id")),
        ("type", task.get("type")),
        ("state", _text(task.get("state"), STATE_STYLES.get(str(task.get("state"))) if terminal else None)),
        ("queue", task.get("queue")),
        ("priority", task.get("priority")),
        ("attempt", f"{task.get('attempt')} (max_retries {task.get('max_retries')})"),
    ]
    if task.get("timeout") is not None:
        rows.append(("timeout", duration(float(task["timeout"]))))
    for field in ("key", "worker"):
        if task.get(field) is not None:
            rows.append((field, task[field]))
    created = task.get("created_at")
    started = task.get("started_at")
    finished = task.get("finished_at")
    if created is not None:
        rows.append(("created_at", human_time(created, now)))
    if task.get("run_at") is not None:
        rows.append(("run_at", human_time(task["run_at"], now)))
    if started is not None:
        rows.append(("started_at", human_time(started, now)))
    if finished is not None:
        ran = f"; ran {duration(finished - started)}" if started is not None and finished >= started else ""
        rows.append(("finished_at", f"{local_time(finished)} ({ago(finished, now)}{ran})"))
    if task.get("progress") is not None:
        rows.append(("progress", _value(task["progress"])))
    rows.append(("payload", _value(task.get("payload"))))
    if task.get("result") is not None or task.get("state") == "succeeded":
        rows.append(("result", _value(task.get("result"))))
    if task.get("error"):
        rows.append(("error", str(task["error"]).rstrip("\n")))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold" if terminal else "", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(_text(name), value if not isinstance(value, (str, int, float)) else _text(value))
    _print(grid)


def print_events(events: list[dict[str, Any]]) -> None:
    """A task's timeline: each event's local time, the time since the first, what happened and why."""
    if not events:
        return
    t0 = float(events[0]["at"])
    rows = []
    for e in events:
        at = float(e["at"])
        rows.append((local_time(at, ms=True), "+" + duration(at - t0) if at > t0 else "", e.get("kind"),
                     e.get("state"), e.get("attempt"), e.get("worker"), e.get("detail")))
    print_table(["TIME", "SINCE", "EVENT", "STATE", "ATTEMPT", "WORKER", "DETAIL"], rows,
                styles={3: STATE_STYLES}, right=[1, 4])
