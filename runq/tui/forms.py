"""Modal screens: the confirmation of a destructive action, the enqueue form, the help page."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown

__all__ = ["ConfirmScreen", "EnqueueForm", "EnqueueRequest", "HelpScreen"]


class ConfirmScreen(ModalScreen[bool]):
    """Ask yes or no; dismissed with the answer (``y``/``n``/``escape`` work too)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 64; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    ConfirmScreen Label { width: 100%; margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            with Horizontal():
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


@dataclass(frozen=True)
class EnqueueRequest:
    """What the enqueue form asks for."""

    type: str
    payload: Any
    queue: str
    priority: int | None
    delay: float | None


class EnqueueForm(ModalScreen[EnqueueRequest | None]):
    """A small form: type, queue, JSON payload, priority, delay. Dismissed with the request, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "submit", "Enqueue")]
    DEFAULT_CSS = """
    EnqueueForm { align: center middle; }
    EnqueueForm > Vertical { width: 72; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    EnqueueForm Grid { grid-size: 2; grid-columns: 12 1fr; height: auto; grid-gutter: 0 1; }
    EnqueueForm Label { height: 3; content-align: left middle; }
    EnqueueForm #error { color: $error; height: auto; }
    EnqueueForm Horizontal { height: auto; align-horizontal: right; }
    EnqueueForm Button { margin-left: 2; }
    """

    def __init__(self, queue: str = "default", type: str = "") -> None:
        super().__init__()
        self.default_queue = queue
        self.default_type = type

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("[b]Enqueue a task[/b]")
            with Grid():
                yield Label("type")
                yield Input(self.default_type, placeholder="handler name", id="type")
                yield Label("queue")
                yield Input(self.default_queue, id="queue")
                yield Label("payload")
                yield Input("null", placeholder="JSON", id="payload")
                yield Label("priority")
                yield Input("", placeholder="0", id="priority", type="integer")
                yield Label("delay (s)")
                yield Input("", placeholder="none", id="delay", type="number")
            yield Label("", id="error")
            with Horizontal():
                yield Button("Enqueue", variant="primary", id="submit")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#type", Input).focus()

    def _value(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value.strip()

    def build(self) -> EnqueueRequest:
        """The request the fields describe.

        Raises:
            ValueError: a field is empty or malformed (the message says which).
        """
        type_ = self._value("type")
        if not type_:
            raise ValueError("type is required")
        queue = self._value("queue") or "default"
        text = self._value("payload") or "null"
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"payload is not JSON: {exc}") from None
        prio = self._value("priority")
        delay = self._value("delay")
        try:
            priority = int(prio) if prio else None
            delay_s = float(delay) if delay else None
        except ValueError as exc:
            raise ValueError(f"priority/delay: {exc}") from None
        return EnqueueRequest(type_, payload, queue, priority, delay_s)

    def action_submit(self) -> None:
        try:
            req = self.build()
        except ValueError as exc:
            self.query_one("#error", Label).update(str(exc))
            return
        self.dismiss(req)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.dismiss(None)


HELP = """\
# runq dashboard

| key | screen |
|---|---|
| `1` | **Queues**: counts per state, enqueue and completion rates with sparklines, paused flag |
| `2` | **Workers**: in flight, heartbeat age (yellow: late, red: about to lose its leases), state |
| `3` | **Tasks**: filter by state, queue, type; search by id; `enter` opens a task's detail and timeline |
| `4` | **Timeline**: per-worker lanes of the attempts of the last minutes (a Gantt view) |
| `?` | this help; `q` quits |

| key | action | where |
|---|---|---|
| `p` | pause / resume the selected queue (pause asks first) | Queues |
| `e` | enqueue a task (a form) | Queues, Tasks |
| `d` | drain the selected worker: it finishes its tasks and leaves (asks first) | Workers |
| `c` | cancel the selected task (asks first) | Tasks, task detail |
| `r` | retry the selected task (dead, cancelled or waiting for a retry) | Tasks, task detail |
| `s` | cycle the state filter | Tasks |
| `/` | search by task id, or filter by queue and type | Tasks |
| `+` `-` | widen / narrow the time window | Timeline |
| `escape` | back | task detail, forms |

Live mode follows a server (`runq tui --server HOST:PORT`); when the server goes away a red banner says so
and the dashboard reconnects by itself. Offline mode (`runq tui --db FILE`) reads a database file
read-only: the actions above are not offered (`p`, `e`, `d`, `c`, `r` do nothing) and the clock stands at the
file's last event.
"""


class HelpScreen(ModalScreen[None]):
    """The key bindings of every screen."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,question_mark,q", "close", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 100; max-height: 90%; border: thick $accent; background: $surface;
                                  padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
