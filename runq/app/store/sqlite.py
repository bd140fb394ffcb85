"""SQLite persistence (``SQLiteStore``, the ``Store`` of base.py): one writer thread with group commit, and a
read-only reader.

Theory of operation
-------------------
The database is in WAL mode. One dedicated thread owns the write connection (the thread, its queue and
``_report`` are writer.py's ``GroupWriter``, shared with the PostgreSQL store).
``submit(batch)`` puts a ``Batch`` on its queue and returns at once; the thread
takes *every* batch waiting, writes them all in one ``BEGIN IMMEDIATE ...
COMMIT`` (group commit), and then calls each batch's ``on_done(error)``, in
order and all in one call of the ``notify`` function it was given (the trio
server passes its token's ``run_sync_soon``, so callbacks run in the trio
thread). An enqueue is
acknowledged only from ``on_done(None)``: acknowledged tasks survive ``kill -9``
(``synchronous=NORMAL``) or power loss (``synchronous=FULL``).

Within one transaction the last row of a task wins (rows are upserts of the
whole task), events are appended in order.

``commit_here(batches)`` commits in the calling thread instead, when the writer
is idle (it holds a lock while it commits): the server does so for small
batches, which saves two thread wake-ups per commit (docs in the server).

If a commit fails (disk full, database locked past ``busy_timeout``), the
transaction is rolled back, every batch in it gets the error, and the writer
goes on with the next batches: nothing is silently dropped.

The writer thread checkpoints the WAL itself (``_checkpoint``): every ~1,000 pages estimated from the rows
committed, or once the ``-wal`` file is past ``WAL_LIMIT`` bytes (big payloads), and SQLite cuts the file
back to that size when the WAL starts over (``journal_size_limit``, docs/operations.md).

Reads (``get_task``, ``list_tasks``, ``events``, ...) use a second connection
opened read-only; the caller serialises them (one thread at a time). Their SQL
is queries.py's (the offline dashboard reads with it too); rows come back as the
records of runq/app/core/records.py, made in C (``make_task``: no per-row Python);
``load`` streams plain ``TaskRow`` tuples (records.py says why).

A ``SQLiteStore`` is the only writer of its file: it holds an exclusive ``flock`` on
``<path>-lock`` while open, and a second one on the same file (a second
``runq serve --db`` on it) is refused with ``StoreInUse`` before it reads or
writes anything. Two servers on one file would each take the other's running
tasks for crashed ones and run them again, and hand out the same ids. Read-only
readers (``runq tui --db``) take no lock. The lock goes with the process, so a
``kill -9`` leaves none behind. That lock is the store's leadership (base.py):
``leadership()`` answers leader, term 1, from the moment the store opened until
``close``.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..core.records import (
    BREAKER_COLUMNS,
    EVENT_ROW_COLUMNS,
    LIMIT_COLUMNS,
    NEW_COLUMNS,
    REQUEST_COLUMNS,
    SCHEDULE_COLUMNS,
    SERVER_EVENT_COLUMNS,
    TASK_COLUMNS,
    BreakerRecord,
    DeadFilter,
    EventRecord,
    LimitKey,
    LimitRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
    TaskRecord,
    TaskRow,
    make_breaker,
    make_event,
    make_limit,
    make_request,
    make_schedule,
    make_server_event,
    make_task,
)
from ..errors import StoreError, StoreInUse
from . import queries
from .base import Batch, Leadership, Notify, StoreStats
from .principals import PrincipalStore
from .schema import FINAL_STATE_NAMES, LIVE_STATE_NAMES, migrate
from .writer import GroupWriter, merge_batches

__all__ = ["Batch", "SQLiteStore", "StoreError", "StoreInUse", "StoreStats"]

log = logging.getLogger("runq.store")

class _MultiInsert:
    """One INSERT statement per chunk of rows (``VALUES (...), (...), ...``) instead of one per row.

    Why: ``executemany`` releases and re-takes the GIL around every row's ``sqlite3_step``; while the trio
    loop thread holds the GIL, each re-take waits (the convoy effect), so the writer crawled exactly when
    the server was busiest (measured in-process with a busy Python thread beside it: 640 us/row with
    ``executemany``, 19 us/row with 512-row statements; 2.9 vs 2.2 us/row with no contention). Chunks are
    powers of two up to ``MAX_ROWS`` so that at most ten distinct statements per table ever exist and all
    stay in sqlite3's statement cache.
    """

    MAX_ROWS = 512  # x 18 columns = 9,216 parameters, under SQLite's default limit of 32,766

    def __init__(self, table: str, columns: tuple[str, ...], suffix: str = "") -> None:
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        self._row = "(" + ", ".join("?" * len(columns)) + ")"
        self._suffix = suffix
        self._sql: dict[int, str] = {}

    def _statement(self, n: int) -> str:
        sql = self._sql.get(n)
        if sql is None:
            sql = self._sql[n] = self._head + ", ".join([self._row] * n) + self._suffix
        return sql

    def run(self, conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
        rows = rows if isinstance(rows, list) else list(rows)
        if len(rows) == 1:  # (a lone request's commit)
            conn.execute(self._statement(1), rows[0])
            return
        i, total = 0, len(rows)
        while i < total:
            n = self.MAX_ROWS
            while n > total - i:
                n >>= 1
            conn.execute(self._statement(n), list(_flatten(rows[i:i + n])))
            i += n


_COLS = queries.TASK_COLUMNS_SQL
_flatten = itertools.chain.from_iterable
_UPSERT = _MultiInsert("tasks", TASK_COLUMNS,
                       " ON CONFLICT(id) DO UPDATE SET " + ", ".join(f"{c}=excluded.{c}" for c in TASK_COLUMNS[1:]))
_INSERT_NEW = _MultiInsert("tasks", NEW_COLUMNS)
_INSERT_EVENT = _MultiInsert("events", EVENT_ROW_COLUMNS)
_UPSERT_REQUEST = _MultiInsert("requests", REQUEST_COLUMNS,
                               " ON CONFLICT(id) DO UPDATE SET answer = excluded.answer, seqs = excluded.seqs, "
                               "digests = excluded.digests")
_UPSERT_SCHEDULE = (f"INSERT INTO schedules ({', '.join(SCHEDULE_COLUMNS)}) VALUES ({', '.join('?' * len(SCHEDULE_COLUMNS))})"
                    " ON CONFLICT(name) DO UPDATE SET "
                    + ", ".join(f"{c}=excluded.{c}" for c in SCHEDULE_COLUMNS[1:]))

_INSERT_SERVER_EVENT = _MultiInsert("server_events", SERVER_EVENT_COLUMNS)
_UPSERT_LIMIT = (f"INSERT INTO limits ({', '.join(LIMIT_COLUMNS)}) VALUES ({', '.join('?' * len(LIMIT_COLUMNS))}) "
                 "ON CONFLICT(scope, name, key) DO UPDATE SET "
                 + ", ".join(f"{c}=excluded.{c}" for c in LIMIT_COLUMNS[3:]))
_DELETE_LIMIT = "DELETE FROM limits WHERE scope = ? AND name = ? AND key = ?"
_UPSERT_BREAKER = (f"INSERT INTO breakers ({', '.join(BREAKER_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(BREAKER_COLUMNS))}) ON CONFLICT(type) DO UPDATE SET "
                   + ", ".join(f"{c}=excluded.{c}" for c in BREAKER_COLUMNS[1:]))
_DELETE_BREAKER = "DELETE FROM breakers WHERE type = ?"


def _lock(path: str) -> int:
    """Take the exclusive lock of ``path``'s writer (see the module docstring); return its descriptor.

    A separate ``-lock`` file, not the database: closing any descriptor of the database file would drop
    the POSIX locks SQLite holds on it in this process.
    """
    fd = os.open(f"{os.path.realpath(path)}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # (a symlink too)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise StoreInUse(f"database {path} is in use by another runq server (two servers on one file would "
                             "run each other's tasks again); stop it first, or use another --db") from None
        raise
    return fd


#: WAL pages (estimated) between two checkpoints: SQLite's own default
_CHECKPOINT_EVERY = 1000
#: bytes of ``-wal`` file above which a checkpoint is due whatever the page estimate says (big payloads: the
#: estimate counts rows, not bytes), and the size SQLite cuts the file back to when it starts the WAL over
#: (``PRAGMA journal_size_limit``; without it the file keeps the size of its largest burst for ever)
WAL_LIMIT = 32 * 1024 * 1024
_BUSY_MS = 5000  # how long the writer waits for another program's write lock


def _call(fn: Callable[[], None]) -> None:
    fn()


class SQLiteStore(GroupWriter):
    """A runq database file: the SQLite implementation of ``Store`` (base.py); its writer thread is
    writer.py's ``GroupWriter``.

    Args:
        path: the SQLite file (created if missing).
        synchronous: ``NORMAL`` (survives a process crash) or ``FULL`` (survives power loss).
        notify: how the writer thread runs ``on_done`` callbacks; default: call them in the thread.
    """

    def __init__(self, path: str, synchronous: str = "NORMAL",
                 notify: Notify | None = None) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = path
        self.synchronous = synchronous.upper()
        self._init_writer(notify)
        self._wal_pages = 0
        #: a checkpoint is due once the ``-wal`` file is larger than this (``WAL_LIMIT``; tests set less)
        self.wal_limit = WAL_LIMIT
        self._wal_file = path + "-wal"
        self._wal_seen = 0  # the -wal file's size when ``_wal_grown`` last asked for a checkpoint (0: none since)
        self._reader: sqlite3.Connection | None = None
        self._lock_fd = _lock(path)
        try:
            self.conn = self._connect()
            self.migrated_from = migrate(self.conn)
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    # ------------------------------------------------------------------ leadership
    def leadership(self) -> Leadership:
        """Always the leader, term 1, while open: the exclusive lock taken when it opened is the leadership
        (a second store on the file was refused with ``StoreInUse``). After ``close``: not the leader."""
        if self._lock_fd < 0:
            return Leadership(False, 1, "nobody (this store is closed)")
        return Leadership(True, 1, f"the lock on {os.path.realpath(self.path)}-lock (pid {os.getpid()})")

    def take_leadership(self) -> Leadership:
        """As ``leadership``: a SQLite store leads from its open (there is no lease to take)."""
        return self.leadership()

    def advertise(self, address: str) -> None:
        """Nothing to do: no standby reads a SQLite file's leader (the file lock keeps a second server out)."""

    @property
    def can_commit_inline(self) -> bool:
        """With ``synchronous=FULL`` a commit waits for an fsync: not in the caller's thread."""
        return self.synchronous == "NORMAL"

    # ------------------------------------------------------------------ startup
    def load(self) -> tuple[Iterator[TaskRow], list[str], int]:
        """Return (live task rows in id order, paused queue names, next id).

        The rows are streamed (a million queued tasks never sit in one list) from
        a connection of their own, closed when the iterator is exhausted; consume
        it before starting the writer.
        """
        path = self.path

        def rows() -> Iterator[TaskRow]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            try:
                conn.execute("PRAGMA cache_size=-8192")
                streams = []
                for state in LIVE_STATE_NAMES:
                    cur = conn.execute(f"SELECT {_COLS} FROM tasks WHERE state = ? ORDER BY id", (state,))
                    first = cur.fetchone()
                    if first is not None:
                        streams.append((first, cur))
                if len(streams) == 1:  # the usual restart: one state holds all (a cursor iterates in C)
                    first, cur = streams[0]
                    yield first
                    yield from cur
                else:  # rows start with their unique id, so tuple order is id order
                    yield from heapq.merge(*(itertools.chain((first,), cur) for first, cur in streams))
            finally:
                conn.close()

        paused = [name for (name,) in self.conn.execute("SELECT name FROM queues WHERE paused = 1")]
        (max_id,) = self.conn.execute("SELECT max(id) FROM tasks").fetchone()
        (meta_next,) = self.conn.execute("SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'next_id'").fetchone()
        return rows(), paused, max((max_id or 0) + 1, meta_next or 0, 1)

    def load_requests(self) -> tuple[list[RequestRecord], int]:
        """Return (the stored enqueue answers, by id; the next free number)."""
        rows = list(map(make_request, self.conn.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests ORDER BY id")))
        return rows, max((r.id + r.seqs for r in rows), default=1)  # (a row numbers its seqs from its id on)

    def next_event_id(self) -> int:
        """The first free event id (the core numbers the events it makes from there)."""
        (max_id,) = self.conn.execute("SELECT max(id) FROM events").fetchone()
        return (max_id or 0) + 1

    def load_limits(self) -> tuple[list[LimitRecord], list[BreakerRecord]]:
        """Return (the stored limits, by scope; the stored breakers, by task type)."""
        limits = list(map(make_limit, self.conn.execute(queries.LIMITS_SQL)))
        breakers = [make_breaker((*r[:-1], bool(r[-1]))) for r in self.conn.execute(queries.BREAKERS_SQL)]
        return limits, breakers

    def load_schedules(self) -> list[ScheduleRecord]:
        """Return the stored schedules, by name (``paused`` as a bool)."""
        sql = f"SELECT {', '.join(SCHEDULE_COLUMNS)} FROM schedules ORDER BY name"
        return [rec._replace(paused=bool(rec.paused)) for rec in map(make_schedule, self.conn.execute(sql))]

    # ------------------------------------------------------------------ writer (start, submit: writer.py)
    def _before_start(self) -> None:
        self.conn.execute("PRAGMA busy_timeout=0")  # (the waits are _begin's)
        self.conn.execute("PRAGMA wal_autocheckpoint=0")  # (the writer thread checkpoints: _checkpoint)
        self.conn.execute(f"PRAGMA journal_size_limit={self.wal_limit}")

    def close(self) -> None:
        """Commit what is queued, stop the writer, close both connections."""
        self._stop_writer()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # (after every connection: the next server may start now)
            self._lock_fd = -1

    def _after_commits(self, asked: bool) -> None:
        """A checkpoint when one is due, or ``asked`` (by ``commit_here``, which has seen that one is due)."""
        if asked or self._wal_pages >= _CHECKPOINT_EVERY or self._wal_grown():
            with self._writing:
                self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database file (writer thread, ``_writing`` held).

        SQLite's automatic checkpoint is off on the write connection: it would run inside whichever commit
        crossed its threshold, a commit ``commit_here`` may make in the server's loop thread, stalling it
        for milliseconds. Here it runs beside the loop, every ``_CHECKPOINT_EVERY`` pages (estimated), or
        when the ``-wal`` file has grown past ``wal_limit`` (``_wal_grown``).

        PASSIVE: it never waits for a reader (``runq tui --db``, the server's history reads). Once it has
        copied every frame, the next commit starts the WAL over from its beginning and SQLite cuts the file
        back to ``wal_limit`` (``journal_size_limit``). A reader in a long read transaction keeps the frames
        it reads: the file grows meanwhile, and each further ``wal_limit / 4`` of growth tries again.
        """
        self._wal_pages = 0
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # (a reader holding old pages: the next one goes further)
            log.warning("WAL checkpoint failed: %s", exc)

    def commit_here(self, batches: list[Batch]) -> bool:
        """Commit ``batches`` in the calling thread, their ``on_done`` called here too, if the writer thread
        is not committing at this moment; return False (nothing done) if it is.

        The caller must know that every batch it submitted before has been reported (so that batches
        still commit in order); the server checks that.
        """
        if not self._writing.acquire(blocking=False):
            return False
        try:
            # Another program holding the database's write lock must not freeze the caller (the server's
            # loop) for the busy timeout: try once (the connection's own busy timeout is 0 once started),
            # and leave it to the writer thread, which waits.
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            self.commit(batches, notify=_call, begun=True)
        finally:
            self._writing.release()
        if self._wal_pages >= _CHECKPOINT_EVERY or self._wal_grown():
            self._ask()  # (the writer thread does it: _after_commits)
        return True

    def _wal_grown(self) -> bool:
        """Whether the ``-wal`` file has grown past ``wal_limit`` (then again each time it has grown by another
        quarter of it, while a reader keeps the checkpoints from starting the WAL over): the page estimate
        counts rows, and one row of a megabyte is 256 pages (docs/operations.md). One ``stat`` per commit
        (about a microsecond)."""
        try:
            size = os.stat(self._wal_file).st_size
        except OSError:
            return False
        if size <= self.wal_limit:
            self._wal_seen = 0  # (cut back, or never past it: the next growth past the limit asks at once)
            return False
        if size - self._wal_seen < self.wal_limit // 4:
            return False
        self._wal_seen = size
        return True
    def commit(self, batches: list[Batch], notify: Callable[[Callable[[], None]], None] | None = None,
               begun: bool = False) -> BaseException | None:
        """Write ``batches`` in one transaction and report to each through ``notify`` (default: the store's).

        Only one thread at a time: the writer thread, or ``commit_here``'s caller (the lock ``_writing``).
        ``begun``: the caller has begun the transaction (``BEGIN IMMEDIATE``).
        """
        m = merge_batches(batches)
        rows, new_rows, events, requests, prune = m.rows, m.new_rows, m.events, m.requests, m.prune
        t0 = time.perf_counter()
        error: BaseException | None = None
        conn = self.conn
        pruned = 0
        try:
            if not begun:
                self._begin()
            try:
                if new_rows:
                    _INSERT_NEW.run(conn, new_rows)
                if rows:
                    _UPSERT.run(conn, list(rows.values()))
                if events:
                    _INSERT_EVENT.run(conn, events)
                if requests:
                    _UPSERT_REQUEST.run(conn, list(requests.values()))
                if m.requests_below:
                    conn.execute("DELETE FROM requests WHERE id < ?", (m.requests_below,))
                for name, sched in m.schedules.items():
                    if sched is None:
                        conn.execute("DELETE FROM schedules WHERE name = ?", (name,))
                    else:
                        conn.execute(_UPSERT_SCHEDULE, sched)
                for name, paused in m.queue_ops:
                    conn.execute("INSERT INTO queues (name, paused) VALUES (?, ?) "
                                 "ON CONFLICT(name) DO UPDATE SET paused = excluded.paused", (name, int(paused)))
                if m.limits or m.breakers or m.server_events:
                    self._write_limits(m.limits, m.breakers, m.server_events)
                if prune is not None:
                    pruned = self._prune(prune)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite already rolled back on some errors (SQLITE_FULL)
                    conn.execute("ROLLBACK")
                raise
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, or OverflowError & co. for a value it cannot bind
            error = StoreError(f"commit of {len(rows) + len(new_rows)} task rows and {len(events)} events failed: {exc}")
            self.stats.errors += 1
            self.stats.last_error = str(error)
            log.error("%s", error)
        # about the pages this commit added to the WAL: a few per commit, one more per ~30 rows
        self._wal_pages += 3 + (len(rows) + len(new_rows) + len(events) + len(requests)) // 30
        return self._report(batches, m, error, t0, pruned, notify)

    def _write_limits(self, limits: list[tuple[LimitKey, LimitRecord | None]],
                      breakers: list[tuple[str, BreakerRecord | None]],
                      server_events: list[ServerEventRecord]) -> None:
        """Write limits and breakers (in order: the last one of a key wins; None deletes it) and append the
        server's events (numbered by SQLite, in order), inside ``commit``'s transaction."""
        conn = self.conn
        for (kind, name, key), lim in limits:
            if lim is None:
                conn.execute(_DELETE_LIMIT, (kind, name, key))
            else:
                conn.execute(_UPSERT_LIMIT, lim)
        for type_, br in breakers:
            if br is None:
                conn.execute(_DELETE_BREAKER, (type_,))
            else:
                conn.execute(_UPSERT_BREAKER, br)
        if server_events:
            _INSERT_SERVER_EVENT.run(conn, server_events)

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, waiting up to ``_BUSY_MS`` for another program's write lock.

        The wait is here, not in SQLite's busy handler (the connection's busy timeout is 0 once the writer
        started), so that ``commit_here`` can try without waiting and without two ``PRAGMA`` statements
        around every commit.
        """
        deadline = time.monotonic() + _BUSY_MS / 1000
        pause = 0.001
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _prune(self, before: float) -> int:
        marks = ",".join("?" * len(FINAL_STATE_NAMES))
        sel = f"SELECT id FROM tasks WHERE state IN ({marks}) AND finished_at < ?"
        args = (*FINAL_STATE_NAMES, before)
        # ids never go back, even when pruning deletes the newest task
        self.conn.execute("INSERT INTO meta (key, value) SELECT 'next_id', max(id) + 1 FROM tasks WHERE true "
                          "ON CONFLICT(key) DO UPDATE SET value = max(CAST(value AS INTEGER), "
                          "CAST(excluded.value AS INTEGER))")
        self.conn.execute(f"DELETE FROM events WHERE task_id IN ({sel})", args)
        cur = self.conn.execute(f"DELETE FROM tasks WHERE id IN ({sel})", args)
        return cur.rowcount

    # ------------------------------------------------------------------ reads
    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False,
                                           isolation_level=None, timeout=5.0)
            self._reader.execute("PRAGMA busy_timeout=5000")
        return self._reader

    def principals(self) -> PrincipalStore:
        """The principal tables, on a connection of their own (base.py)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return PrincipalStore(conn)

    def get_task(self, task_id: int) -> TaskRecord | None:
        """Return the task, or ``None``."""
        row = self.reader.execute(queries.TASK_BY_ID_SQL, (task_id,)).fetchone()
        return None if row is None else make_task(row)

    def events(self, task_id: int) -> list[EventRecord]:
        """Return the task's events in order, its unstored ``enqueued`` event rebuilt (``queries.timeline``)."""
        conn = self.reader
        stored = list(map(make_event, conn.execute(queries.EVENTS_SQL, (task_id,))))
        if not queries.needs_enqueued(stored):
            return stored
        created = next((at for (at,) in conn.execute(queries.CREATED_AT_SQL, (task_id,))), None)
        return queries.timeline(task_id, stored, created)

    def list_tasks(self, state: str | None = None, queue: str | None = None, type: str | None = None,
                   limit: int = 100, cursor: int | None = None, owner: str | None = None) -> list[TaskRecord]:
        """Return a page of tasks, newest first; ``cursor`` is the last id of the previous page."""
        sql, args = queries.task_list_query(state, queue, type, limit, cursor, owner=owner)
        return list(map(make_task, self.reader.execute(sql, args)))

    def dead_tasks(self, f: DeadFilter, limit: int, cursor: int | None = None,
                   oldest_first: bool = False) -> list[TaskRecord]:
        """A page of dead tasks that ``f`` lets through (``queries.dead_query``)."""
        sql, args = queries.dead_query(f, limit, cursor, oldest_first)
        return list(map(make_task, self.reader.execute(sql, args)))

    def server_events(self, since: int | None = None, limit: int = 100) -> list[ServerEventRecord]:
        """Events of no task, oldest first: the ``limit`` latest, or the first ``limit`` after id ``since``."""
        sql, args = queries.server_events_query(since, limit)
        return list(map(make_server_event, self.reader.execute(sql, args)))

    def count_by_state(self) -> dict[tuple[str, str], int]:
        """Return {(queue, state): count} over every stored task."""
        return {(q, s): n for q, s, n in self.reader.execute(
            "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state")}

    def check_writable(self) -> None:
        """Raise ``StoreError`` unless the database accepts a write right now."""
        try:
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"database not writable: {exc}") from exc
