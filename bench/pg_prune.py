"""Whether pruning keeps PostgreSQL's tables bounded: fill, then prune round after round while enqueuing.

    python -m bench.pg_prune --db postgresql://user@host/postgres [--rounds 18] [--tasks 20000] [--keep 3]
                             [--round-seconds 10] [--way slices|one-delete]

On a fresh database made on the server of ``--db`` (dropped at the end), a ``PostgresStore`` with its writer
thread. Each round (a virtual clock moves 100 s a round): the prune of the tasks finished ``--keep`` rounds
ago is submitted, then ``--tasks`` new tasks are enqueued (batches of 1,000) and finished (each updated to
``succeeded`` with a ``started`` and a ``succeeded`` event), a batch of each at a time, each waited for (so
each commit holds 1,000 tasks, and the prune's slices run between those commits);
once the round's commits and the prune are done, the round waits out ``--round-seconds`` (autovacuum works on
the server's clock: its naptime is 1 min by default) and prints, per table (``tasks``, ``events``): live rows,
``pg_total_relation_size`` (table, indexes and TOAST) and ``n_dead_tup``, the autovacuums so far, how long the
round's commits and prune took, and the longest transaction of the writer in the round (a commit, or a prune
slice between commits): how long an enqueue may wait behind it.

(``n_dead_tup`` counts the dead tuples of updates too: every task's row is updated once when it finishes.)

``--way slices`` is the store as it is (pg_prune.py: slices, per-table autovacuum); ``--way one-delete`` is the
way before it: the whole prune in one commit, PostgreSQL's default autovacuum settings.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import psycopg

from runq.app.core import State, Task
from runq.app.core.records import EventRecord
from runq.app.store import Batch, postgres
from runq.app.store.postgres import PostgresStore

T0 = 1_700_000_000.0
CHUNK = 1000


class Waiter:
    """Counts ``on_done`` calls."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending = 0
        self.errors: list[BaseException] = []

    def batch(self, **kw: Any) -> Batch:
        def done(err: BaseException | None) -> None:
            with self.cond:
                self.pending -= 1
                if err is not None:
                    self.errors.append(err)
                self.cond.notify_all()

        with self.cond:
            self.pending += 1
        return Batch(on_done=done, **kw)

    def wait(self) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.pending == 0, 600):
                raise RuntimeError("commits did not finish")
        if self.errors:
            raise RuntimeError(f"a commit failed: {self.errors[0]}")


def task(tid: int, at: float) -> Task:
    return Task(tid, "default", "noop", b"\x90", 0, State.READY, None, 60.0, 3, 0, None, None, None, None, at)


def sizes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int, int, int]]:
    """Per table: (live rows, total bytes, dead tuples, autovacuums)."""
    out = {}
    for t in ("tasks", "events"):
        row = conn.execute(
            "SELECT (SELECT count(*) FROM " + t + "), pg_total_relation_size(%s), n_dead_tup, autovacuum_count "
            "FROM pg_stat_user_tables WHERE relname = %s", (t, t)).fetchone()
        assert row is not None
        out[t] = (int(row[0]), int(row[1]), int(row[2]), int(row[3]))
    return out


#: the longest transaction of the writer since the last reset (``timed``)
LONGEST = [0.0]


def timed(fn: Any) -> Any:
    """``fn``, its calls' durations kept in ``LONGEST``."""
    def call(*args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            LONGEST[0] = max(LONGEST[0], time.perf_counter() - t)
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="a postgresql:// URL of a database where another may be created")
    p.add_argument("--rounds", type=int, default=18)
    p.add_argument("--tasks", type=int, default=20_000, help="tasks enqueued and finished per round")
    p.add_argument("--keep", type=int, default=3, help="rounds of finished tasks kept (the retention)")
    p.add_argument("--round-seconds", type=float, default=10.0, help="each round lasts at least this long")
    p.add_argument("--way", choices=("slices", "one-delete"), default="slices")
    a = p.parse_args()
    name = f"runq_prune_{os.getpid()}"
    with psycopg.connect(a.db, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = a.db.rsplit("/", 1)[0] + "/" + name
    try:
        s = PostgresStore(url)
        s.commit = timed(s.commit)  # type: ignore[method-assign]
        postgres.prune_slice = timed(postgres.prune_slice)  # (the slices between commits)
        with psycopg.connect(url, autocommit=True) as conn:
            if a.way == "one-delete":
                s.prune_slice = 10**9
                for t in ("tasks", "events", "requests"):
                    conn.execute(f"ALTER TABLE {t} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
                                 "autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor)")
            s.start()
            print(f"way {a.way}: {a.tasks:,} tasks enqueued and finished per round, {a.keep} rounds kept, "
                  f"rounds of >= {a.round_seconds:g} s, prune slices of {min(s.prune_slice, 10**6):,}", flush=True)
            print(f"{'round':>5} {'tasks':>8} {'MB':>7} {'dead':>8} {'events':>8} {'MB':>7} {'dead':>8} "
                  f"{'vacuums':>8} {'round s':>8} {'longest tx ms':>14}", flush=True)
            next_id, next_event = 1, 1
            try:
                for r in range(a.rounds):
                    start = time.monotonic()
                    now = T0 + 100 * r
                    w = Waiter()
                    t_round = time.perf_counter()
                    LONGEST[0] = 0.0
                    if r >= a.keep:
                        b = w.batch(prune_before=now - 100 * a.keep + 50)
                        s.submit(b)
                    for i in range(0, a.tasks, CHUNK):
                        ids = range(next_id, next_id + min(CHUNK, a.tasks - i))
                        next_id += len(ids)
                        s.submit(w.batch(new_rows=[task(t, now).new_row() for t in ids]))
                        rows, events = [], []
                        for t in ids:
                            done = task(t, now)
                            done.state, done.attempt, done.started_at, done.finished_at = (State.SUCCEEDED, 1, now + 1,
                                                                                         now + 2)
                            done.worker, done.result = "w1", b"\xc0"
                            rows.append(done.row())
                            events.append(EventRecord(t, now + 1, "started", "running", "w1", 1, None, next_event))
                            events.append(EventRecord(t, now + 2, "succeeded", "succeeded", "w1", 1, None,
                                                      next_event + 1))
                            next_event += 2
                        s.submit(w.batch(rows=rows, events=events))
                        w.wait()  # (one producer, its batches acknowledged one after the other: commits of 1,000)
                    while s._prune_before is not None:  # (the slices the commits left)
                        time.sleep(0.01)
                    round_s = time.perf_counter() - t_round
                    longest = LONGEST[0]
                    time.sleep(max(0.0, a.round_seconds - (time.monotonic() - start)))
                    z = sizes(conn)
                    tl, tb, td, tv = z["tasks"]
                    el, eb, ed, ev = z["events"]
                    print(f"{r + 1:>5} {tl:>8,} {tb / 2**20:>7.1f} {td:>8,} {el:>8,} {eb / 2**20:>7.1f} {ed:>8,} "
                          f"{tv + ev:>8} {round_s:>8.2f} {longest * 1000:>14.0f}", flush=True)
            finally:
                s.close()
    finally:
        with psycopg.connect(a.db, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
