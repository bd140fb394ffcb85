"""Small renderers and widgets: sparklines, the Gantt lanes, a task's timeline strip, table syncing.

The renderers are pure functions returning Rich ``Text`` (tested and
snapshotted with fixed times); the widgets wrap them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static

from .model import Bar, Phase

__all__ = [
    "OUTCOME_STYLE",
    "PHASE_STYLE",
    "STATE_STYLE",
    "LanesView",
    "fmt_age",
    "fmt_duration",
    "fmt_labels",
    "fmt_limit",
    "fmt_rate",
    "fmt_time",
    "render_lanes",
    "render_marks",
    "render_phases",
    "sparkline",
    "sync_table",
]

_BLOCKS = " ▁▂▃▄▅▆▇█"
#: the Gantt view and the phase strip draw with ASCII and colours only: block, box and middle-dot characters
#: are of ambiguous East-Asian width, drawn two cells wide by some terminals (and tmux with some fonts and
#: locales), which pushed each row's end over the edge (stray blocks at the ends of rows)
_BAR = " "  # a bar cell: a space on the outcome's colour
_EMPTY = "."  # a column with no attempt

#: colour of a Gantt bar by how its attempt ended (None: still running)
OUTCOME_STYLE: dict[str | None, str] = {
    None: "bold yellow", "succeeded": "green", "failed": "red", "lost": "magenta", "lost_dead": "magenta",
    "released": "cyan", "cancelled": "bright_black", "recovered": "magenta",
}
#: the worse outcome wins a column shared by several bars
_OUTCOME_RANK: dict[str | None, int] = {
    "succeeded": 0, "cancelled": 1, "released": 2, None: 3, "recovered": 4, "lost": 5, "lost_dead": 5, "failed": 6,
}
PHASE_STYLE = {"waiting": "blue", "running": "green", "backoff": "magenta", "delayed": "cyan"}
STATE_STYLE = {"ready": "blue", "scheduled": "cyan", "running": "yellow", "succeeded": "green", "dead": "red",
               "cancelled": "bright_black", "failed": "red"}


def sparkline(values: Sequence[float], width: int | None = None) -> str:
    """A one-line sparkline of ``values`` scaled to their maximum (all zero: a flat baseline)."""
    if width is not None and len(values) > width:
        values = values[-width:]
    top = max(values, default=0.0)
    if top <= 0:
        return "▁" * len(values)
    return "".join(_BLOCKS[max(1, min(8, round(v / top * 8)))] if v > 0 else "▁" for v in values)


def fmt_rate(r: float) -> str:
    if r >= 10_000:
        return f"{r / 1000:.0f}k"
    if r >= 1000:
        return f"{r / 1000:.1f}k"
    if r >= 10:
        return f"{r:.0f}"
    return f"{r:.1f}"


def fmt_limit(lim: Mapping[str, Any]) -> str:
    """A limit map in a few words: ``10/s burst 5, cap 3``, ``per customer: 2/s`` (docs/limits.md)."""
    parts = []
    rate, period = lim.get("rate"), lim.get("period") or 1.0
    if rate is not None:
        per = "s" if period == 1 else f"{period:g}s"
        parts.append(f"{rate:g}/{per}" + (f" burst {lim['burst']}" if (lim.get("burst") or 1) > 1 else ""))
    if lim.get("concurrency") is not None:
        parts.append(f"cap {lim['concurrency']}")
    text = ", ".join(parts) or "-"
    return f"per {lim['key']}: {text}" if lim.get("key") else text


def fmt_labels(labels: Mapping[str, str] | None) -> str:
    """Labels as ``gpu=1,region=eu`` (sorted), or ``-``."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "-"


def fmt_duration(seconds: float) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``2h10m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def fmt_age(seconds: float | None) -> str:
    return "-" if seconds is None else fmt_duration(max(0.0, seconds))


def fmt_time(at: float | None, millis: bool = True) -> str:
    """Local time of day of a unix time (``-`` for none)."""
    if at is None:
        return "-"
    ms = round(at * 1000)
    s = time.strftime("%H:%M:%S", time.localtime(ms // 1000))
    return f"{s}.{ms % 1000:03d}" if millis else s


def render_lanes(lanes: Mapping[str, Sequence[Bar]], start: float, end: float, width: int,
                 label_width: int = 14) -> Text:
    """The Gantt view: one line per worker, bars on a shared axis from ``start`` to ``end``.

    Each column covers ``(end - start) / width`` seconds and takes the colour of the worst outcome among
    the attempts it overlaps (failed > lost > running > succeeded); a bar wide enough carries its type.
    """
    width = max(10, width)
    span = max(end - start, 1e-6)
    out = Text(no_wrap=True, overflow="crop")
    out.append(" " * label_width)
    out.append(_axis(start, end, width), style="bright_black")
    out.append("\n")
    if not lanes:
        out.append("  no attempts in this window", style="italic bright_black")
        return out
    for worker in sorted(lanes):
        cells: list[str | None] = [None] * width
        ranks = [-1] * width
        labels: list[tuple[int, int, str]] = []
        for bar in lanes[worker]:
            b_end = end if bar.end is None else bar.end
            c0 = int((bar.start - start) / span * width)
            c1 = int((b_end - start) / span * width)
            c0, c1 = max(c0, 0), min(max(c1, c0), width - 1)
            if c0 > width - 1 or b_end < start:
                continue
            rank = _OUTCOME_RANK.get(bar.outcome, 3)
            for c in range(c0, c1 + 1):
                if rank > ranks[c]:
                    ranks[c] = rank
                    cells[c] = bar.outcome if bar.outcome is not None else "running"
            if c1 - c0 + 1 >= len(bar.type) + 2:
                labels.append((c0, c1, bar.type))
        chars = [_BAR if c is not None else _EMPTY for c in cells]
        taken = -1  # last column of the latest label: concurrent attempts share a lane, their labels must not mix
        for c0, _c1, label in sorted(labels):
            if c0 <= taken:
                continue
            for i, ch in enumerate(label):
                chars[c0 + 1 + i] = ch
            taken = c0 + len(label) + 1
        out.append(f"{worker[:label_width - 1]:<{label_width}}")
        run_style: str | None = ""
        run: list[str] = []
        for ch, cell in zip(chars, cells, strict=True):
            style = "bright_black" if cell is None else OUTCOME_STYLE.get(None if cell == "running" else cell, "white")
            if cell is not None:  # a bar, and its label in the bar's colour
                style = f"reverse {style}"
            if style != run_style and run:
                out.append("".join(run), style=run_style or None)
                run = []
            run_style = style
            run.append(ch)
        if run:
            out.append("".join(run), style=run_style or None)
        out.append("\n")
    legend = Text(" " * label_width)
    for name, style in (("succeeded", "green"), ("running", "bold yellow"), ("failed", "red"), ("lost", "magenta"),
                        ("released", "cyan"), ("cancelled", "bright_black")):
        legend.append("  ", style=f"reverse {style}")
        legend.append(f" {name}  ", style=style)
    legend.truncate(label_width + width)  # one line: cut, never wrapped onto a row of its own
    out.append_text(legend)
    return out


def _axis(start: float, end: float, width: int) -> str:
    """A time axis: ``-2m`` ... ``now`` tick labels over ``width`` columns.

    The first label starts on the first column, ``now`` ends on the last, the others are centred on their
    tick; an inner label that would touch a neighbour is left out (narrow widths).
    """
    span = end - start
    ticks = 4
    placed: list[tuple[int, str]] = []  # (first column, label), left to right
    for i in range(ticks + 1):
        col = min(width - 1, int(i / ticks * (width - 1)))
        label = "now" if i == ticks else f"-{fmt_duration(span * (1 - i / ticks))}"
        pos = col - len(label) + 1 if i == ticks else (col if i == 0 else col - len(label) // 2)
        placed.append((max(0, pos), label))
    first, last = placed[0], placed[-1]
    keep = [first]
    for pos, label in placed[1:-1]:
        prev_pos, prev = keep[-1]
        if pos > prev_pos + len(prev) and pos + len(label) < last[0]:
            keep.append((pos, label))
    if last[0] > first[0] + len(first[1]):
        keep.append(last)
    axis = [" "] * width
    for pos, label in keep:
        for j, ch in enumerate(label[: width - pos]):
            axis[pos + j] = ch
    return "".join(axis)


def render_phases(phases: Sequence[Phase], width: int) -> Text:
    """A task's life on one line: each phase (waiting, running, backoff) in proportion to its duration."""
    width = max(10, width)
    out = Text(no_wrap=True, overflow="crop")
    if not phases:
        return out
    start, end = phases[0].start, phases[-1].end
    span = max(end - start, 1e-6)
    used = 0
    for i, ph in enumerate(phases):
        cols = width - used if i == len(phases) - 1 else max(1, round((ph.end - ph.start) / span * width))
        cols = max(0, min(cols, width - used - (len(phases) - 1 - i)))
        if cols <= 0:
            continue
        label = ph.name if cols >= len(ph.name) + 1 else ""
        out.append(label.ljust(cols, " ")[:cols], style=f"reverse {PHASE_STYLE.get(ph.name, 'white')}")
        used += cols
    return out


_MARK_STYLE = {"started": "green", "succeeded": "bold green", "failed": "bold red", "dead": "bold red",
               "lost": "magenta", "lost_dead": "magenta", "cancelled": "bright_black", "retried": "cyan",
               "released": "cyan", "recovered": "magenta"}


def render_marks(events: Sequence[Mapping[str, Any]], start: float, end: float, width: int) -> Text:
    """The time axis under the phase strip: a mark per event at its time, and the span's two ends."""
    width = max(10, width)
    span = max(end - start, 1e-6)
    cells: list[tuple[str, str]] = [("-", "bright_black")] * width
    for ev in events:
        col = min(width - 1, max(0, int((float(ev["at"]) - start) / span * (width - 1))))
        cells[col] = ("^" if ev["kind"] not in ("enqueued", "scheduled") else "|",
                      _MARK_STYLE.get(str(ev["kind"]), "white"))
    out = Text(no_wrap=True, overflow="crop")
    for ch, style in cells:
        out.append(ch, style=style)
    right = fmt_duration(span)
    out.append("\n0s" + " " * max(1, width - 2 - len(right)) + right, style="bright_black")
    return out


class LanesView(Static):
    """The Gantt lanes of the timeline screen (drawn by ``render_lanes``).

    Its lines are cut at the widget's edge, never wrapped (Textual does not keep Rich's ``no_wrap``).
    """

    DEFAULT_CSS = "LanesView { text-wrap: nowrap; text-overflow: clip; }"

    def show(self, lanes: Mapping[str, Sequence[Bar]], start: float, end: float) -> None:
        width = max(20, (self.size.width or 100) - 16)
        self.update(render_lanes(lanes, start, end, width))


def sync_table(table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Make ``table`` show ``rows`` (key, cells): cells updated in place when the keys are unchanged,
    else rebuilt with the cursor kept on the same key."""
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    if keys == current:
        columns = list(table.columns)
        for key, cells in rows:
            for col, value in zip(columns, cells, strict=False):
                if table.get_cell(key, col) != value:
                    table.update_cell(key, col, value)
        return
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = current[table.cursor_row]
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False)
