"""The PostgreSQL schema: the same versions and tables as SQLite's (schema.py), in PostgreSQL's types.

Theory of operation
-------------------
``PG_MIGRATIONS[i]`` takes a database from version i to i + 1, as ``schema.MIGRATIONS[i]`` does for SQLite
(tests/store/test_postgres_store.py holds the two lists to the same length and the same tables and columns).
The version is the one row of ``runq_schema``; ``postgres.py`` applies the steps, each in its own
transaction, with the writer row held (only the writer migrates).

The types: SQLite's INTEGER is ``bigint``, REAL ``double precision``, BLOB ``bytea``, TEXT ``text``; the
flags SQLite keeps as 0/1 (``queues.paused``, ``breakers.manual``, ``schedules.paused``) are ``boolean``
(the records hold bools). ``server_events.id`` is an identity column (SQLite numbers an INTEGER PRIMARY KEY
itself). ``tasks_live`` is PostgreSQL's own: the live tasks by id, what a restart reads (SQLite merges its
``tasks_state`` ranges instead).

Two tables of PostgreSQL only, created before the migrations (``BOOTSTRAP``): ``runq_schema`` (the version)
and ``runq_writer`` (who writes the database now, the term and the lease: ``LEASE_COLUMNS``, postgres.py's
docstring).

Rules of this file:

1. A change of the schema is a step appended here AND to schema.py's ``MIGRATIONS``, same version number.
2. Column names are always quoted in SQL built from the records' columns (``window`` is reserved here).
"""

from __future__ import annotations

from .pg_prune import AUTOVACUUM  # (the settings' text: one definition, beside the prune it serves)

__all__ = ["BOOTSTRAP", "LEASE_COLUMNS", "PG_MIGRATIONS", "PG_TYPES"]

BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS runq_schema (
    id      integer PRIMARY KEY CHECK (id = 1),
    version integer NOT NULL
);
INSERT INTO runq_schema (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS runq_writer (
    id            integer PRIMARY KEY CHECK (id = 1),
    term          bigint  NOT NULL,
    holder        text,
    backend_pid   integer,
    backend_start timestamptz,
    expires_at    timestamptz,
    address       text
);
INSERT INTO runq_writer (id, term) VALUES (1, 0) ON CONFLICT (id) DO NOTHING
"""

#: The lease's columns of ``runq_writer`` (branch failover12; docs/operations.md, "Failover"): ``expires_at``
#: (the database's time the holder's lease ends: clock_timestamp() + lease at each renewal) and ``address``
#: (where the holder serves, for standbys and their clients). ``BOOTSTRAP`` creates them in a new database;
#: postgres.py adds those missing from a database of an older runq (``ALTER TABLE ... ADD COLUMN``, only when
#: missing: the ALTER's lock would wait behind the active server's commits). Not a migration step: a standby
#: reads them before any migration may run (only the lease's holder migrates).
LEASE_COLUMNS = {"expires_at": "timestamptz", "address": "text"}

_V1 = """
CREATE TABLE tasks (
    id          bigint           PRIMARY KEY,
    queue       text             NOT NULL,
    type        text             NOT NULL,
    payload     bytea,
    priority    bigint           NOT NULL DEFAULT 0,
    state       text             NOT NULL,
    run_at      double precision,
    timeout     double precision NOT NULL,
    max_retries bigint           NOT NULL,
    attempt     bigint           NOT NULL DEFAULT 0,
    key         text,
    result      bytea,
    error       text,
    progress    bytea,
    created_at  double precision NOT NULL,
    started_at  double precision,
    finished_at double precision,
    worker      text
);
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_live ON tasks (id) WHERE state IN ('scheduled', 'ready', 'running', 'failed');
CREATE TABLE events (
    id      bigint           PRIMARY KEY,
    task_id bigint           NOT NULL,
    at      double precision NOT NULL,
    kind    text             NOT NULL,
    state   text             NOT NULL,
    worker  text,
    attempt bigint           NOT NULL,
    detail  text
);
CREATE INDEX events_task ON events (task_id, id);
CREATE TABLE queues (
    name   text    PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false
);
CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text
)
"""

_V2 = """
CREATE TABLE requests (
    id        bigint           PRIMARY KEY,
    client_id text             NOT NULL,
    seq       bigint           NOT NULL,
    at        double precision NOT NULL,
    answer    text             NOT NULL
)
"""

_V3 = "ALTER TABLE requests ADD COLUMN seqs bigint NOT NULL DEFAULT 1"

_V4 = "ALTER TABLE requests ADD COLUMN digests bytea"

_V5 = """
CREATE TABLE limits (
    scope       text             NOT NULL,
    name        text             NOT NULL,
    key         text             NOT NULL DEFAULT '',
    rate        double precision,
    period      double precision NOT NULL,
    burst       bigint           NOT NULL,
    concurrency bigint,
    PRIMARY KEY (scope, name, key)
);
CREATE TABLE breakers (
    type      text             PRIMARY KEY,
    threshold double precision,
    "window"  double precision,
    min_calls bigint,
    cooldown  double precision,
    probes    bigint,
    state     text             NOT NULL,
    until     double precision,
    manual    boolean          NOT NULL DEFAULT false
);
CREATE TABLE server_events (
    id     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at     double precision NOT NULL,
    scope  text NOT NULL,
    kind   text NOT NULL,
    detail text,
    actor  text
)
"""

_V6 = """
CREATE TABLE schedules (
    name       text             PRIMARY KEY,
    type       text             NOT NULL,
    payload    bytea            NOT NULL,
    queue      text,
    priority   bigint,
    timeout    double precision,
    retries    bigint,
    cron       text,
    tz         text             NOT NULL,
    every      double precision,
    missed     text             NOT NULL,
    max_missed bigint           NOT NULL,
    paused     boolean          NOT NULL DEFAULT false,
    next_fire  double precision,
    last_fire  double precision,
    created_at double precision NOT NULL
)
"""

#: Version 7: a task's ``requires`` (docs/routing.md): the labels a worker must have to be given it, compact
#: JSON sorted by name; NULL: any worker.
_V7 = """
ALTER TABLE tasks ADD COLUMN requires TEXT;
"""

#: Version 8 (branch migrate12): retention without bloat (pg_prune.py): the finished tasks by ``finished_at``,
#: which a prune slice walks oldest first, and autovacuum kept close behind the deletes on the pruned tables.
_V8 = f"""
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');
ALTER TABLE tasks SET ({AUTOVACUUM});
ALTER TABLE events SET ({AUTOVACUUM});
ALTER TABLE requests SET ({AUTOVACUUM})"""

#: Version 9 (branch retry11): a task's own ``retry_policy`` given at enqueue (docs/tasks.md, "Retry policies"):
#: compact JSON of its backoff, ``retry_on`` and ``never_retry``; NULL: its type's and the server's.
_V9 = """
ALTER TABLE tasks ADD COLUMN retry_policy TEXT;
"""

#: Version 10 (branch batch11): a task's ``coalesce_key`` and ``limit_key`` (schema.py's step 10).
_V10 = """
ALTER TABLE tasks ADD COLUMN coalesce_key TEXT;
ALTER TABLE tasks ADD COLUMN limit_key TEXT;
"""

#: Version 11 (branch teams13, docs/security.md): task owners, users, API tokens, refresh tokens (schema.py's _V11).
_V11 = """
ALTER TABLE tasks ADD COLUMN owner text;
CREATE TABLE users (
    name       text             PRIMARY KEY,
    role       text             NOT NULL,
    password   text             NOT NULL,
    disabled   boolean          NOT NULL DEFAULT false,
    created_at double precision NOT NULL,
    changed_at double precision NOT NULL
);
CREATE TABLE api_tokens (
    id         text             PRIMARY KEY,
    hash       text             NOT NULL UNIQUE,
    name       text             NOT NULL,
    role       text             NOT NULL,
    username   text,
    queues     text,
    expires_at double precision,
    revoked_at double precision,
    created_at double precision NOT NULL
);
CREATE TABLE refresh_tokens (
    id         text             PRIMARY KEY,
    hash       text             NOT NULL UNIQUE,
    username   text             NOT NULL,
    expires_at double precision NOT NULL,
    revoked_at double precision,
    created_at double precision NOT NULL
)
"""

#: PG_MIGRATIONS[i] takes a database from version i to version i + 1 (schema.MIGRATIONS[i] for SQLite).
PG_MIGRATIONS: list[str] = [_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11]

_I, _T, _F, _B = "bigint", "text", "double precision", "bytea"
#: the type of each column written with ``unnest`` arrays (postgres.py), by table
PG_TYPES: dict[str, dict[str, str]] = {
    "tasks": {"id": _I, "queue": _T, "type": _T, "payload": _B, "priority": _I, "state": _T, "run_at": _F,
              "timeout": _F, "max_retries": _I, "attempt": _I, "key": _T, "result": _B, "error": _T,
              "progress": _B, "created_at": _F, "started_at": _F, "finished_at": _F, "worker": _T,
              "requires": _T, "retry_policy": _T, "coalesce_key": _T, "limit_key": _T, "owner": _T},
    "events": {"id": _I, "task_id": _I, "at": _F, "kind": _T, "state": _T, "worker": _T, "attempt": _I,
               "detail": _T},
    "requests": {"id": _I, "client_id": _T, "seq": _I, "at": _F, "answer": _T, "seqs": _I, "digests": _B},
    "server_events": {"at": _F, "scope": _T, "kind": _T, "detail": _T, "actor": _T},
}
