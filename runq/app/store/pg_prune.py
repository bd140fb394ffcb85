"""Retention pruning on PostgreSQL that does not bloat its tables: bounded slices, and autovacuum kept close.

Theory of operation
-------------------
A deleted row in PostgreSQL stays in its page as a dead tuple until a vacuum marks the space free; until
then new rows go to new pages, and the table grows. Pruning an hour of finished tasks in ONE statement (as
SQLite does, where freed pages are reused at once) leaves an hour of dead tuples at once, and holds the
commit (and so every enqueue waiting behind it) for as long as the delete takes. So here:

- **Slices.** ``prune_slice`` deletes at most ``limit`` tasks (oldest ``finished_at`` first, through the
  partial index ``tasks_finished`` of the finished states) and their events, in one statement; each slice is
  one transaction of the store's writer. The store does the first slice in the commit that asked for the
  prune, and the rest between the group commits that follow (postgres.py, ``_after_commits``): an enqueue
  waits for one slice at most, never for a whole prune.
- **Autovacuum per table** (``AUTOVACUUM``, set by the schema step of pg_schema.py): ``tasks``, ``events``
  and ``requests`` are vacuumed once 1% of their rows (and at least 1,000) are dead, instead of PostgreSQL's
  default 20%, so the space of pruned rows is reused by the next inserts instead of new pages. The naptime
  (``autovacuum_naptime``, 1 min by default) is the server's: the dead tuples between two vacuums are at most
  about what a minute of pruning deletes plus that 1%.
- **Not partitioning.** Dropping whole partitions would leave no dead tuples at all, but runq deletes by a
  task's ``finished_at``, and a task's rows (its row, its events, spread over its whole life: retries, delays,
  schedules) do not fall into ranges of id or time that finish together: a partition could be dropped only
  once its last task finished, which one long-lived task may hold off for ever, and every primary key would
  have to include the partition key. docs/postgres.md has the measure (bench/pg_prune.py).

Rules of this file:

1. SQL only, run on a cursor the caller gives, inside the caller's transaction: no connection, no commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .schema import FINAL_STATE_NAMES

if TYPE_CHECKING:
    import psycopg

__all__ = ["AUTOVACUUM", "SLICE_TASKS", "prune_slice"]

#: tasks (with their events) one slice deletes at most: ~10-30 ms on this machine (docs/postgres.md)
SLICE_TASKS = 2000

#: per-table storage parameters that keep autovacuum close behind the prune (module docstring)
AUTOVACUUM = ("autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
              "autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02")

_FINAL = ", ".join(f"'{s}'" for s in FINAL_STATE_NAMES)  # (literal: the same text as the index's predicate)

_SLICE_SQL = (
    f"WITH doomed AS (SELECT id FROM tasks WHERE state IN ({_FINAL}) AND finished_at < %s "
    "ORDER BY finished_at LIMIT %s), "
    "gone AS (DELETE FROM events WHERE task_id IN (SELECT id FROM doomed)) "
    "DELETE FROM tasks WHERE id IN (SELECT id FROM doomed)")

_NEXT_ID_SQL = (
    "INSERT INTO meta (key, value) SELECT 'next_id', (max(id) + 1)::text FROM tasks "
    "ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value::bigint, excluded.value::bigint)::text")


def prune_slice(cur: psycopg.Cursor[Any], before: float, limit: int) -> int:
    """Delete up to ``limit`` tasks finished before ``before`` (oldest first) and their events; return how many
    tasks went (fewer than ``limit``: the prune is complete). The next task id is kept in ``meta`` first: ids
    never go back, even when the newest task is deleted."""
    cur.execute(_NEXT_ID_SQL)
    cur.execute(_SLICE_SQL, (before, limit))
    return cur.rowcount
