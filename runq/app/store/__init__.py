"""Persistence: the narrow ``Store`` interface, its SQLite implementation, schema and shared read queries.

Where each part lives:

==================  =====================================================================================
module              what it holds
==================  =====================================================================================
``base.py``         ``Store`` (the protocol the server and recovery use, nothing more), ``Batch`` (writes
                    that commit together), ``StoreStats``, ``Leadership``; re-exports the records
                    (``TaskRecord``, ``NewTaskRecord``, ``EventRecord``, ``RequestRecord``, ``QueueRecord``,
                    defined in runq/app/core/records.py: the core makes them and must not import the store)
``queries.py``      the ONE definition of the read queries (task list with filters and paging, one task,
                    a timeline with its rebuilt ``enqueued`` event) and the column lists; pure, so the
                    offline dashboard (runq/tui/offline.py) uses it without importing the server
``sqlite.py``       ``SQLiteStore``: WAL, one writer thread with group commit, a read-only reader; leads
                    through an exclusive file lock (always term 1)
``schema.py``       the SQLite schema, its version and migrations
``postgres.py``     ``PostgresStore``: psycopg 3 in one writer thread with group commit (``unnest`` batch
                    inserts), a reader connection; writes while it holds the lease of its database's
                    ``runq_writer`` row (renewed by a thread of its own), each commit fenced with its term
                    (docs/operations.md); imported only for a PostgreSQL URL
``lease.py``        the lease's timing rules (renew, give up, take over): pure, tested with a fake clock
``pg_schema.py``    the PostgreSQL schema: the same versions and tables as ``schema.py``, PostgreSQL's types
``writer.py``       what both stores' writers share: ``merge_batches`` (a group commit's batches as one set of
                    writes) and ``GroupWriter`` (the writer thread, ``submit``, ``commit_here``, ``write_now``)
``transfer.py``     ``copy_database``: a whole database copied to another store (``runq migrate``), counts
                    verified
``open_store``      (here) the store the server opens for a ``--db`` value
==================  =====================================================================================

The errors (``StoreError``, ``StoreInUse``, ``SchemaTooNew``, ``NotLeader``) are defined in
runq/app/errors.py, the one tree of server-side errors, and re-exported here.

A new store (PostgreSQL, say) implements every method of ``base.Store`` (structural typing: no base class
to inherit; ``mypy`` checks it where ``open_store`` returns it), answers ``leadership()`` from its own notion
(a lease row with a term, its commits fenced with that term), reads with the builders of ``queries.py``
(their ``mark`` argument gives its driver's placeholder), and joins the contract suite,
tests/store/test_store_contract.py, with one entry in its ``KITS`` list: a ``StoreKit`` that opens a store
on a fresh database and can make commits wait, fail and run out of space. ``open_store`` then picks it for
the values of ``--db`` that name it.
"""

from __future__ import annotations

from ..errors import NotLeader, SchemaTooNew, StoreError, StoreInUse
from .base import (
    Batch,
    BreakerRecord,
    EventRecord,
    Leadership,
    LimitRecord,
    NewTaskRecord,
    Notify,
    QueueRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
    Store,
    StoreStats,
    TaskRecord,
    TaskRow,
)
from .schema import SCHEMA_VERSION, migrate
from .sqlite import SQLiteStore

__all__ = [
    "POSTGRES_PREFIXES",
    "SCHEMA_VERSION",
    "Batch",
    "BreakerRecord",
    "EventRecord",
    "Leadership",
    "LimitRecord",
    "NewTaskRecord",
    "NotLeader",
    "Notify",
    "QueueRecord",
    "RequestRecord",
    "SQLiteStore",
    "ScheduleRecord",
    "SchemaTooNew",
    "ServerEventRecord",
    "Store",
    "StoreError",
    "StoreInUse",
    "StoreStats",
    "TaskRecord",
    "TaskRow",
    "migrate",
    "open_store",
]


#: the prefixes of a ``--db`` value that name a PostgreSQL database (anything else is a SQLite file path)
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def describe_db(db: str) -> str:
    """``db`` as logs and messages show it: a PostgreSQL URL without its password."""
    if db.startswith(POSTGRES_PREFIXES):
        scheme, rest = db.split("://", 1)
        auth, at, host = rest.rpartition("@")
        if at and ":" in auth:
            return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"
    return db


def open_store(db: str, synchronous: str = "NORMAL", notify: Notify | None = None, lease: float = 5.0) -> Store:
    """Open the store of the database ``db``, not started: PostgreSQL for a ``postgresql://`` or
    ``postgres://`` URL, else the SQLite file at that path.

    Args:
        db: the database, as ``runq serve --db`` names it.
        synchronous: ``NORMAL`` (survives a process crash) or ``FULL`` (survives power loss).
        notify: how the store runs ``on_done`` callbacks (default: in its own thread).
        lease: seconds of the writer lease on PostgreSQL (lease.py; SQLite has none).

    Raises:
        StoreInUse: another server has the database open.
        SchemaTooNew: the database was written by a newer runq.
        StoreError: a PostgreSQL URL, and psycopg is not installed (or the database cannot be reached).
    """
    if db.startswith(POSTGRES_PREFIXES):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(f"--db {db.split('://')[0]}://... needs psycopg, which is not installed ({exc}): "
                             "pip install 'runq[postgres]'") from None
        return PostgresStore(db, synchronous, notify, lease=lease)
    return SQLiteStore(db, synchronous, notify)
