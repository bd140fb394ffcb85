"""What the store tests share: the store kits (one per implementation), and helpers that build records.

A ``StoreKit`` is everything the contract suite (test_store_contract.py) needs to know about one kind of
store: how to open one on a fresh database, and how to make its commits wait, fail, or run out of space.
``KITS`` lists them; the suite runs once per entry. A new store (PostgreSQL) joins with one more entry.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runq.app.core import EventRecord, State, Task, TaskRecord
from runq.app.store import Batch, SQLiteStore, Store

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_000.0
LIVE = ("scheduled", "ready", "running", "failed")
FINAL = ("succeeded", "dead", "cancelled")

OpenStore = Callable[[Path], Store]


class StoreKit:
    """One implementation, as the contract suite drives it (hooks to give; see the module docstring)."""

    #: the test id of this kit
    name = "?"

    def open(self, path: Path) -> Store:
        """A store (not started) on the database named by ``path`` (a fresh, empty one: a new file name)."""
        raise NotImplementedError

    def blocked(self, store: Store) -> contextlib.AbstractContextManager[None]:
        """Inside, commits wait (no error) until it exits (another writer holds the database)."""
        raise NotImplementedError

    def locked(self, store: Store) -> contextlib.AbstractContextManager[None]:
        """Inside, commits fail with an error that says "locked", and are reported."""
        raise NotImplementedError

    def full(self, store: Store) -> contextlib.AbstractContextManager[None]:
        """Inside, commits fail for lack of space, with an error that says "full"."""
        raise NotImplementedError

    def child_source(self, path: Path) -> str:
        """Python source, run in a child process, that binds ``s`` to a store (not started) on ``path``."""
        raise NotImplementedError


class SQLiteKit(StoreKit):
    """``SQLiteStore`` on a real file, with ``synchronous`` NORMAL or FULL."""

    def __init__(self, synchronous: str) -> None:
        self.synchronous = synchronous
        self.name = f"sqlite-{synchronous.lower()}"

    def open(self, path: Path) -> SQLiteStore:
        return SQLiteStore(str(path), synchronous=self.synchronous)

    @contextlib.contextmanager
    def blocked(self, store: Store) -> Iterator[None]:
        assert isinstance(store, SQLiteStore)
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE waits (busy_timeout 5 s)
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    @contextlib.contextmanager
    def locked(self, store: Store) -> Iterator[None]:
        assert isinstance(store, SQLiteStore)
        store.conn.execute("PRAGMA busy_timeout=100")
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        other.execute("INSERT INTO queues (name, paused) VALUES ('other', 1)")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    @contextlib.contextmanager
    def full(self, store: Store) -> Iterator[None]:
        assert isinstance(store, SQLiteStore)
        (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
        (limit,) = store.conn.execute("PRAGMA max_page_count").fetchone()
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        try:
            yield
        finally:
            store.conn.execute(f"PRAGMA max_page_count = {limit}")

    def child_source(self, path: Path) -> str:
        return (f"from runq.app.store import SQLiteStore\n"
                f"s = SQLiteStore({str(path)!r}, synchronous={self.synchronous!r})\n")


class PostgresKit(StoreKit):
    """``PostgresStore`` on a fresh database of the session's real PostgreSQL server (tests/pg_server.py): one
    database per ``path`` (a test's restarts reopen the same one).

    Its commits wait, or fail "locked", on the row lock another session holds on ``runq_writer`` (every commit
    reads it ``FOR SHARE`` first, its fencing); they fail "full" on a trigger that raises PostgreSQL's own
    ``disk_full`` error (SQLSTATE 53100) for every write of ``tasks``: a real server raising the real error,
    short of filling a disk.
    """

    name = "postgres"

    def __init__(self) -> None:
        self._urls: dict[Path, str] = {}

    def url(self, path: Path) -> str:
        if path not in self._urls:
            import pg_server

            self._urls[path] = pg_server.server().database()
        return self._urls[path]

    def open(self, path: Path) -> Store:
        from runq.app.store.postgres import PostgresStore

        return PostgresStore(self.url(path))

    @contextlib.contextmanager
    def _holding(self, store: Store) -> Iterator[Any]:
        import psycopg

        from runq.app.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url) as other:
            other.execute("SELECT term FROM runq_writer WHERE id = 1 FOR UPDATE")
            yield other
            other.rollback()

    @contextlib.contextmanager
    def blocked(self, store: Store) -> Iterator[None]:
        with self._holding(store):  # the writer's FOR SHARE waits (lock_timeout 5 s)
            yield

    @contextlib.contextmanager
    def locked(self, store: Store) -> Iterator[None]:
        from runq.app.store.postgres import LOCK_TIMEOUT_MS, PostgresStore

        assert isinstance(store, PostgresStore)
        store.conn.execute("SET lock_timeout = 100")
        try:
            with self._holding(store):
                yield
        finally:
            store.conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")

    @contextlib.contextmanager
    def full(self, store: Store) -> Iterator[None]:
        import psycopg

        from runq.app.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url, autocommit=True) as other:
            other.execute("CREATE FUNCTION runq_test_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                          "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';"
                          " END $$")
            other.execute("CREATE TRIGGER runq_test_full BEFORE INSERT OR UPDATE ON tasks "
                          "FOR EACH STATEMENT EXECUTE FUNCTION runq_test_full()")
            try:
                yield
            finally:
                other.execute("DROP TRIGGER runq_test_full ON tasks")
                other.execute("DROP FUNCTION runq_test_full()")

    def child_source(self, path: Path) -> str:
        return (f"from runq.app.store.postgres import PostgresStore\n"
                f"s = PostgresStore({self.url(path)!r})\n")


#: every store the contract suite runs on
KITS: list[StoreKit] = [SQLiteKit("NORMAL"), SQLiteKit("FULL"), PostgresKit()]


def task(tid: int, state: str = "ready", queue: str = "default", type_: str = "t", **kw: Any) -> Task:
    t = Task(tid, queue, type_, b"\xc0" + tid.to_bytes(4, "big"), 0, State(state), None, 60.0, 3, 0, None, None,
             None, None, T0)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def row(tid: int, state: str = "ready", **kw: Any) -> TaskRecord:
    return task(tid, state, **kw).row()


_event_ids = itertools.count(1)


def event(tid: int, kind: str = "enqueued", state: str = "ready", at: float = T0, detail: str | None = None
          ) -> EventRecord:
    """An event record as the core makes it (numbered last, increasing)."""
    return EventRecord(tid, at, kind, state, None, 0, detail, next(_event_ids))


def read(*events: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The events as a timeline compares them: without their ids (``EventRecord.as_dict``)."""
    return [EventRecord(*e).as_dict() for e in events]


def timeline(store: Store, task_id: int) -> list[dict[str, Any]]:
    """``store.events(task_id)`` without the event ids (compare with ``read``)."""
    return [e.as_dict() for e in store.events(task_id)]


class Done:
    """Records ``on_done`` calls (from whatever thread the store uses) in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, BaseException | None]] = []
        self.seen: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.cond = threading.Condition()

    def cb(self, tag: Any, then: Callable[[], Any] | None = None) -> Callable[[BaseException | None], None]:
        """An ``on_done`` recording ``tag``; ``then()`` runs inside it and its value goes in ``self.seen``."""
        def on_done(err: BaseException | None) -> None:
            if then is not None:
                self.seen.append(then())
            with self.cond:
                self.calls.append((tag, err))
                self.threads.append(threading.current_thread())
                self.cond.notify_all()
        return on_done

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[Any, BaseException | None]]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.calls) >= n, timeout)
        assert ok, f"only {len(self.calls)} of {n} batches were reported"
        return self.calls

    def errors(self) -> list[BaseException | None]:
        return [e for _, e in self.calls]


def commit(store: Store, batch: Batch, timeout: float = 10.0) -> BaseException | None:
    """Submit ``batch`` and wait for its ``on_done``; return the error it got."""
    d = Done()
    batch.on_done = d.cb(0)
    store.submit(batch)
    return d.wait(1, timeout)[0][1]


@contextlib.contextmanager
def opened(open_store: OpenStore, path: Path, start: bool = False) -> Iterator[Store]:
    s = open_store(path)
    if start:
        s.start()
    try:
        yield s
    finally:
        s.close()


def page_all(store: Store, limit: int, **filters: Any) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(1000):
        page = store.list_tasks(limit=limit, cursor=cursor, **filters)
        assert len(page) <= limit
        seen += [r.id for r in page]
        if not page:
            return seen
        cursor = page[-1].id
    raise AssertionError("paging does not end")
