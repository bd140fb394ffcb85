"""Copying a runq database to another store (``runq migrate``): SQLite to PostgreSQL, PostgreSQL to SQLite.

Theory of operation
-------------------
``copy_database(source, target)`` opens both ends as a server would, with the store itself
(``SQLiteStore``, ``PostgresStore``): that takes each one's leadership (the SQLite file lock; the lease in
the ``runq_writer`` row), so a database a server holds is refused at once with ``StoreInUse`` (a PostgreSQL
store that finds the lease held does not lead: the copy refuses instead of waiting as a standby server would)
and no server can serve either end while the copy runs (on PostgreSQL it waits as a standby until the copy's
store gives the lease up), and it brings both schemas to this runq's version (a source of an older runq
is migrated up first, exactly as ``runq serve`` would; a target is created). A source that is not a runq
database is refused before anything touches it.

What is copied is every table the schema has, found in the databases themselves (not a list written here, so
a table a later schema step adds is copied too): all tables but SQLite's own (``sqlite_*``) and PostgreSQL's
two bookkeeping tables (``runq_schema``: each end has its version; ``runq_writer``: each end has its writer).
Both ends must have the same tables and columns, or nothing is copied.

The copy is ONE transaction on the target, read from ONE snapshot of the source: it is all there or not at
all, and what it holds is the source at one moment. A target that holds any row is refused unless
``replace`` (then it is emptied first, in the same transaction). Rows travel in batches of ``batch_rows``:
from SQLite with ``fetchmany``; from and into PostgreSQL with binary ``COPY`` (``COPY (SELECT ...) TO STDOUT``
and ``COPY ... FROM STDIN``, the column types given), one per table. Values cross as they are, but for the
flags SQLite keeps as 0/1 and PostgreSQL as ``boolean``. PostgreSQL's identity columns
(``server_events.id``) are set past the copied ids, so that the next server numbers on.

Before the target commits, every table's rows are counted on both ends (the target's count inside the copy's
transaction: what will be committed). Any difference rolls the copy back and raises ``CopyMismatch``, whose
``report`` holds the counts.

Rules of this file:

1. Store-level only: no click, no printing; ``runq/cli/migrate.py`` is the command.
2. Nothing here writes the source (but the schema migration of an older source, which is the store's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import StoreError, StoreInUse
from .base import Store

__all__ = ["CopyMismatch", "CopyReport", "TableCount", "copy_database"]

#: PostgreSQL's tables that belong to one database, not to its contents
PG_OWN_TABLES = ("runq_schema", "runq_writer")

_PG_PREFIXES = ("postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class TableCount:
    """The rows of one table on both ends of a copy."""

    table: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True)
class CopyReport:
    """What ``copy_database`` did.

    Attributes:
        source, target: the two databases, as messages show them (no password).
        tables: the counts per table, in copy order.
        replaced: the rows the target held before (emptied with ``replace``).
        seconds: how long the copy took, opening and counting included.
    """

    source: str
    target: str
    tables: list[TableCount] = field(default_factory=list)
    replaced: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def rows(self) -> int:
        return sum(t.target for t in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "ok": self.ok, "rows": self.rows,
                "replaced": self.replaced, "seconds": round(self.seconds, 3),
                "tables": [{"table": t.table, "source": t.source, "target": t.target} for t in self.tables]}


class CopyMismatch(StoreError):
    """The target's counts differ from the source's: the copy was rolled back (``report`` has the counts)."""

    def __init__(self, message: str, report: CopyReport) -> None:
        super().__init__(message)
        self.report = report


#: a table's columns, in order, each with its type as the end that has it names it
Columns = list[tuple[str, str]]


class _End(Protocol):
    """One end of a copy: a store opened on it, and how to read and write its tables."""

    name: str
    store: Store

    def tables(self) -> dict[str, Columns]: ...
    def count(self, table: str) -> int: ...
    def snapshot(self) -> contextlib.AbstractContextManager[None]: ...
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def read(self, table: str, columns: Columns, batch_rows: int) -> Iterator[list[tuple[Any, ...]]]: ...
    def write(self, table: str, columns: Columns, batches: Iterable[list[tuple[Any, ...]]]) -> None: ...
    def empty(self, tables: list[str]) -> None: ...
    def finish(self, tables: dict[str, Columns]) -> None: ...


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _SQLiteEnd:
    def __init__(self, path: str, source: bool) -> None:
        from .sqlite import SQLiteStore

        if source:
            _check_sqlite_source(path)
        self.name = path
        store = SQLiteStore(path)
        self.store: Store = store
        self.conn = store.conn

    def tables(self) -> dict[str, Columns]:
        names = [n for (n,) in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        return {n: [(c[1], str(c[2]).upper()) for c in self.conn.execute(f"PRAGMA table_info({_q(n)})")]
                for n in names}

    def _key(self, table: str) -> str:
        pk = sorted((c[5], c[1]) for c in self.conn.execute(f"PRAGMA table_info({_q(table)})") if c[5])
        return ", ".join(_q(c) for _, c in pk) or "rowid"

    def count(self, table: str) -> int:
        (n,) = self.conn.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()
        return int(n)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        self.conn.execute("BEGIN")  # (deferred: one read snapshot for every table)
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def read(self, table: str, columns: Columns, batch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.conn.execute(f"SELECT {', '.join(_q(c) for c, _ in columns)} FROM {_q(table)} "
                                f"ORDER BY {self._key(table)}")
        while rows := cur.fetchmany(batch_rows):
            yield rows

    def write(self, table: str, columns: Columns, batches: Iterable[list[tuple[Any, ...]]]) -> None:
        sql = (f"INSERT INTO {_q(table)} ({', '.join(_q(c) for c, _ in columns)}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        for rows in batches:
            self.conn.executemany(sql, rows)

    def empty(self, tables: list[str]) -> None:
        for t in tables:
            self.conn.execute(f"DELETE FROM {_q(t)}")

    def finish(self, tables: dict[str, Columns]) -> None:
        """Nothing to do: SQLite numbers an INTEGER PRIMARY KEY from the largest one there."""


class _PostgresEnd:
    def __init__(self, url: str, source: bool) -> None:
        try:
            import psycopg

            from .postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(f"{url.split('://')[0]}://... needs psycopg, which is not installed ({exc}): "
                             "pip install 'runq[postgres]'") from None

        if source:
            _check_pg_source(url)
        store = PostgresStore(url)  # (a lease another server holds: a store that does not lead, refused by _open)
        self.store: Store = store
        self.name = store._safe_url()
        self.conn: psycopg.Connection[Any] = store.conn

    def tables(self) -> dict[str, Columns]:
        out: dict[str, Columns] = {}
        for table, col, typ in self.conn.execute(
                "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
                "JOIN information_schema.tables t USING (table_schema, table_name) "
                "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' "
                "AND c.table_name <> ALL(%s) ORDER BY c.table_name, c.ordinal_position", (list(PG_OWN_TABLES),)):
            out.setdefault(table, []).append((col, typ))
        return out

    def _key(self, table: str) -> str:
        cols = [c for (c,) in self.conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey, a.attnum)", (_q(table),))]
        return ", ".join(_q(c) for c in cols) or "ctid"

    def count(self, table: str) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")  # (the connection is autocommit)
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def read(self, table: str, columns: Columns, batch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        cols = ", ".join(_q(c) for c, _ in columns)
        with self.conn.cursor() as cur, cur.copy(
                f"COPY (SELECT {cols} FROM {_q(table)} ORDER BY {self._key(table)}) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types([t for _, t in columns])
            rows: list[tuple[Any, ...]] = []
            for r in cp.rows():
                rows.append(r)
                if len(rows) >= batch_rows:
                    yield rows
                    rows = []
            if rows:
                yield rows

    def write(self, table: str, columns: Columns, batches: Iterable[list[tuple[Any, ...]]]) -> None:
        flags = [i for i, (_, t) in enumerate(columns) if t == "boolean"]
        with self.conn.cursor() as cur, cur.copy(
                f"COPY {_q(table)} ({', '.join(_q(c) for c, _ in columns)}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types([t for _, t in columns])
            for rows in batches:
                if flags:  # (SQLite's 0/1)
                    rows = [tuple(None if v is None else bool(v) if i in flags else v for i, v in enumerate(r))
                            for r in rows]
                for r in rows:
                    cp.write_row(r)

    def empty(self, tables: list[str]) -> None:
        self.conn.execute(f"TRUNCATE {', '.join(_q(t) for t in tables)} RESTART IDENTITY")

    def finish(self, tables: dict[str, Columns]) -> None:
        """Set every identity column's sequence past the ids copied (the next one written numbers on)."""
        for table, col in self.conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND is_identity = 'YES' AND table_name = ANY(%s)", (list(tables),)).fetchall():
            self.conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({_q(col)}), 0) + 1, false) "
                              f"FROM {_q(table)}", (_q(table), col))


def _check_sqlite_source(path: str) -> None:
    """Refuse a source file that is missing or not a runq database, before a store could create one there."""
    if not os.path.isfile(path):
        raise StoreError(f"no database file {path}")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a SQLite database: {exc}") from None
    if version < 1:
        raise StoreError(f"{path} is not a runq database (its schema version is {version})")


def _check_pg_source(url: str) -> None:
    """Refuse a source database that has no runq schema, before a store could create one there."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, application_name="runq-migrate") as conn:
            row = conn.execute("SELECT to_regclass('runq_schema') IS NOT NULL").fetchone()
            version = conn.execute("SELECT version FROM runq_schema").fetchone() if row and row[0] else None
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
    if not version or version[0] < 1:
        raise StoreError(f"{_describe(url)} is not a runq database (it has no runq_schema)")


def _describe(db: str) -> str:
    from . import describe_db

    return describe_db(db)


def _open(db: str, source: bool) -> _End:
    end: _End = _PostgresEnd(db, source) if db.startswith(_PG_PREFIXES) else _SQLiteEnd(db, source)
    lead = end.store.leadership()
    if not lead.is_leader:  # (a store that waits as a standby instead of refusing)
        end.store.close()
        raise StoreInUse(f"database {_describe(db)} is in use by another runq server ({lead.holder}): stop it first")
    return end


def _same(a: str, b: str) -> bool:
    if a.startswith(_PG_PREFIXES) or b.startswith(_PG_PREFIXES):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def copy_database(source: str, target: str, replace: bool = False, batch_rows: int = 5000) -> CopyReport:
    """Copy every table of the runq database ``source`` into ``target`` (module docstring).

    Args:
        source, target: SQLite file paths or ``postgresql://`` URLs, as ``runq serve --db`` takes them.
        replace: empty a target that holds rows first (else such a target is refused).
        batch_rows: rows read and written at a time.

    Returns:
        The counts per table (equal on both ends).

    Raises:
        StoreInUse: a server holds the source or the target.
        CopyMismatch: the counts differ (nothing was written).
        StoreError: anything else (not a runq database, a non-empty target, schemas that differ, ...).
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if _same(source, target):
        raise StoreError("the source and the target are the same database")
    t0 = time.perf_counter()
    src = _open(source, source=True)
    try:
        dst = _open(target, source=False)
        try:
            return _copy(src, dst, replace, batch_rows, t0)
        finally:
            dst.store.close()
    finally:
        src.store.close()


def _copy(src: _End, dst: _End, replace: bool, batch_rows: int, t0: float) -> CopyReport:
    tables = src.tables()
    theirs = dst.tables()
    if {t: {c for c, _ in cols} for t, cols in tables.items()} != {t: {c for c, _ in cols} for t, cols in theirs.items()}:
        diff = sorted(set(tables) ^ set(theirs)) or sorted(
            t for t in tables if {c for c, _ in tables[t]} != {c for c, _ in theirs[t]})
        raise StoreError(f"the source and the target have different tables or columns ({', '.join(diff)}): "
                         "are both of this runq's version?")
    order = sorted(tables, key=lambda t: (t != "tasks", t != "events", t))  # (the big ones first, then by name)
    counts: list[TableCount] = []
    with src.snapshot(), dst.transaction():
        held = {t: dst.count(t) for t in order}
        before = sum(held.values())
        if before and not replace:
            raise StoreError(f"the target {dst.name} already holds rows ("
                             + ", ".join(f"{t}: {n}" for t, n in held.items() if n)
                             + "); empty it, or copy with --replace to replace them")
        if before:
            dst.empty(order)
        for t in order:
            cols = theirs[t]  # (in the target's order, each end with its own types: binary COPY needs them)
            types = dict(tables[t])
            dst.write(t, cols, src.read(t, [(c, types[c]) for c, _ in cols], batch_rows))
        for t in order:
            counts.append(TableCount(t, src.count(t), dst.count(t)))
        report = CopyReport(src.name, dst.name, counts, before, time.perf_counter() - t0)
        if not report.ok:
            bad = ", ".join(f"{c.table}: {c.source} in the source, {c.target} in the target"
                            for c in counts if not c.ok)
            raise CopyMismatch(f"the copy's counts differ ({bad}); it was rolled back, the target is as it was",
                               report)
        dst.finish(tables)
    return dataclasses.replace(report, seconds=time.perf_counter() - t0)  # (the commit included)
