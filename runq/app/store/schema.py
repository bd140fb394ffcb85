"""The database schema, its version, and the migrations between versions.

Theory of operation
-------------------
``PRAGMA user_version`` holds the schema version. ``migrate(conn)`` applies, in
one transaction each, every step from the file's version up to
``SCHEMA_VERSION``. A file newer than this code is refused (never downgraded).
To change the schema: append a step to ``MIGRATIONS`` and bump nothing else.
"""

from __future__ import annotations

import sqlite3

from ..errors import SchemaTooNew

__all__ = ["FINAL_STATE_NAMES", "LIVE_STATE_NAMES", "MIGRATIONS", "SCHEMA_VERSION", "SchemaTooNew", "migrate"]

FINAL_STATE_NAMES = ("succeeded", "dead", "cancelled")
LIVE_STATE_NAMES = ("scheduled", "ready", "running", "failed")

_V1 = """
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY,
    queue       TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    payload     BLOB,
    priority    INTEGER NOT NULL DEFAULT 0,
    state       TEXT    NOT NULL,
    run_at      REAL,
    timeout     REAL    NOT NULL,
    max_retries INTEGER NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    key         TEXT,
    result      BLOB,
    error       TEXT,
    progress    BLOB,
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    worker      TEXT
);
CREATE INDEX tasks_state ON tasks (state, id);
CREATE TABLE events (
    id      INTEGER PRIMARY KEY,
    task_id INTEGER NOT NULL,
    at      REAL    NOT NULL,
    kind    TEXT    NOT NULL,
    state   TEXT    NOT NULL,
    worker  TEXT,
    attempt INTEGER NOT NULL,
    detail  TEXT
);
CREATE INDEX events_task ON events (task_id, id);
CREATE TABLE queues (
    name   TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT
);
"""

#: Version 2: the answers of enqueue requests by idempotency token (runq.app.core.requests), kept for a
#: window of minutes so that a client resending an enqueue after a crash gets the first answer.
_V2 = """
CREATE TABLE requests (
    id        INTEGER PRIMARY KEY,
    client_id TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    at        REAL    NOT NULL,
    answer    TEXT    NOT NULL
);
"""

#: Version 3: a ``requests`` row answers a run of ``seqs`` consecutive requests of one client (their answers
#: consecutive ids: runq.app.core.requests), so that a commit writes a row per client, not per request.
_V3 = """
ALTER TABLE requests ADD COLUMN seqs INTEGER NOT NULL DEFAULT 1;
"""

#: Version 4: with each token, the digests of its requests' tasks (runq.app.core.requests: a request that
#: reuses a token with other tasks is refused, not answered with the first request's ids); NULL in older rows.
_V4 = """
ALTER TABLE requests ADD COLUMN digests BLOB;
"""

#: Version 5: rate limits and concurrency caps (one row per scope), circuit breakers (one per task type) and
#: their state (runq/app/core/limits.py, records.py's ``LimitRecord`` / ``BreakerRecord``: what a restart
#: takes back), and the events of the server that belong to no task (a limit set or removed, a breaker's
#: change; later the audit log of operators' actions, with their ``actor``).
_V5 = """
CREATE TABLE limits (
    scope       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    key         TEXT    NOT NULL DEFAULT '',
    rate        REAL,
    period      REAL    NOT NULL,
    burst       INTEGER NOT NULL,
    concurrency INTEGER,
    PRIMARY KEY (scope, name, key)
);
CREATE TABLE breakers (
    type      TEXT PRIMARY KEY,
    threshold REAL,
    window    REAL,
    min_calls INTEGER,
    cooldown  REAL,
    probes    INTEGER,
    state     TEXT    NOT NULL,
    until     REAL,
    manual    INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE server_events (
    id     INTEGER PRIMARY KEY,
    at     REAL NOT NULL,
    scope  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT,
    actor  TEXT
);
"""

#: Version 6: schedules of periodic tasks (runq.app.core.schedules): one row per schedule, its ``next_fire`` the mark
#: below which every fire time has its task (written in the same commit as those tasks). Columns: the fields
#: of ``ScheduleRecord``, in order.
_V6 = """
CREATE TABLE schedules (
    name       TEXT    PRIMARY KEY,
    type       TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    queue      TEXT,
    priority   INTEGER,
    timeout    REAL,
    retries    INTEGER,
    cron       TEXT,
    tz         TEXT    NOT NULL,
    every      REAL,
    missed     TEXT    NOT NULL,
    max_missed INTEGER NOT NULL,
    paused     INTEGER NOT NULL DEFAULT 0,
    next_fire  REAL,
    last_fire  REAL,
    created_at REAL    NOT NULL
);
"""

#: Version 7: a task's ``requires`` (docs/routing.md): the labels a worker must have to be given it, compact
#: JSON sorted by name; NULL: any worker.
_V7 = """
ALTER TABLE tasks ADD COLUMN requires TEXT;
"""

#: Version 8 (branch migrate12): PostgreSQL's retention settings (pg_schema.py: the partial index of finished
#: tasks by ``finished_at`` that its prune slices walk, and autovacuum per table). Nothing for SQLite: it has no
#: dead tuples (the pages a prune frees are reused by the next inserts), and its prune stays one statement.
_V8 = """
-- (nothing for SQLite: see the comment above)"""

#: Version 9 (branch retry11): a task's own ``retry_policy`` given at enqueue (docs/tasks.md, "Retry policies"):
#: compact JSON of its backoff, ``retry_on`` and ``never_retry``; NULL: its type's and the server's.
_V9 = """
ALTER TABLE tasks ADD COLUMN retry_policy TEXT;
"""

#: Version 10 (branch batch11): a task's ``coalesce_key`` (docs/tasks.md, "Coalescing": a later enqueue with the
#: same key merges into it while it waits) and its ``limit_key`` (docs/limits.md: the key value of the per-key
#: limits it is subject to, given at enqueue instead of read from the payload). NULL: none.
_V10 = """
ALTER TABLE tasks ADD COLUMN coalesce_key TEXT;
ALTER TABLE tasks ADD COLUMN limit_key TEXT;
"""

#: Version 11 (branch teams13, docs/security.md): a task's ``owner`` (the identity that enqueued it; NULL: enqueued
#: without users, by the shared token or an open server), the users (password: an argon2id hash), the API tokens
#: (``hash``: SHA-256 of the whole token, which is shown once and never stored) and the refresh tokens of HTTP
#: logins (hashed the same way), each revocable.
_V11 = """
ALTER TABLE tasks ADD COLUMN owner TEXT;
CREATE TABLE users (
    name       TEXT    PRIMARY KEY,
    role       TEXT    NOT NULL,
    password   TEXT    NOT NULL,
    disabled   INTEGER NOT NULL DEFAULT 0,
    created_at REAL    NOT NULL,
    changed_at REAL    NOT NULL
);
CREATE TABLE api_tokens (
    id         TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    username   TEXT,
    queues     TEXT,
    expires_at REAL,
    revoked_at REAL,
    created_at REAL    NOT NULL
);
CREATE TABLE refresh_tokens (
    id         TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,
    username   TEXT    NOT NULL,
    expires_at REAL    NOT NULL,
    revoked_at REAL,
    created_at REAL    NOT NULL
);
"""

#: MIGRATIONS[i] takes a database from version i to version i + 1.
MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring ``conn``'s database up to ``SCHEMA_VERSION``; return the version it had.

    Raises:
        SchemaTooNew: the file's version is above ``SCHEMA_VERSION``.
    """
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"database schema version {version} is newer than this runq ({SCHEMA_VERSION})")
    start = version
    while version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start
