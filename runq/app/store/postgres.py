"""PostgreSQL persistence (``PostgresStore``, the ``Store`` of base.py) through psycopg 3, used synchronously.

Theory of operation
-------------------
Same shape as sqlite.py, and the same writer thread (writer.py's ``GroupWriter``): one writer thread owns the
write connection; ``submit(batch)`` queues a batch and returns; the thread takes every batch waiting and
writes them all in ONE transaction (group commit, the batches merged by writer.py's ``merge_batches``), then
calls each batch's ``on_done`` in order through ``notify``. psycopg's async API does not run under trio, so
the store never touches the trio loop: it is plain threads and blocking calls, as with SQLite.

Writes of a commit, each ONE statement whatever the number of rows: new tasks and events (plain inserts)
with binary ``COPY`` from 64 rows on (``_Copy``), below that and for the upserts (``ON CONFLICT (id) DO
UPDATE``) ``INSERT ... SELECT * FROM unnest(%s::bigint[], %s::text[], ...)``, one array per column
(``_Unnest``). Measured on 10,000 new tasks in one commit (bench/pg_batch.py, figures in docs/postgres.md):
binary COPY ~35 ms, text COPY ~50 ms, unnest ~145 ms, pipelined ``executemany`` ~210 ms, 512-row
``VALUES`` statements ~390 ms. A failed statement rolls the whole transaction back; every batch in it gets
a ``StoreError`` and the writer goes on.

A small commit (no COPY, no prune: a lone enqueue's) runs in psycopg's pipeline mode (``_commit_pipelined``):
BEGIN, the term check and the writes leave in one round trip, COMMIT (or ROLLBACK, if the term moved) in a
second, where it took four (BEGIN, the check, the insert, COMMIT). COPY cannot run in a pipeline, so larger
commits keep the plain transaction, whose extra round trips are small beside their rows.

Who writes: the lease (lease.py has its timing rules, docs/operations.md the whole picture). The one row of
``runq_writer`` holds ``term``, ``holder`` (this store's name, also the ``application_name`` of each of its
connections), ``expires_at`` (by the DATABASE's clock) and ``address`` (where its server serves). A store that
opens tries to take the lease (``take_leadership``): free (no holder: the last one stopped cleanly) or
expired (``expires_at <= clock_timestamp()``), it locks the row ``FOR UPDATE`` and writes itself there with
``term + 1`` and ``expires_at = clock_timestamp() + lease``; held, the store does not lead, and its server
waits as a standby, trying again when the expiry it read has passed (``runq migrate``, transfer.py, refuses
such a database at once instead). A holder cut off from PostgreSQL in the middle of a commit still holds its
row lock: the successor ends that holder's backends (by application_name; the same role, or
pg_signal_backend, may) and takes the lease at its next try.

Renewals run in a thread of their own (``runq-lease``) on a connection of their own, every lease / 3: a long
commit in the writer thread (a batch of 100,000 rows, a prune slice) must not delay them, and they do not wait
for one either (a commit locks the row ``FOR KEY SHARE``, an UPDATE of a non-key column ``FOR NO KEY UPDATE``:
the two do not conflict; a take's ``FOR UPDATE`` conflicts with both). A renewal that fails is tried again
every 0.25 s; the lease is LOST for good once its local deadline passes (the start of the last successful
renewal + lease - margin, on this process's monotonic clock), or a renewal or a commit finds the term moved.
From then on ``leadership()`` says so (the server steps down), every commit and prune slice fails before it
touches the database, and ``close`` writes nothing and does not wait for a writer thread stuck on a
connection PostgreSQL does not answer. The database keeps fencing on its own: every transaction of the
writer (the plain one, the pipelined one, a prune slice) reads the row ``FOR KEY SHARE`` first and fails
unless the term is still its own (``_check_term``, which then marks the lease lost). A commit that lost the
connection fails (whether PostgreSQL committed it before the connection broke is unknown, so it is never
retried silently); the next commit connects again and checks the term. ``close`` of a leading store clears
the holder and the expiry, so that a standby takes over at its next try.

Pruning (pg_prune.py): a batch's ``prune_before`` deletes one slice of at most ``prune_slice`` finished tasks
(and their events) in its commit; the rest of that prune goes on in slices of their own between the group
commits that follow (``_after_commits``: one slice after each round of commits, more while nothing waits),
each slice a transaction fenced like a commit (none once the lease is lost, by the local deadline; the term
in the database). Autovacuum settings per table keep the dead tuples reclaimed behind it.

Errors: a lock wait past ``lock_timeout`` (5 s on the writer connection, like SQLite's busy timeout) is
reported as "database locked"; PostgreSQL's "insufficient resources" class (53: disk full, out of memory)
as "database full"; anything else with PostgreSQL's text.

``synchronous`` does not apply: durability is the database's (``synchronous_commit``, on by default: an
acknowledged task survives a crash of runq AND of PostgreSQL). ``can_commit_inline`` is False: a commit
waits for the network and the server's WAL flush, never in the trio thread.

Reads (``get_task``, ``events``, ``list_tasks``, ``server_events``) use a second connection (autocommit);
the caller serialises them. ``load`` streams the live tasks through a server-side cursor on a connection of
its own. The SQL is queries.py's with ``%s`` placeholders.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

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
from ..errors import SchemaTooNew, StoreError
from . import queries
from .base import Batch, Leadership, Notify
from .lease import DEFAULT_LEASE, LeaseTiming, WriterLease, may_take, standby_wait
from .pg_prune import SLICE_TASKS, prune_slice
from .pg_schema import BOOTSTRAP, LEASE_COLUMNS, PG_MIGRATIONS, PG_TYPES
from .principals import PrincipalStore
from .schema import LIVE_STATE_NAMES, SCHEMA_VERSION
from .writer import GroupWriter, Merged, merge_batches

__all__ = ["PostgresStore"]

log = logging.getLogger("runq.store")

#: how long the writer waits for a row lock another session holds before the commit fails ("locked")
LOCK_TIMEOUT_MS = 5000


def _cols(cols: Iterable[str]) -> str:
    return ", ".join(f'"{c}"' for c in cols)


def _pg(sql: str) -> str:
    """queries.py's SQL with psycopg's placeholder."""
    return sql.replace("?", "%s")


class _Unnest:
    """One statement for any number of rows: ``INSERT ... SELECT * FROM unnest(<one array per column>)``."""

    def __init__(self, table: str, columns: tuple[str, ...], suffix: str = "") -> None:
        types = PG_TYPES[table]
        arrays = ", ".join(f"%s::{types[c]}[]" for c in columns)
        self.sql = f"INSERT INTO {table} ({_cols(columns)}) SELECT * FROM unnest({arrays}){suffix}"
        self.width = len(columns)

    def run(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        cur.execute(self.sql, [list(c) for c in zip(*rows)] if rows else [[]] * self.width)


class _Copy(_Unnest):
    """Plain inserts (new tasks, events): ``COPY ... FROM STDIN (FORMAT BINARY)`` from ``MIN_ROWS`` rows on,
    ``_Unnest``'s one statement below (a COPY costs one more round trip: its start, then its data and end).
    Measured on 10,000 new tasks (bench/pg_batch.py, docs/postgres.md): binary COPY ~4x faster than unnest."""

    MIN_ROWS = 64

    def __init__(self, table: str, columns: tuple[str, ...]) -> None:
        super().__init__(table, columns)
        self.copy = f"COPY {table} ({_cols(columns)}) FROM STDIN (FORMAT BINARY)"
        self.types = [PG_TYPES[table][c] for c in columns]

    def run(self, cur: psycopg.Cursor[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        if len(rows) < self.MIN_ROWS:
            super().run(cur, rows)
            return
        with cur.copy(self.copy) as cp:
            cp.set_types(self.types)
            for r in rows:
                cp.write_row(r)


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    rest = [c for c in columns if c not in key]
    return (f" ON CONFLICT ({_cols(key)}) DO UPDATE SET "
            + ", ".join(f'"{c}" = excluded."{c}"' for c in rest))


_INSERT_NEW = _Copy("tasks", NEW_COLUMNS)
_UPSERT = _Unnest("tasks", TASK_COLUMNS, _upsert("tasks", TASK_COLUMNS, ("id",)))
_INSERT_EVENT = _Copy("events", EVENT_ROW_COLUMNS)
_UPSERT_REQUEST = _Unnest("requests", REQUEST_COLUMNS, _upsert("requests", REQUEST_COLUMNS, ("id",)))
_SE_COLUMNS = SERVER_EVENT_COLUMNS[1:]  # (the id is numbered by the database, in order)
_INSERT_SERVER_EVENT = (f"INSERT INTO server_events ({_cols(_SE_COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(_SE_COLUMNS))})")
_UPSERT_SCHEDULE = (f"INSERT INTO schedules ({_cols(SCHEDULE_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(SCHEDULE_COLUMNS))})"
                    + _upsert("schedules", SCHEDULE_COLUMNS, ("name",)))
_UPSERT_LIMIT = (f"INSERT INTO limits ({_cols(LIMIT_COLUMNS)}) VALUES ({', '.join(['%s'] * len(LIMIT_COLUMNS))})"
                 + _upsert("limits", LIMIT_COLUMNS, ("scope", "name", "key")))
_DELETE_LIMIT = "DELETE FROM limits WHERE scope = %s AND name = %s AND key = %s"
_UPSERT_BREAKER = (f"INSERT INTO breakers ({_cols(BREAKER_COLUMNS)}) "
                   f"VALUES ({', '.join(['%s'] * len(BREAKER_COLUMNS))})"
                   + _upsert("breakers", BREAKER_COLUMNS, ("type",)))
_DELETE_BREAKER = "DELETE FROM breakers WHERE type = %s"
_LIVE_SQL = (f"SELECT {queries.TASK_COLUMNS_SQL} FROM tasks WHERE state IN "
             f"({', '.join(repr(s) for s in LIVE_STATE_NAMES)}) ORDER BY id")
_LIMITS_SQL = f"SELECT {_cols(LIMIT_COLUMNS)} FROM limits ORDER BY scope, name, key"
_BREAKERS_SQL = f"SELECT {_cols(BREAKER_COLUMNS)} FROM breakers ORDER BY type"
_SCHEDULES_SQL = f"SELECT {_cols(SCHEDULE_COLUMNS)} FROM schedules ORDER BY name"
#: the fence of every commit: FOR KEY SHARE, which waits for a take (FOR UPDATE) but not for a renewal (an
#: UPDATE of no key column takes FOR NO KEY UPDATE, which it does not conflict with)
_TERM_SQL = "SELECT term FROM runq_writer WHERE id = 1 FOR KEY SHARE"


class _Stuck(Exception):
    """The lease expired, and its holder's lock on the row is still held (``PostgresStore._end_stuck``)."""

    def __init__(self, holder: str | None) -> None:
        super().__init__(holder)
        self.holder = holder


def _one(conn: psycopg.Connection[Any], sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    """The one row of a query that always returns one."""
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)


def _why(exc: BaseException) -> str:
    """The reason of a failed commit, in the words the operator (and the contract suite) looks for."""
    if isinstance(exc, pg_errors.LockNotAvailable):
        return f"database locked (another session holds a lock past lock_timeout): {exc}"
    if isinstance(exc, pg_errors.InsufficientResources):
        return f"database full (PostgreSQL is out of disk or memory): {exc}"
    return str(exc)


class PostgresStore(GroupWriter):
    """A runq database in PostgreSQL: the PostgreSQL implementation of ``Store`` (base.py); its writer thread
    is writer.py's ``GroupWriter``.

    Args:
        url: a ``postgresql://`` (or ``postgres://``) URL, as libpq takes it.
        synchronous: accepted for the same call as SQLite's; durability is PostgreSQL's (module docstring).
        notify: how the writer thread runs ``on_done`` callbacks; default: call them in the thread.
        lease: seconds of the writer lease (lease.py; ``runq serve --lease``).

    A store opened while another server holds the lease does not lead (``leadership()``); ``take_leadership``
    tries again.

    Raises:
        SchemaTooNew: the database was written by a newer runq.
        StoreError: the database cannot be reached (the text says why).
        ValueError: ``lease`` out of its bounds (lease.py).
    """

    def __init__(self, url: str, synchronous: str = "NORMAL", notify: Notify | None = None,
                 lease: float = DEFAULT_LEASE) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.timing = LeaseTiming(lease)
        self.url = url
        self._init_writer(notify)
        self._reader: psycopg.Connection[Any] | None = None
        self._open = False
        self._closed = False
        self._fenced = False
        #: this store's name in the lease row, and in its connections' application_name (what a successor
        #: terminates when the lease expired and a backend of this store still holds a lock)
        self.holder = f"{socket.gethostname()[:24]} pid {os.getpid()} {secrets.token_hex(3)}"
        self._app = f"runq {self.holder}"
        self.term = 0
        self._lease = WriterLease(self.timing)
        self._lease_lock = threading.Lock()
        self._address: str | None = None
        self._renewer: threading.Thread | None = None
        self._renew_stop = threading.Event()
        self._renew_wake = threading.Event()  # (set: renew now, or see that ``_renew_stop`` is set)
        #: the leader as last read by this store while it does not lead: (holder, address, seconds to expiry)
        self._other: tuple[str | None, str | None, float | None] = (None, None, None)
        self.migrated_from: int | None = None
        #: small commits in pipeline mode (``_commit_pipelined``; False: the plain transaction, for the comparison
        #: of bench/pg_batch.py ``--lone``)
        self.pipeline = True
        #: tasks one prune slice deletes at most (pg_prune.py)
        self.prune_slice = SLICE_TASKS
        self._prune_before: float | None = None  # a prune not finished yet: its cutoff
        self.conn = self._connect()
        try:
            self.conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            self._bootstrap()
            self._check_version()
            self.take_leadership()
        except BaseException:
            self.conn.close()
            raise
        self._open = True

    def _connect(self, autocommit: bool = True, connect_timeout: int | None = None) -> psycopg.Connection[Any]:
        try:
            kw: dict[str, Any] = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
            return psycopg.connect(self.url, autocommit=autocommit, application_name=self._app, **kw)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc

    # ------------------------------------------------------------------ who writes: the lease
    def _bootstrap(self) -> None:
        """Create the two tables of runq's own (the version, the lease row), and the lease's columns in a
        database of an older runq (pg_schema.LEASE_COLUMNS)."""
        conn = self.conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(7700012)")  # (two openers create the tables once)
            for stmt in BOOTSTRAP.split(";"):
                conn.execute(stmt)
            have = {name for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'runq_writer'::regclass AND attnum > 0 "
                "AND NOT attisdropped")}
            for name, type_ in LEASE_COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE runq_writer ADD COLUMN {name} {type_}")

    def _check_version(self) -> None:
        (version,) = _one(self.conn, "SELECT version FROM runq_schema WHERE id = 1")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"database schema version {version} is newer than this runq ({SCHEMA_VERSION})")

    def _try_take(self) -> bool:
        """One try to take the lease (lease.py ``may_take``); True if this store holds it now."""
        conn = self.conn
        started = time.monotonic()
        with conn.transaction():
            term, holder, expires_in, address, pid, began = _one(
                conn, "SELECT term, holder, extract(epoch FROM expires_at - clock_timestamp())::float8, address, "
                "backend_pid, backend_start FROM runq_writer WHERE id = 1")
            self._other = (holder, address, expires_in)
            # (a row of a runq before the lease names its writer's connection: alive, it writes. A role without
            # pg_read_all_stats sees another role's backend_start as NULL: then the pid alone says it is alive)
            alive = holder is not None and expires_in is None and pid is not None and _one(
                conn, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s "
                "AND (backend_start = %s OR backend_start IS NULL))", (pid, began))[0]
            if not may_take(holder, expires_in, alive):
                return False
            # The row lock: a commit of the old holder still under way (FOR KEY SHARE) ends first, and is in what
            # this store reads back. A holder cut off from PostgreSQL in the middle of a commit keeps its lock
            # until PostgreSQL notices: its backends are ended below, and the next try takes the lease.
            conn.execute("SET LOCAL lock_timeout = 1000")
            try:
                locked = conn.execute(
                    "SELECT term, holder, extract(epoch FROM expires_at - clock_timestamp())::float8 "
                    "FROM runq_writer WHERE id = 1 FOR UPDATE").fetchone()
            except pg_errors.LockNotAvailable:
                locked = None
            if locked is None:
                raise _Stuck(holder)
            term, holder, expires_in = locked
            if not may_take(holder, expires_in, alive):
                return False
            conn.execute(
                "UPDATE runq_writer SET term = term + 1, holder = %s, address = %s, "
                "expires_at = clock_timestamp() + make_interval(secs => %s), backend_pid = pg_backend_pid(), "
                "backend_start = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) "
                "WHERE id = 1", (self.holder, self._address, self.timing.lease))
        self.term = term + 1
        with self._lease_lock:
            self._lease.renewed(started)
        self._other = (self.holder, self._address, self.timing.lease)
        log.info("took the writer lease of %s: term %d (previous holder %s)", self._safe_url(), self.term,
                 holder or "none")
        return True

    def _end_stuck(self, holder: str | None) -> None:
        """The lease expired and a backend of its holder still holds the row lock (the holder was cut off from
        PostgreSQL in the middle of a commit): end that holder's backends, so that the next try takes it."""
        if holder is None:
            return
        try:
            ended = self.conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (f"runq {holder}",)).fetchone()
        except psycopg.Error as exc:  # (no right to signal that role's backends: wait for PostgreSQL to end them)
            log.warning("the expired writer %s still holds the lease row's lock and could not be ended: %s",
                        holder, exc)
            return
        log.warning("the expired writer %s still held the lease row's lock: ended %s of its connections", holder,
                    ended[0] if ended else 0)

    def take_leadership(self) -> Leadership:
        """Try once to take the lease, unless held already; then migrate the schema and start renewing."""
        if self._leads_now():
            return self.leadership()
        if self._fenced or self._lease.lost is not None:
            return self.leadership()  # (a store that lost the lease never takes it again: its server steps down)
        try:
            if self.conn.closed:
                self.conn = self._connect(connect_timeout=max(2, int(self.timing.lease)))
                self.conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            taken = self._try_take()
        except _Stuck as stuck:
            self._end_stuck(stuck.holder)
            taken = False
        except (psycopg.Error, StoreError) as exc:  # (PostgreSQL away: a standby keeps waiting)
            log.warning("could not read the writer lease: %s", exc)
            if not self.conn.closed and self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                self.conn.close()
            taken = False
        if taken:
            self.migrated_from = self._migrate()
            self._renewer = threading.Thread(target=self._renew_loop, name="runq-lease", daemon=True)
            self._renewer.start()
        return self.leadership()

    def advertise(self, address: str) -> None:
        """Write ``address`` into the lease row: with a renewal at once while leading, else with the take."""
        self._address = address
        self._renew_wake.set()

    def _renew_loop(self) -> None:
        """The renewer thread: renew the lease every ``renew_every`` on a connection of its own (module
        docstring says why), until ``close``, a lost lease or a moved term."""
        lease = self._lease
        conn: psycopg.Connection[Any] | None = None
        timeout = max(2, int(self.timing.lease / 2))  # (libpq's connect_timeout: whole seconds, at least 2)
        try:
            while True:
                self._renew_wake.wait(lease.renewal_wait(time.monotonic()))
                self._renew_wake.clear()
                if self._renew_stop.is_set():
                    return
                started = time.monotonic()
                with self._lease_lock:
                    if not lease.check(started):
                        return
                try:
                    if conn is None or conn.closed:
                        conn = self._connect(connect_timeout=timeout)
                    row = conn.execute(
                        "UPDATE runq_writer SET expires_at = clock_timestamp() + make_interval(secs => %s), "
                        "address = %s WHERE id = 1 AND term = %s AND holder = %s RETURNING term",
                        (self.timing.lease, self._address, self.term, self.holder)).fetchone()
                except (psycopg.Error, StoreError) as exc:
                    log.warning("renewal of the writer lease failed: %s", exc)
                    if conn is not None:
                        conn.close()
                    with self._lease_lock:
                        lease.renew_failed(time.monotonic())
                    continue
                with self._lease_lock:
                    if row is None:
                        lease.fenced(f"the lease row moved on from term {self.term}: another runq server took over")
                        self._fenced = True
                        return
                    lease.renewed(started)
        finally:
            if conn is not None:
                conn.close()

    def _leads_now(self) -> bool:
        with self._lease_lock:
            return self.term > 0 and not self._fenced and self._lease.check(time.monotonic())

    def _safe_url(self) -> str:
        info = self.conn.info
        return f"postgresql://{info.host}:{info.port}/{info.dbname}"

    def _migrate(self) -> int:
        conn = self.conn
        (version,) = _one(conn, "SELECT version FROM runq_schema WHERE id = 1")
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"database schema version {version} is newer than this runq ({SCHEMA_VERSION})")
        start = version
        while version < SCHEMA_VERSION:
            with conn.transaction():
                for stmt in PG_MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                version += 1
                conn.execute("UPDATE runq_schema SET version = %s WHERE id = 1", (version,))
        return int(start)

    def leadership(self) -> Leadership:
        """The leader, with its term, while its lease holds (renewed in time, term unchanged) and until
        ``close``; else who leads, as last read (no I/O)."""
        if self._closed:
            return Leadership(False, self.term, "nobody (this store is closed)")
        if self.term > 0:
            now = time.monotonic()
            with self._lease_lock:
                valid = not self._fenced and self._lease.check(now)
                lost = self._lease.lost
                left = self._lease.valid_until - now
            if valid:
                return Leadership(True, self.term, f"{self.holder} (runq_writer term {self.term})", self._address,
                                  min(max(left, 0.0), self.timing.retry_every))
            return Leadership(False, self.term, f"another runq server, or none: this store lost its lease ({lost})")
        holder, address, expires_in = self._other
        who = (f"{holder} (its lease ends in {max(expires_in, 0.0):.1f}s unless renewed)"
               if holder is not None and expires_in is not None else holder or "nobody")
        return Leadership(False, self.term, who, address, standby_wait(expires_in, self.timing))

    @property
    def can_commit_inline(self) -> bool:
        """Never: a commit waits for the network and PostgreSQL's WAL flush."""
        return False

    # ------------------------------------------------------------------ startup
    def load(self) -> tuple[Iterator[TaskRow], list[str], int]:
        """Return (live task rows in id order, streamed by a server-side cursor; paused queues; next id)."""
        url = self.url

        def rows() -> Iterator[TaskRow]:
            # (a transaction, not autocommit: a named cursor needs one)
            with psycopg.connect(url, application_name="runq-load") as conn, conn.cursor(name="runq_load") as cur:
                cur.itersize = 5000
                cur.execute(_LIVE_SQL)
                yield from cur

        conn = self.conn
        paused = [name for (name,) in conn.execute("SELECT name FROM queues WHERE paused ORDER BY name")]
        (max_id,) = _one(conn, "SELECT max(id) FROM tasks")
        (meta_next,) = _one(conn, "SELECT coalesce(max(value::bigint), 0) FROM meta WHERE key = 'next_id'")
        return rows(), paused, max((max_id or 0) + 1, meta_next or 0, 1)

    def load_requests(self) -> tuple[list[RequestRecord], int]:
        """Return (the stored enqueue answers, by id; the next free number)."""
        rows = list(map(make_request, self.conn.execute(
            f"SELECT {_cols(REQUEST_COLUMNS)} FROM requests ORDER BY id")))
        return rows, max((r.id + r.seqs for r in rows), default=1)

    def next_event_id(self) -> int:
        """The first free event id."""
        (max_id,) = _one(self.conn, "SELECT max(id) FROM events")
        return int(max_id or 0) + 1

    def load_limits(self) -> tuple[list[LimitRecord], list[BreakerRecord]]:
        """Return (the stored limits, by scope; the stored breakers, by task type)."""
        return (list(map(make_limit, self.conn.execute(_LIMITS_SQL))),
                list(map(make_breaker, self.conn.execute(_BREAKERS_SQL))))

    def load_schedules(self) -> list[ScheduleRecord]:
        """Return the stored schedules, by name."""
        return list(map(make_schedule, self.conn.execute(_SCHEDULES_SQL)))

    # ------------------------------------------------------------------ writer (start, submit: writer.py)
    def close(self) -> None:
        """Commit what is queued, stop the writer and the renewals, give the lease up (a standby takes it at
        once), close the connections. A store that lost its lease writes nothing more: its queued batches fail,
        and a writer thread stuck on a connection that PostgreSQL does not answer is not waited for past 0.5 s
        (a daemon thread: it ends with the process), nor is its connection closed (closing would wait for it)."""
        leading = self._leads_now()
        stopped = self._stop_writer(None if leading else 0.5)
        self._renew_stop.set()
        self._renew_wake.set()
        if self._renewer is not None:
            self._renewer.join(self.timing.lease if leading else 0.5)
            self._renewer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._open and leading and not self.conn.closed:
            try:
                self.conn.execute("UPDATE runq_writer SET holder = NULL, expires_at = NULL, backend_pid = NULL, "
                                  "backend_start = NULL WHERE id = 1 AND term = %s", (self.term,))
            except psycopg.Error as exc:
                log.warning("could not give the writer lease up: %s", exc)
        if stopped:  # (a thread blocked on it holds its lock: closing would wait for it)
            self.conn.close()
        self._open = False
        self._closed = True

    def commit(self, batches: list[Batch], notify: Notify | None = None) -> BaseException | None:
        """Write ``batches`` in one transaction and report to each through ``notify`` (default: the store's).

        One thread at a time (``_writing``, or before ``start``)."""
        m = merge_batches(batches)
        t0 = time.perf_counter()
        error: BaseException | None = None
        pruned = 0
        try:
            if not self._leads_now():  # (the lease lost, by this store's own clock: no write, whatever the database says)
                raise StoreError(f"this server no longer writes the database: {self.leadership().holder}")
            reconnected = self.conn.closed and not self._fenced
            if reconnected:  # (the last commit lost the connection: PostgreSQL restarted, a network cut)
                self.conn = self._connect()
                self.conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
            conn = self.conn
            if (self.pipeline and not reconnected and m.prune is None and len(m.new_rows) < _Copy.MIN_ROWS
                    and len(m.events) < _Copy.MIN_ROWS):
                self._commit_pipelined(m)
            else:
                with conn.transaction(), conn.cursor() as cur:
                    self._check_term(cur.execute(_TERM_SQL).fetchone())
                    if reconnected:  # still its term: the writer row names the new connection
                        cur.execute("UPDATE runq_writer SET backend_pid = pg_backend_pid(), backend_start = "
                                    "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()) "
                                    "WHERE id = 1")
                    self._write(cur, m)
                    if m.prune is not None:
                        pruned = self._prune(cur, m.prune)
        except Exception as exc:  # noqa: BLE001 - psycopg.Error, or a value it cannot adapt
            error = exc if isinstance(exc, StoreError) else StoreError(
                f"commit of {m.task_rows} task rows and {len(m.events)} events failed: {_why(exc)}")
            self.stats.errors += 1
            self.stats.last_error = str(error)
            log.error("%s", error)
        return self._report(batches, m, error, t0, pruned, notify)

    def _check_term(self, row: Any) -> None:
        """Go on only if the writer row (read ``FOR KEY SHARE`` in the transaction) holds this store's term; else
        the lease is lost for good (as when a renewal finds the term moved)."""
        if row is None or row[0] != self.term:
            with self._lease_lock:
                self._fenced = True
                self._lease.fenced(f"the lease row moved on from term {self.term}: another runq server took over")
            raise StoreError(f"this server no longer writes the database: its term {self.term} moved on to "
                             f"{row[0] if row else '?'} (another runq server took over)")

    def _commit_pipelined(self, m: Merged) -> None:
        """A small commit (no ``COPY``, no prune) in TWO round trips instead of four: pipeline mode sends BEGIN,
        the term check and the writes at once, and COMMIT only once the term check came back as this store's
        (else ROLLBACK). The term's row is locked ``FOR KEY SHARE`` by the first statement after BEGIN, as in
        ``commit``: nothing between the check and the COMMIT can move it."""
        conn = self.conn
        try:
            with conn.pipeline() as pipe, conn.cursor() as check, conn.cursor() as cur:
                cur.execute("BEGIN")
                check.execute(_TERM_SQL)
                self._write(cur, m)
                pipe.sync()  # (the one wait before COMMIT: every result so far, errors raised here)
                self._check_term(check.fetchone())
                cur.execute("COMMIT")
        except BaseException:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # (the connection broke: the next commit connects again)
            raise

    def _write(self, cur: psycopg.Cursor[Any], m: Merged) -> None:
        """Every write of a commit, each kind of row in ONE statement where it can be (module docstring)."""
        if m.new_rows:
            _INSERT_NEW.run(cur, m.new_rows)
        if m.rows:
            _UPSERT.run(cur, list(m.rows.values()))
        if m.events:
            _INSERT_EVENT.run(cur, m.events)
        if m.requests:
            _UPSERT_REQUEST.run(cur, list(m.requests.values()))
        if m.requests_below:
            cur.execute("DELETE FROM requests WHERE id < %s", (m.requests_below,))
        for name, sched in m.schedules.items():
            if sched is None:
                cur.execute("DELETE FROM schedules WHERE name = %s", (name,))
            else:
                cur.execute(_UPSERT_SCHEDULE, sched)
        for name, paused in m.queue_ops:
            cur.execute("INSERT INTO queues (name, paused) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused", (name, paused))
        for lim_key, lim in m.limits:
            if lim is None:
                cur.execute(_DELETE_LIMIT, lim_key)
            else:
                cur.execute(_UPSERT_LIMIT, lim)
        for type_, br in m.breakers:
            if br is None:
                cur.execute(_DELETE_BREAKER, (type_,))
            else:
                cur.execute(_UPSERT_BREAKER, br)
        if m.server_events:
            cur.executemany(_INSERT_SERVER_EVENT, [e[1:] for e in m.server_events])

    def _prune(self, cur: psycopg.Cursor[Any], before: float) -> int:
        """The first slice of a prune, in the commit that asked for it; the rest follow between commits."""
        n = prune_slice(cur, before, self.prune_slice)
        self._prune_before = before if n >= self.prune_slice else None
        return n

    def _after_commits(self, asked: bool) -> None:
        """Go on with a prune that one slice did not finish (pg_prune.py): one slice after each round of
        commits, and more while no batch waits. Each slice is fenced as a commit is: by the local deadline
        first (a lost lease: the prune is dropped, nothing touches the database), then by the term."""
        while self._prune_before is not None:
            before = self._prune_before
            try:
                with self._writing:
                    if not self._leads_now():
                        self._prune_before = None
                        return
                    with self.conn.transaction(), self.conn.cursor() as cur:
                        self._check_term(cur.execute(_TERM_SQL).fetchone())
                        n = prune_slice(cur, before, self.prune_slice)
            except Exception as exc:  # noqa: BLE001 - logged; the next prune the server asks for starts over
                log.error("pruning finished tasks failed: %s", _why(exc))
                self._prune_before = None
                return
            if self._prune_before == before:  # (a commit meanwhile may have asked for a later cutoff)
                self._prune_before = before if n >= self.prune_slice else None
            if not self._q.empty():
                return

    # ------------------------------------------------------------------ reads
    @property
    def reader(self) -> psycopg.Connection[Any]:
        if self._reader is None or self._reader.closed:
            self._reader = self._connect()
        return self._reader

    def principals(self) -> PrincipalStore:
        """The principal tables, on a connection of their own (base.py)."""
        return PrincipalStore(self._connect(), "%s")

    def get_task(self, task_id: int) -> TaskRecord | None:
        """Return the task, or ``None``."""
        row = self.reader.execute(_pg(queries.TASK_BY_ID_SQL), (task_id,)).fetchone()
        return None if row is None else make_task(row)

    def events(self, task_id: int) -> list[EventRecord]:
        """Return the task's events in order, its unstored ``enqueued`` event rebuilt (``queries.timeline``)."""
        conn = self.reader
        stored = list(map(make_event, conn.execute(_pg(queries.EVENTS_SQL), (task_id,))))
        if not queries.needs_enqueued(stored):
            return stored
        created = next((at for (at,) in conn.execute(_pg(queries.CREATED_AT_SQL), (task_id,))), None)
        return queries.timeline(task_id, stored, created)

    def list_tasks(self, state: str | None = None, queue: str | None = None, type: str | None = None,
                   limit: int = 100, cursor: int | None = None, owner: str | None = None) -> list[TaskRecord]:
        """Return a page of tasks, newest first; ``cursor`` is the last id of the previous page."""
        sql, args = queries.task_list_query(state, queue, type, limit, cursor, mark="%s", owner=owner)
        return list(map(make_task, self.reader.execute(sql, args)))

    def dead_tasks(self, f: DeadFilter, limit: int, cursor: int | None = None,
                   oldest_first: bool = False) -> list[TaskRecord]:
        """A page of dead tasks that ``f`` lets through (``queries.dead_query``)."""
        sql, args = queries.dead_query(f, limit, cursor, oldest_first, mark="%s")
        return list(map(make_task, self.reader.execute(sql, args)))

    def server_events(self, since: int | None = None, limit: int = 100) -> list[ServerEventRecord]:
        """Events of no task, oldest first: the ``limit`` latest, or the first ``limit`` after id ``since``."""
        sql, args = queries.server_events_query(since, limit, mark="%s")
        return list(map(make_server_event, self.reader.execute(sql, args)))

    def count_by_state(self) -> dict[tuple[str, str], int]:
        """Return {(queue, state): count} over every stored task."""
        return {(q, s): n for q, s, n in self.reader.execute(
            "SELECT queue, state, count(*) FROM tasks GROUP BY queue, state")}

    def check_writable(self) -> None:
        """Raise ``StoreError`` unless this store could write right now: its lease holds, and the writer row
        can be locked at once (``FOR KEY SHARE``, which a read-only database, a hot standby, refuses too) and still holds this store's term."""
        try:
            conn = self.reader
            with conn.transaction():
                row = conn.execute("SELECT term FROM runq_writer WHERE id = 1 FOR KEY SHARE NOWAIT").fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"database not writable: {_why(exc)}") from exc
        if row is None or row[0] != self.term:
            raise StoreError(f"database not writable by this server: its term {self.term} moved on")
        if not self._leads_now():
            raise StoreError(f"database not writable by this server: {self.leadership().holder}")

