"""The store contract: one suite every storage implementation passes (today: SQLite, NORMAL and FULL)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runq.app.core import State, Task
from runq.app.store import SCHEMA_VERSION, Batch, SchemaTooNew, Store, StoreError, migrate

T0 = 1_000.0


def row(tid: int, state: str = "ready", queue: str = "default", type_: str = "t", finished: float | None = None,
        **kw: Any) -> tuple[Any, ...]:
    t = Task(tid, queue, type_, b"\xc0", 0, State(state), None, 60.0, 3, 0, None, None, None, None, T0,
             None, finished)
    for k, v in kw.items():
        setattr(t, k, v)
    return t.row()


def event(tid: int, kind: str = "enqueued", state: str = "ready", at: float = T0) -> tuple[Any, ...]:
    return (tid, at, kind, state, None, 0, None)


class Done:
    """Collects on_done calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, BaseException | None]] = []
        self.ev = threading.Event()
        self.expected = 0

    def cb(self, n: int) -> Any:
        def on_done(err: BaseException | None) -> None:
            self.calls.append((n, err))
            if len(self.calls) >= self.expected:
                self.ev.set()
        return on_done

    def wait(self, n: int, timeout: float = 10) -> None:
        self.expected = n
        if len(self.calls) < n:
            assert self.ev.wait(timeout), f"only {len(self.calls)} of {n} batches reported"


@pytest.fixture(params=["NORMAL", "FULL"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "store.db"), synchronous=request.param)
    s.start()
    yield s
    s.close()


def commit(store: Store, batch: Batch) -> BaseException | None:
    d = Done()
    batch.on_done = d.cb(0)
    store.submit(batch)
    d.wait(1)
    return d.calls[0][1]


class TestStoreContract:
    def test_rows_and_events_are_visible_after_commit(self, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1), row(2)], events=[event(1), event(2)],
                                   queue_ops=[("q", True)])) is None
        assert store.get_task(1) == row(1) and store.get_task(3) is None
        assert store.events(1) == [event(1)]
        assert commit(store, Batch(queue_ops=[("q", False), ("r", True)])) is None
        _, paused, _ = store.load()
        assert paused == ["r"]

    def test_last_row_wins_and_events_keep_their_order(self, store: Store) -> None:
        b1 = Batch(rows=[row(1, "ready"), row(1, "running")], events=[event(1), event(1, "started", "running")])
        b2 = Batch(rows=[row(1, "succeeded", finished=T0 + 1)], events=[event(1, "succeeded", "succeeded")])
        d = Done()
        b1.on_done, b2.on_done = d.cb(1), d.cb(2)
        store.submit(b1)
        store.submit(b2)
        d.wait(2)
        assert store.get_task(1)[5] == "succeeded"  # type: ignore[index]
        assert [e[2] for e in store.events(1)] == ["enqueued", "started", "succeeded"]

    def test_new_rows_are_inserted_before_upserts_of_the_same_commit(self, store: Store) -> None:
        t = Task(1, "q", "t", b"\x01", 2, State.READY, None, 60.0, 3, 0, "k", None, None, None, T0)
        d = Done()
        b1 = Batch(new_rows=[t.new_row()], events=[event(1)], on_done=d.cb(1))
        b2 = Batch(rows=[row(1, "running", queue="q", attempt=1)], on_done=d.cb(2))
        store.submit(b1)
        store.submit(b2)
        d.wait(2)
        assert store.get_task(1)[5] == "running"  # type: ignore[index]
        commit(store, Batch(new_rows=[Task(2, "q", "t", b"", 0, State.SCHEDULED, T0 + 5, 60.0, 3, 0, None, None,
                                           None, None, T0).new_row()]))
        assert store.get_task(2) == Task(2, "q", "t", b"", 0, State.SCHEDULED, T0 + 5, 60.0, 3, 0, None, None,
                                         None, None, T0).row()

    def test_group_commit_groups_and_reports_each_batch_once_in_order(self, tmp_path: Path) -> None:
        s = Store(str(tmp_path / "g.db"))
        d = Done()
        for i in range(200):  # queued before the writer starts: they must share commits
            s.submit(Batch(rows=[row(i + 1)], events=[event(i + 1)], on_done=d.cb(i)))
        s.start()
        d.wait(200)
        s.close()
        assert [n for n, _ in d.calls] == list(range(200)) and all(e is None for _, e in d.calls)
        assert s.stats.batches == 200 and s.stats.commits < 200 and s.stats.rows == 200

    def test_load_returns_live_rows_in_id_order(self, store: Store) -> None:
        rows, paused, next_id = store.load()
        assert list(rows) == [] and paused == [] and next_id == 1
        states = ["ready", "succeeded", "running", "scheduled", "dead", "failed", "cancelled", "ready"]
        commit(store, Batch(rows=[row(i + 1, s) for i, s in enumerate(states)]))
        rows, _, next_id = store.load()
        assert [r[0] for r in rows] == [1, 3, 4, 6, 8] and next_id == 9

    def test_list_tasks_filters_and_pages(self, store: Store) -> None:
        commit(store, Batch(rows=[row(i, "ready" if i % 2 else "dead", queue="a" if i % 3 else "b",
                                      type_="x" if i < 10 else "y") for i in range(1, 21)]))
        seen: list[int] = []
        cursor = None
        while True:
            page = store.list_tasks(limit=6, cursor=cursor)
            seen += [r[0] for r in page]
            if len(page) < 6:
                break
            cursor = page[-1][0]
        assert seen == list(range(20, 0, -1))
        assert [r[0] for r in store.list_tasks(state="dead", queue="b")] == [18, 12, 6]
        assert [r[0] for r in store.list_tasks(type="x", state="ready", limit=2)] == [9, 7]
        assert store.count_by_state()[("a", "ready")] == 7

    def test_prune_removes_old_finished_tasks_and_their_events(self, store: Store) -> None:
        rows = [row(1, "succeeded", finished=T0), row(2, "dead", finished=T0 + 50), row(3, "cancelled", finished=T0),
                row(4, "ready"), row(5, "succeeded", finished=T0 + 200)]
        commit(store, Batch(rows=rows, events=[event(i) for i in range(1, 6)]))
        commit(store, Batch(prune_before=T0 + 100))
        assert [store.get_task(i) is not None for i in range(1, 6)] == [False, False, False, True, True]
        assert store.events(1) == [] and store.events(4) == [event(4)]

    def test_ids_never_go_back_after_pruning(self, store: Store) -> None:
        commit(store, Batch(rows=[row(1, "ready"), row(7, "succeeded", finished=T0)]))
        commit(store, Batch(prune_before=T0 + 1))
        assert store.get_task(7) is None
        assert store.load()[2] == 8

    def test_schema_and_pragmas(self, store: Store) -> None:
        conn = sqlite3.connect(store.path)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert migrate(conn) == SCHEMA_VERSION  # up to date: nothing to do
        conn.close()
        expected = {"NORMAL": 1, "FULL": 2}[store.synchronous]
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == expected

    def test_reader_works_while_the_writer_writes(self, store: Store) -> None:
        stop = threading.Event()

        def write() -> None:
            i = 1
            while not stop.is_set():
                store.submit(Batch(rows=[row(i)]))
                i += 1
                time.sleep(0.0005)

        t = threading.Thread(target=write)
        t.start()
        try:
            counts = []
            for _ in range(50):
                counts.append(len(store.list_tasks(limit=1000)))
                time.sleep(0.002)
        finally:
            stop.set()
            t.join()
        assert counts == sorted(counts) and counts[-1] > 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew):
        Store(path)


def test_locked_database_is_reported_then_recovers(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "lock.db"))
    s.conn.execute("PRAGMA busy_timeout=100")
    s.start()
    other = sqlite3.connect(s.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        err = commit(s, Batch(rows=[row(1)]))
        assert isinstance(err, StoreError) and "locked" in str(err)
        assert s.stats.errors == 1
        with pytest.raises(StoreError):
            s.check_writable()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert commit(s, Batch(rows=[row(2)])) is None
    s.check_writable()
    assert s.get_task(2) is not None and s.get_task(1) is None
    s.close()


def test_full_database_is_reported_and_nothing_partial_is_written(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "full.db"))
    s.start()
    assert commit(s, Batch(rows=[row(1)])) is None
    (pages,) = s.conn.execute("PRAGMA page_count").fetchone()
    s.conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [row(i, payload=b"x" * 4000) for i in range(2, 200)]
    err = commit(s, Batch(rows=big, events=[event(i) for i in range(2, 200)]))
    assert isinstance(err, StoreError) and "full" in str(err)
    assert s.get_task(2) is None and s.events(2) == [] and s.get_task(1) is not None
    s.close()


def test_acknowledged_batches_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    child = textwrap.dedent(f"""
        import sys, threading
        from runq.app.store import Store, Batch
        from runq.app.core import Task, State
        s = Store({str(path)!r})
        s.start()
        lock = threading.Lock()
        def acked(i):
            def cb(err):
                if err is None:
                    with lock:
                        sys.stdout.write(f"{{i}}\\n"); sys.stdout.flush()
            return cb
        i = 0
        while True:
            i += 1
            t = Task(i, "default", "t", b"\\xc0", 0, State.READY, None, 60.0, 3, 0, None, None, None, None, 1.0)
            s.submit(Batch(rows=[t.row()], on_done=acked(i)))
            if i % 50 == 0:
                import time; time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acked.append(int(line))
        if len(acked) >= 3000:
            proc.kill()  # SIGKILL, mid-stream
            break
    proc.wait(10)
    proc.stdout.close()
    s = Store(str(path))
    rows, _, next_id = s.load()
    stored = {r[0] for r in rows}
    s.close()
    assert set(acked) <= stored and next_id > max(acked)
