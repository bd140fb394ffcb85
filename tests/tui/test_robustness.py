"""The dashboard on odd input: odd task ids typed in the search field, tasks whose payload is not msgpack,
huge or non-ASCII values, files of another schema, and the Gantt axis at narrow widths."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
from test_live import SIZE, table_rows, until
from textual.widgets import Input, Static

from runq.app.store.schema import SCHEMA_VERSION, migrate
from runq.protocol.frames import Connection
from runq.tui import LiveSource, NotConnected, OfflineError, OfflineSource, RunqDashboard
from runq.tui.forms import EnqueueForm
from runq.tui.model import Bar
from runq.tui.screens import TaskDetailScreen, TasksScreen
from runq.tui.screens.tasks import _pretty
from runq.tui.widgets import render_lanes

pytestmark = [pytest.mark.tui]

T = 1_767_225_600.0
TRACEBACK = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nValueError: ünïcødé ✗"


def make_db(path: Path) -> str:
    """A database file with the server's schema and three odd tasks (as a client in another language might
    leave them): a payload that is not msgpack, a 1 MB non-ASCII result, an error with its traceback."""
    with sqlite3.connect(path) as conn:
        migrate(conn)
        big = msgpack.packb({"text": "héllo ✓ 🚀 " * 100_000})
        rows = [
            (1, "default", "raw", b"\xc1\xc1 not msgpack", "succeeded", b"\xc1", T - 30, T - 29, T - 28, "w1"),
            (2, "défaut", "grand_résultat", msgpack.packb("ok"), "succeeded", big, T - 20, T - 19, T - 10, "w1"),
            (3, "default", "boom", None, "dead", None, T - 5, T - 4, T - 3, "w2"),
        ]
        for tid, queue, type_, payload, state, result, created, started, finished, worker in rows:
            conn.execute(
                "INSERT INTO tasks (id, queue, type, payload, state, timeout, max_retries, attempt, result, error,"
                " created_at, started_at, finished_at, worker) VALUES (?, ?, ?, ?, ?, 60, 0, 1, ?, ?, ?, ?, ?, ?)",
                (tid, queue, type_, payload, state, result, TRACEBACK if state == "dead" else None, created,
                 started, finished, worker))
            conn.executemany(
                "INSERT INTO events (task_id, at, kind, state, worker, attempt, detail) VALUES (?, ?, ?, ?, ?, 1, ?)",
                [(tid, started, "started", "running", worker, None),
                 (tid, finished, "succeeded" if state == "succeeded" else "failed",
                  state if state == "succeeded" else "failed", worker, "ValueError: ünïcødé ✗" if state == "dead" else None),
                 *([(tid, finished, "dead", "dead", None, "1 attempt, retries spent")] if state == "dead" else [])])
    return str(path)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_odd_task_ids_in_the_search_field_find_nothing(tmp_path: Path) -> None:
    """The id field accepts ``-``, ``+`` and ids beyond SQLite's and msgpack's integers: none of them may
    end the dashboard (a failed background load used to crash the app)."""
    db = make_db(tmp_path / "odd.db")
    with anyio.fail_after(30):
        app = RunqDashboard(OfflineSource(db))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("3")
            await until(pilot, lambda: len(table_rows(app, "#tasks")) == 3)
            screen = app.screen
            assert isinstance(screen, TasksScreen)
            for text in ("-", "+", "99999999999999999999999", "-99999999999999999999999", "2"):
                loads = screen.loads
                screen.query_one("#f-id", Input).value = text
                await until(pilot, lambda n=loads: screen.loads > n and not screen._loading, what=text)
                await pilot.pause(0.1)
                assert app.is_running and app.screen is screen, text
                expected = ["2"] if text == "2" else []
                await until(pilot, lambda e=expected: [r[0] for r in table_rows(app, "#tasks")] == e, what=text)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_detail_of_tasks_with_odd_values(tmp_path: Path) -> None:
    db = make_db(tmp_path / "odd.db")
    with anyio.fail_after(30):
        app = RunqDashboard(OfflineSource(db))
        async with app.run_test(size=SIZE) as pilot:
            for tid in (1, 2, 3):
                await app.push_screen(TaskDetailScreen(tid))
                await until(pilot, lambda: app.screen.loads >= 1)  # type: ignore[attr-defined]
                await pilot.pause(0.1)
                payload = str(app.screen.query_one("#payload", Static).content)
                outcome = str(app.screen.query_one("#outcome", Static).content)
                if tid == 1:
                    assert "not msgpack" in payload and "\\xc1" in outcome  # raw bytes shown as bytes
                elif tid == 2:
                    assert "héllo ✓ 🚀" in outcome and len(outcome) < 5000  # cut, not a megabyte of text
                else:
                    assert "ValueError: ünïcødé ✗" in outcome and "Traceback" in outcome
                    assert [r[3] for r in table_rows(app, "#events")] == ["enqueued", "started", "failed", "dead"]
                await pilot.press("escape")
            assert app.is_running


def test_offline_refuses_a_postgresql_url_and_says_to_use_the_server() -> None:
    with pytest.raises(OfflineError, match=r"SQLite files only.*runq tui --server"):
        OfflineSource.check("postgresql://runq@db/runq")


def test_offline_refuses_a_file_of_another_schema(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    make_db(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # (a schema newer than this runq's)
    with pytest.raises(OfflineError, match=f"schema version {SCHEMA_VERSION + 1}"):
        OfflineSource.check(str(newer))

    older = tmp_path / "older.db"  # a tasks table without the columns the dashboard reads
    with sqlite3.connect(older) as conn:
        conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, queue TEXT, state TEXT)")
        conn.execute("PRAGMA user_version = 1")
    with pytest.raises(OfflineError):
        OfflineSource.check(str(older))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_offline_start_refuses_a_file_of_another_schema(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    make_db(newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    source = OfflineSource(str(newer))
    with pytest.raises(OfflineError, match=f"schema version {SCHEMA_VERSION + 1}"):
        await source.start()
    assert source.conn is None


@pytest.mark.parametrize("width", [20, 24, 31, 40, 64, 133])
def test_gantt_axis_labels_sit_over_their_columns(width: int) -> None:
    """Each tick label is centred on its column (``now`` ends on the last one, the first starts on the
    first), labels never run into each other, and a bar that starts at a tick starts under it."""
    span = 120.0
    lanes = {"w": [Bar(1, 1, "t", "w", T - span / 2, None, None)]}
    lines = render_lanes(lanes, T - span, T, width, label_width=4).plain.splitlines()
    axis, lane = lines[0][4:], lines[1][4:]
    assert len(axis) == len(lane) == width
    assert axis.endswith("now") and axis.startswith("-2m00s")
    words = axis.split()
    assert all(w == "now" or w.startswith("-") for w in words), axis  # no label glued to another
    assert all(w.count("-") <= 1 and w.count("now") <= 1 for w in words), axis
    if "-1m00s" in axis:
        mid = axis.index("-1m00s") + 3  # the label's centre
        assert abs(mid - (len(lane) - len(lane.lstrip(".")))) <= 1, (axis, lane)  # bar cells: coloured spaces


class OddServer:
    """A server speaking the wire protocol (runq.protocol.frames) that sends what a real one does not:
    live events of an unknown kind or with a malformed time, and, when ``bad_queues`` is set, a ``queues``
    reply whose maps lack the queue name. Real sockets on 127.0.0.1."""

    def __init__(self) -> None:
        self.bad_queues = False
        self.mute = False  # welcome, then answer nothing
        self.skew: float | None = None  # send one well-formed event stamped this far from our clock
        self.connections = 0
        self.open = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.writers.append(writer)
        conn = Connection()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                conn.receive_data(data)
                for msg in conn.messages():
                    if self.mute and msg["op"] != "hello":
                        continue
                    writer.write(conn.send(self.reply(msg)))
                    if msg["op"] == "subscribe" and self.skew is not None:
                        writer.write(conn.send({"op": "event", "kind": "enqueued", "id": 9, "queue": "q",
                                                "at": time.time() + self.skew, "attempt": 0, "type": "t",
                                                "state": "ready"}))
                    elif msg["op"] == "subscribe":
                        for ev in ({"kind": "martian", "id": 1, "queue": "q", "at": T},
                                   {"kind": "started", "id": 2, "queue": "q", "at": "yesterday", "worker": "w",
                                    "attempt": 1, "type": "t", "state": "running"},
                                   {"kind": "enqueued", "id": 3, "queue": "q", "at": T, "attempt": 0, "type": "t",
                                    "state": "ready"}):
                            writer.write(conn.send({"op": "event", **ev}))
                await writer.drain()
        finally:
            self.open -= 1
            writer.close()

    def reply(self, msg: dict[str, Any]) -> dict[str, Any]:
        op, rid = msg["op"], msg.get("rid")
        if op == "hello":
            return {"op": "welcome", "version": 1, "server": "odd/0", "heartbeat": 1.0, "lease_timeout": 3.0,
                    "max_frame": 1 << 24}
        body: dict[str, Any] = {
            "queues": {"queues": [{"paused": False}] if self.bad_queues else [{"queue": "q", "ready": 1}]},
            "workers": {"workers": []}, "stats": {"stats": {}}, "list": {"tasks": [], "cursor": None},
        }.get(op, {})
        return {"op": "ok", "rid": rid, **body}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_live_source_survives_odd_events_and_replies() -> None:
    """Malformed events are skipped (and counted); an odd poll reply ends the connection and the source
    reconnects by itself instead of dying silently; connections are not leaked."""
    server = OddServer()
    await server.start()
    source = LiveSource(f"127.0.0.1:{server.port}")
    try:
        with anyio.fail_after(20):
            await source.start()
            while source.state.events_seen < 2:  # the martian and the enqueued; the malformed one skipped
                await anyio.sleep(0.02)
            assert source.malformed == 1 and "malformed" in source.state.note
            assert source.state.connected and source.connects == 1
            server.bad_queues = True
            while source.state.connected:
                await anyio.sleep(0.02)
            assert "poll failed" in source.state.status and "KeyError" in source.state.status
            await anyio.sleep(1.0)  # it keeps trying (each try fails the same way) without piling up connections
            assert server.open <= 1 and server.connections <= 8
            server.bad_queues = False
            while not source.state.connected:
                await anyio.sleep(0.02)
            assert source.connects == 2
    finally:
        await source.close()
        assert server.server is not None
        server.server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_in_flight_when_the_connection_is_lost_fails_at_once() -> None:
    """The SDK client would hold a read until it reconnected (and answer it then): the dashboard's request
    fails with NotConnected when the connection ends, so a screen says so instead of waiting; the same client
    then reconnects by itself."""
    server = OddServer()
    await server.start()
    source = LiveSource(f"127.0.0.1:{server.port}")
    try:
        with anyio.fail_after(20):
            await source.start()
            while not source.state.connected:
                await anyio.sleep(0.02)
            client = source.client
            server.mute = True
            request = asyncio.ensure_future(source.get(1))
            await anyio.sleep(0.2)
            assert not request.done()
            for writer in server.writers:
                writer.close()
            with pytest.raises(NotConnected, match="lost"):
                await request
            server.mute = False
            while not source.state.connected:
                await anyio.sleep(0.02)
            assert source.client is client and source.connects == 2
    finally:
        await source.close()
        assert server.server is not None
        server.server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_action_the_protocol_cannot_carry_is_a_notification() -> None:
    """A priority beyond 64 bits typed in the enqueue form cannot be encoded: the dashboard says so and
    stays up (the action's background worker used to end the app)."""
    server = OddServer()
    await server.start()
    try:
        with anyio.fail_after(20):
            app = RunqDashboard(LiveSource(f"127.0.0.1:{server.port}"))
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: app.source.state.connected)
                await pilot.press("e")
                assert isinstance(app.screen, EnqueueForm)
                app.screen.query_one("#type", Input).value = "t"
                app.screen.query_one("#priority", Input).value = "9" * 30
                await pilot.press("ctrl+s")
                await until(pilot, lambda: any(n.title == "failed" for n in app._notifications))
                await pilot.pause(0.1)
                assert app.is_running
    finally:
        assert server.server is not None
        server.server.close()


def test_labels_of_concurrent_attempts_do_not_mix() -> None:
    """A worker running several tasks at once has overlapping bars in its lane: each label is written whole
    or not at all (the real terminal showed ``ssloslowsslo...``)."""
    bars = [Bar(i, 1, "slow" if i % 2 else "word_count", "w", T - 30 + i * 0.7, T - 30 + i * 0.7 + 5, "succeeded")
            for i in range(30)]
    lane = render_lanes({"w": bars}, T - 30, T, 80, label_width=4).plain.splitlines()[1][4:]
    words = lane.replace(".", " ").split()
    assert words and all(w in ("slow", "word_count") for w in words), lane


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_server_that_welcomes_then_stalls_is_given_up_on() -> None:
    """The first requests of a connection are bounded too: a server that answers hello and then nothing
    is treated as lost (banner, reconnection) instead of leaving the dashboard 'connecting' for ever."""
    server = OddServer()
    server.mute = True
    await server.start()
    source = LiveSource(f"127.0.0.1:{server.port}")
    source.setup_timeout = 0.5
    try:
        with anyio.fail_after(20):
            await source.start()
            while "reconnecting" not in source.state.status:
                await anyio.sleep(0.02)
            assert "TimeoutError" in source.state.status and not source.state.connected
            server.mute = False
            while not source.state.connected:
                await anyio.sleep(0.02)
            assert server.connections >= 2 and server.open == 1
    finally:
        await source.close()
        assert server.server is not None
        server.server.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_rates_follow_a_server_clock_ahead_of_ours() -> None:
    """The server's clock runs 30 s ahead: the dashboard moves its clock (docs/tui.md, Clocks), and the
    rates are read on that clock, so the event just received is in the last 10 seconds' rate."""
    server = OddServer()
    server.skew = 30.0
    await server.start()
    source = LiveSource(f"127.0.0.1:{server.port}")
    try:
        with anyio.fail_after(20):
            await source.start()
            while source.state.events_seen < 1:
                await anyio.sleep(0.02)
            assert source.now() - time.time() > 25
            assert source.state.queues["q"].enqueue_rate.rate(source.now() + 1, 10) == 0.1
    finally:
        await source.close()
        assert server.server is not None
        server.server.close()


def test_a_big_payload_is_shown_without_blocking_the_screen() -> None:
    """An open task is redrawn every second on the UI loop: showing a 200,000-item payload must cost about
    what a small one costs (pretty-printing it whole took over a second, so the dashboard froze)."""
    class Item:
        shown = 0

        def __repr__(self) -> str:
            Item.shown += 1
            return "item"

    assert _pretty([Item() for _ in range(200_000)]).startswith("[item, item")
    assert Item.shown <= 2 * 200  # pformat measures, then writes: bounded by what is shown, not the payload
    big = [{"k": i, "v": "x" * 10} for i in range(200_000)]
    text = _pretty(big)
    assert text.startswith("[{'k': 0, 'v': 'xxxxxxxxxx'}, {'k': 1,") and len(text) == 4000
    assert _pretty({"a": (1, 2), "b": b"\xc1"}) == "{'a': (1, 2), 'b': b'\\xc1'}"
    assert "199800 more" in _pretty(list(range(200_000)))



@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_leaving_screens_while_the_timer_and_loads_run(tmp_path: Path) -> None:
    """Textual removes a leaving screen's widgets before the screen, on pop and at exit, while the app's
    refresh timer and the screens' background loads go on: neither may then draw into the half-removed
    screen (a tick looking for its banner ended CI run 6 with NoMatches). A 1 kHz timer, detail screens
    popped while their 1 MB task loads, and exits with a load in flight make those windows likely."""
    from fixed_source import FixedSource

    db = make_db(tmp_path / "odd.db")
    with anyio.fail_after(60):
        for _ in range(5):
            app = RunqDashboard(FixedSource(), refresh_hz=1000)
            async with app.run_test(size=SIZE) as pilot:
                await app.push_screen(TaskDetailScreen(42))
                await pilot.pause(0.01)
        for _ in range(5):
            app = RunqDashboard(OfflineSource(db), refresh_hz=1000)
            async with app.run_test(size=SIZE):
                await app.switch_mode("tasks")
                for _ in range(3):
                    await app.push_screen(TaskDetailScreen(3))
                    await app.pop_screen()
                await app.push_screen(TaskDetailScreen(3))
            assert app.return_code in (None, 0)
