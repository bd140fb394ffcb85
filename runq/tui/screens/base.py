"""What every dashboard screen shares: header, the disconnected/offline banner, the footer, actions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from ...protocol.errors import RunqError
from ..forms import ConfirmScreen, EnqueueForm, EnqueueRequest

if TYPE_CHECKING:
    from ..app import RunqDashboard
    from ..model import DashboardState
    from ..source import Source

__all__ = ["ACTION_OPS", "WRITE_ACTIONS", "DashboardScreen", "LoadingScreen", "describe", "may_act"]

#: the screens' actions that change the server: hidden from the footer and disabled on a read-only source
WRITE_ACTIONS = frozenset({"toggle_pause", "enqueue", "cancel_task", "retry_task", "drain"})
#: the protocol op each action asks for: an action the identity may not take is hidden (docs/security.md)
ACTION_OPS = {"toggle_pause": "pause", "enqueue": "enqueue", "cancel_task": "cancel", "retry_task": "retry",
              "drain": "drain", "toggle_schedule": "schedule_pause", "run_schedule": "schedule_run",
              "retry_dead": "dead_retry", "delete_dead": "dead_delete"}


def may_act(source: Source, action: str) -> bool:
    """Whether ``action`` of a screen is offered on ``source`` (``DashboardScreen.check_action``)."""
    if action in WRITE_ACTIONS and source.offline:
        return False
    op = ACTION_OPS.get(action)
    return op is None or source.may(op)


def describe(exc: BaseException) -> str:
    """An error for the screen: a runq error's own message, else the exception's type and message."""
    return str(exc) if isinstance(exc, RunqError) else f"{type(exc).__name__}: {exc}"


class DashboardScreen(Screen[None]):
    """A screen that draws from the source's state on the app's timer (``refresh_data``).

    Subclasses implement ``body`` (their widgets) and ``draw`` (fill them from the state); ``draw`` is
    called at most once per tick and only when the state changed or ``always_draw`` is set.
    """

    DEFAULT_CSS = """
    DashboardScreen #banner { dock: top; height: 1; padding: 0 1; display: none; }
    DashboardScreen #banner.disconnected { display: block; background: $error; color: $text; text-style: bold; }
    DashboardScreen #banner.offline { display: block; background: $warning; color: $background; text-style: bold; }
    """

    #: redraw on every tick even when no event came (ages, windows that move with the clock)
    always_draw = False

    def __init__(self) -> None:
        super().__init__()
        self._drawn_version = -1
        self._composed = False  # set in on_mount (its widgets exist; Textual's is_mounted turns True after it)

    def compose(self) -> ComposeResult:
        # ASCII chrome: Textual's default header icon (U+2B58) and the footer's palette mark (U+258F) are of
        # ambiguous width, drawn two cells wide by some terminals: the row then overflows its end
        yield Header(icon="*")
        yield Static("", id="banner")
        yield from self.body()
        yield Footer(show_command_palette=False)

    def body(self) -> ComposeResult:
        yield from ()

    @property
    def dash(self) -> RunqDashboard:
        return cast("RunqDashboard", self.app)

    @property
    def source(self) -> Source:
        return self.dash.source

    @property
    def state(self) -> DashboardState:
        return self.dash.source.state

    @property
    def drawable(self) -> bool:
        """Whether this screen's widgets are there to draw into.

        Textual removes a leaving screen's widgets before the screen itself (on pop and at exit, when
        ``display`` turns False), and the app's timer and background loads can call in between.
        """
        return self._composed and self.display and self.app.is_running

    def on_mount(self) -> None:
        self._composed = True
        self.refresh_data(force=True)

    def on_screen_resume(self) -> None:
        self.refresh_data(force=True)

    def refresh_data(self, force: bool = False) -> None:
        """Called by the app's timer: redraw from the state if it changed."""
        if not self.drawable:
            return
        st = self.state
        self._banner(st)
        if force or self.always_draw or st.version != self._drawn_version:
            self._drawn_version = st.version
            self.draw()

    def _banner(self, st: DashboardState) -> None:
        banner = self.query_one("#banner", Static)
        if st.offline:
            text, cls = f"OFFLINE  {st.status}", "offline"
        elif not st.connected:
            # (a standby of a failover pair refuses the dashboard, naming the active server: docs/operations.md)
            word = ("STANDBY" if "is a standby" in st.status else
                    "CONNECTING" if st.status.startswith("connecting") else "DISCONNECTED")
            text, cls = f"{word}  {st.status}", "disconnected"
        else:
            text, cls = "", ""
        if str(banner.content) != text:
            banner.update(text)
        banner.set_class(cls == "offline", "offline")
        banner.set_class(cls == "disconnected", "disconnected")

    def draw(self) -> None:
        """Fill the widgets from ``self.state``."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Textual's hook for bindings: an action that would change the server is not offered (neither shown
        in the footer nor run by its key) when the source is read-only (``runq tui --db FILE``), nor one the
        identity may not take (a viewer's dashboard has no action; a user's, no pause or drain)."""
        return may_act(self.source, action)

    # ------------------------------------------------------------------ actions
    def run_action_call(self, call: Callable[[], Awaitable[Any]], done: str | Callable[[Any], str]) -> None:
        """Run a source call in the background; notify its outcome (errors as error notifications)."""

        async def go() -> None:
            try:
                result = await call()
            except RunqError as exc:
                self.app.notify(str(exc), title="refused", severity="error")
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a value the protocol cannot carry: keep the dashboard
                self.app.notify(describe(exc), title="failed", severity="error")
                return
            self.app.notify(done(result) if callable(done) else done)
            self.after_action()

        self.run_worker(go(), group="action")

    def after_action(self) -> None:
        """Hook: refresh what the action changed."""

    def confirm_then(self, question: str, call: Callable[[], Awaitable[Any]], done: str | Callable[[Any], str]) -> None:
        """Ask ``question``; on yes, ``run_action_call``."""

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_action_call(call, done)

        self.app.push_screen(ConfirmScreen(question), answered)

    def enqueue_from_form(self, queue: str, type_: str = "") -> None:
        """Open the enqueue form (filled with ``queue`` and ``type_``); enqueue what it returns."""

        def submitted(req: EnqueueRequest | None) -> None:
            if req is not None:
                self.run_action_call(
                    lambda: self.source.enqueue(req.type, req.payload, queue=req.queue, priority=req.priority,
                                                delay=req.delay),
                    lambda tid: f"enqueued task {tid} ({req.type} on {req.queue})")

        self.app.push_screen(EnqueueForm(queue, type_), submitted)


class LoadingScreen(DashboardScreen):
    """A screen that reads its data from the source in the background, not from the live state.

    Subclasses implement ``load_due`` (whether to read again now), ``fetch`` (read into their fields;
    an exception is shown as ``error``) and ``show`` (draw the fields). One load runs at a time, and its
    result is drawn only while the screen is ``drawable``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.error = ""
        self._loaded_at = 0.0
        self._loading = False

    @property
    def load_age(self) -> float:
        """Seconds since the last load started."""
        return time.monotonic() - self._loaded_at

    def refresh_data(self, force: bool = False) -> None:
        if not self.drawable:
            return
        super().refresh_data(force)
        if not self._loading and self.load_due(force):
            self._loading = True
            self._loaded_at = time.monotonic()
            self.run_worker(self._load(), group="load", exclusive=True)

    async def _load(self) -> None:
        try:
            await self.fetch()
            self.error = ""
        except Exception as exc:  # noqa: BLE001 - shown on the screen: a failed load must not end the app
            self.error = describe(exc)
        finally:
            self._loading = False
        self.loads += 1
        if self.drawable:
            self.show()

    def load_due(self, force: bool) -> bool:
        """Whether to read again now (``force``: the screen was just shown)."""
        return force

    async def fetch(self) -> None:
        """Read the screen's data from the source."""

    def show(self) -> None:
        """Draw what ``fetch`` read."""


def data_table(table_id: str, columns: Sequence[str]) -> DataTable[Any]:
    """The row-cursor, striped table the list screens use, with ``columns`` keyed by their names."""
    table: DataTable[Any] = DataTable(id=table_id, cursor_type="row", zebra_stripes=True)
    for name in columns:
        table.add_column(name, key=name)
    return table
