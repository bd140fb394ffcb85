"""The store contract: one suite that every storage implementation passes.

``StoreContract`` holds the tests; an implementation joins by subclassing it
and giving the hooks below (as huey's ``StorageTests`` mixin). Today one
subclass, ``TestSQLiteStore``, runs it on a real file in ``tmp_path`` with
``synchronous`` NORMAL and FULL, and adds the SQLite-only checks (schema,
PRAGMAs, migrations).

Hooks a subclass gives:
    open_store   fixture: ``open_store(path) -> Store`` (not started)
    blocked      context manager: commits wait (no error) until it exits
    locked       context manager: commits fail, and are reported, while inside
    full         context manager: commits fail for lack of space while inside
    child_source python source, run in a child process, that binds ``s`` to a store on ``path``
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runq.app.core import State, Task
from runq.app.core.model import TASK_COLUMNS
from runq.app.store import SCHEMA_VERSION, Batch, SchemaTooNew, Store, StoreError, StoreInUse, migrate
from runq.app.store import schema as schema_mod

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_000.0
LIVE = ("scheduled", "ready", "running", "failed")
FINAL = ("succeeded", "dead", "cancelled")
STATE = 5  # index of the state column in a task row

OpenStore = Callable[[Path], Store]


def task(tid: int, state: str = "ready", queue: str = "default", type_: str = "t", **kw: Any) -> Task:
    t = Task(tid, queue, type_, b"\xc0" + tid.to_bytes(4, "big"), 0, State(state), None, 60.0, 3, 0, None, None,
             None, None, T0)
    for k, v in kw.items():
        setattr(t, k, v)
    return t


def row(tid: int, state: str = "ready", **kw: Any) -> tuple[Any, ...]:
    return task(tid, state, **kw).row()


_event_ids = itertools.count(1)


def event(tid: int, kind: str = "enqueued", state: str = "ready", at: float = T0, detail: str | None = None
          ) -> tuple[Any, ...]:
    """An event row as the core makes it (``EVENT_ROW_COLUMNS``: numbered last, increasing)."""
    return (tid, at, kind, state, None, 0, detail, next(_event_ids))


def read(*events: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The events as the store reads them back (``EVENT_COLUMNS``: without the event id)."""
    return [e[:7] for e in events]


class Done:
    """Records ``on_done`` calls (from whatever thread the store uses) in call order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, BaseException | None]] = []
        self.seen: list[Any] = []
        self.cond = threading.Condition()

    def cb(self, tag: Any, then: Callable[[], Any] | None = None) -> Callable[[BaseException | None], None]:
        """An ``on_done`` recording ``tag``; ``then()`` runs inside it and its value goes in ``self.seen``."""
        def on_done(err: BaseException | None) -> None:
            if then is not None:
                self.seen.append(then())
            with self.cond:
                self.calls.append((tag, err))
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
        seen += [r[0] for r in page]
        if not page:
            return seen
        cursor = page[-1][0]
    raise AssertionError("paging does not end")


class StoreContract:
    """What every store does. Subclasses give the hooks named in the module docstring."""

    # ------------------------------------------------------------------ hooks
    @pytest.fixture
    def open_store(self) -> OpenStore:
        raise NotImplementedError

    def blocked(self, store: Store) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def locked(self, store: Store) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def full(self, store: Store) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def child_source(self, path: Path) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "store.db"

    @pytest.fixture
    def store(self, open_store: OpenStore, path: Path) -> Iterator[Store]:
        s = open_store(path)
        s.start()
        yield s
        s.close()

    @contextlib.contextmanager
    def writer_held(self, store: Store) -> Iterator[None]:
        """Inside, the writer is stuck committing a first (empty) batch; batches submitted meanwhile queue up."""
        d = Done()
        with self.blocked(store):
            store.submit(Batch(on_done=d.cb("held")))
            time.sleep(0.05)  # the writer takes the first batch and waits on the lock
            yield
        assert d.wait(1) == [("held", None)]

    # ------------------------------------------------------------------ commits
    def test_rows_and_events_are_visible_when_on_done_runs(self, store: Store) -> None:
        d = Done()
        batch = Batch(rows=[row(1), row(2, "running")], events=[event(1), event(2), event(2, "started", "running")],
                      on_done=d.cb("b", then=lambda: (store.get_task(1), store.get_task(2), store.events(2))))
        assert store.get_task(1) is None
        store.submit(batch)
        assert d.wait(1) == [("b", None)]
        assert d.seen[0] == (row(1), row(2, "running"), read(event(2), event(2, "started", "running")))
        assert store.get_task(3) is None and store.events(3) == []

    def test_a_timeline_without_its_first_row_starts_with_a_synthesised_enqueued_event(self, store: Store) -> None:
        # the core writes no `enqueued` row for a task ready at once; a delayed task's `scheduled` row is written
        ready, delayed = task(1), task(2, "scheduled", run_at=T0 + 5)
        assert commit(store, Batch(new_rows=[ready.new_row(), delayed.new_row()],
                                   events=[event(2, "scheduled", "scheduled"), event(1, "started", "running")])) is None
        assert store.events(1) == [(1, ready.created_at, "enqueued", "ready", None, 0, None),
                                   *read(event(1, "started", "running"))]
        assert store.events(2) == read(event(2, "scheduled", "scheduled"))
        assert store.events(3) == []

    def test_enqueue_answers_by_token_are_written_replaced_deleted_and_read_back(self, open_store: OpenStore,
                                                                              path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert store.load_requests() == ([], 1)
            rows = [(1, "c1", 0, T0, "5+1", 1, None), (2, "c1", 1, T0, "6+1", 1, None),
                    (3, "c2", 0, T0 + 1, "!5,7", 1, None)]
            assert commit(store, Batch(new_rows=[task(5).new_row()], requests=rows)) is None
            # a row written again replaces its answer; the rows below an id go in one range
            digests = b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03"  # (three requests' tasks)
            assert commit(store, Batch(requests=[(3, "c2", 0, T0 + 1, "!5,8", 1, None),
                                                 (4, "c3", 7, T0, "9+1", 3, digests)],
                                       requests_below=2)) is None
        with opened(open_store, path) as store:  # and they are there after a restart
            # (row 4 answers seqs 7, 8, 9: the next free number is 7)
            assert store.load_requests() == ([(2, "c1", 1, T0, "6+1", 1, None), (3, "c2", 0, T0 + 1, "!5,8", 1, None),
                                              (4, "c3", 7, T0, "9+1", 3, digests)], 7)

    def test_a_failed_commit_writes_no_answer_by_token(self, store: Store) -> None:
        with self.full(store):
            err = commit(store, Batch(new_rows=[task(1, payload=b"x" * 100_000).new_row()],
                                      requests=[(1, "c", 0, T0, "1+1", 1, None)]))
        assert err is not None
        assert store.load_requests() == ([], 1)

    def test_new_rows_then_upserts_in_one_commit(self, store: Store) -> None:
        t = task(1, queue="q", key="k", priority=2)
        t2 = task(2, "scheduled", run_at=T0 + 5)
        assert commit(store, Batch(new_rows=[t.new_row(), t2.new_row()],
                                   rows=[row(1, "running", queue="q", key="k", priority=2, attempt=1)])) is None
        assert store.get_task(1) == row(1, "running", queue="q", key="k", priority=2, attempt=1)
        assert store.get_task(2) == t2.row()  # the short insert leaves the other columns NULL / 0

    def test_last_row_of_a_task_wins_within_a_batch(self, store: Store) -> None:
        b = Batch(rows=[row(1, "ready"), row(2), row(1, "running", attempt=1), row(1, "failed", attempt=1)])
        assert commit(store, b) is None
        assert store.get_task(1) == row(1, "failed", attempt=1) and store.get_task(2) == row(2)

    def test_merged_batches_last_row_wins_and_events_keep_order(self, store: Store) -> None:
        d = Done()
        with self.writer_held(store):
            steps = [("ready", "enqueued"), ("running", "started"), ("failed", "failed"), ("ready", "retry"),
                     ("running", "started"), ("succeeded", "succeeded")]
            for i, (st, kind) in enumerate(steps):
                store.submit(Batch(rows=[row(1, st, attempt=i), row(100 + i)],
                                   events=[event(1, kind, st, at=T0 + i), event(100 + i)], on_done=d.cb(i)))
        calls = d.wait(len(steps))
        assert calls == [(i, None) for i in range(len(steps))]
        assert store.stats.commits <= 2  # the held first batch, then everything else together
        assert store.get_task(1) == row(1, "succeeded", attempt=5)
        assert store.events(1) == read(*(event(1, kind, st, at=T0 + i) for i, (st, kind) in enumerate(steps)))
        assert all(store.get_task(100 + i) == row(100 + i) for i in range(len(steps)))

    def test_queue_pause_ops_persist(self, open_store: OpenStore, path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert commit(store, Batch(queue_ops=[("a", True), ("b", True), ("c", True), ("c", False)])) is None
            d = Done()
            with self.writer_held(store):
                store.submit(Batch(queue_ops=[("a", False)], on_done=d.cb(1)))
                store.submit(Batch(queue_ops=[("d", True), ("a", True), ("b", False)], on_done=d.cb(2)))
            assert d.wait(2) == [(1, None), (2, None)]
        with opened(open_store, path) as store:  # a restart
            _, paused, _ = store.load()
            assert sorted(paused) == ["a", "d"]

    # ------------------------------------------------------------------ group commit
    def test_group_commit_while_the_writer_is_busy(self, open_store: OpenStore, path: Path) -> None:
        n = 100
        with opened(open_store, path, start=True) as store:
            d = Done()
            with self.writer_held(store):
                for i in range(n):
                    store.submit(Batch(rows=[row(i + 1)], events=[event(i + 1)], on_done=d.cb(i)))
            d.wait(n)
        # closed: the writer is joined, no call can come later
        assert d.calls == [(i, None) for i in range(n)]  # each batch reported once, in order
        assert store.stats.commits <= 2 < n + 1  # the held first batch, then all the others together
        assert store.stats.batches == n + 1 and store.stats.rows == n and store.stats.events == n
        assert store.stats.errors == 0

    def test_group_commit_of_batches_queued_before_start(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        d = Done()
        n = 300
        for i in range(n):
            s.submit(Batch(rows=[row(i + 1)], events=[event(i + 1)], on_done=d.cb(i)))
        s.start()
        d.wait(n)
        s.close()
        assert d.calls == [(i, None) for i in range(n)]
        assert s.stats.commits == 1 and s.stats.batches == n and s.stats.rows == n
        again = open_store(path)
        try:
            rows, _, next_id = again.load()
            assert [r[0] for r in rows] == list(range(1, n + 1)) and next_id == n + 1
        finally:
            again.close()

    def test_close_commits_what_is_queued(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.start()
        d = Done()
        for i in range(50):
            s.submit(Batch(rows=[row(i + 1)], on_done=d.cb(i)))
        s.close()
        assert d.calls == [(i, None) for i in range(50)]
        again = open_store(path)
        try:
            assert len(list(again.load()[0])) == 50
        finally:
            again.close()

    # ------------------------------------------------------------------ load
    def test_load_on_an_empty_store(self, store: Store) -> None:
        rows, paused, next_id = store.load()
        assert list(rows) == [] and paused == [] and next_id == 1

    def test_load_returns_live_rows_in_id_order(self, open_store: OpenStore, path: Path) -> None:
        rng = random.Random(7)
        ids = rng.sample(range(1, 2000), 300)
        tasks = {i: task(i, rng.choice(LIVE + FINAL), attempt=rng.randrange(3)) for i in ids}
        s = open_store(path)
        s.start()
        rng.shuffle(ids)
        for chunk in range(0, 300, 50):  # several commits, ids out of order
            assert commit(s, Batch(rows=[tasks[i].row() for i in ids[chunk:chunk + 50]],
                                   queue_ops=[(f"q{chunk}", chunk % 100 == 0)])) is None
        s.close()
        s = open_store(path)  # a restart
        try:
            rows, paused, next_id = s.load()
            expected = [tasks[i].row() for i in sorted(ids) if tasks[i].state.value in LIVE]
            assert list(rows) == expected and 0 < len(expected) < 300
            assert sorted(paused) == ["q0", "q100", "q200"]
            assert next_id == max(ids) + 1  # a finished newest task counts too
        finally:
            s.close()

    def test_next_id_counts_a_finished_newest_task(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.write_now(Batch(rows=[row(3), row(9, "succeeded", finished_at=T0)]))
        rows, _, next_id = s.load()
        assert [r[0] for r in rows] == [3] and next_id == 10
        s.close()

    # ------------------------------------------------------------------ reads
    @pytest.fixture
    def population(self, store: Store) -> dict[int, Task]:
        rng = random.Random(11)
        tasks = {i: task(i, rng.choice(LIVE + FINAL), queue=rng.choice("ab"), type_=rng.choice(["x", "y", "z"]))
                 for i in range(1, 121)}
        for lo in range(1, 121, 40):
            assert commit(store, Batch(rows=[tasks[i].row() for i in range(lo, lo + 40)])) is None
        return tasks

    def test_list_tasks_newest_first_with_filters(self, store: Store, population: dict[int, Task]) -> None:
        assert [r[0] for r in store.list_tasks(limit=1000)] == list(range(120, 0, -1))
        assert store.list_tasks(limit=3) == [population[i].row() for i in (120, 119, 118)]
        filters: list[dict[str, Any]] = [{"state": "ready"}, {"queue": "b"}, {"type": "y"},
                                         {"state": "dead", "queue": "a", "type": "z"}, {"state": "running", "type": "x"}]
        for flt in filters:
            want = [i for i in range(120, 0, -1)
                    if all(dict(zip(TASK_COLUMNS, population[i].row()))[k] == v for k, v in flt.items())]
            assert want, flt
            assert [r[0] for r in store.list_tasks(limit=1000, **flt)] == want, flt
        assert store.list_tasks(state="ready", queue="nope") == []

    def test_paging_covers_every_task_exactly_once(self, store: Store, population: dict[int, Task]) -> None:
        assert page_all(store, 7) == list(range(120, 0, -1))
        assert page_all(store, 1000) == list(range(120, 0, -1))
        want = [i for i in range(120, 0, -1) if population[i].queue == "a" and population[i].state == State.FAILED]
        assert page_all(store, 4, queue="a", state="failed") == want

    def test_count_by_state(self, store: Store, population: dict[int, Task]) -> None:
        want = collections.Counter((t.queue, t.state.value) for t in population.values())
        assert store.count_by_state() == dict(want)

    # ------------------------------------------------------------------ prune
    def test_prune_deletes_old_finished_tasks_and_their_events(self, store: Store) -> None:
        cutoff = T0 + 100
        rows = [row(1, "succeeded", finished_at=T0), row(2, "dead", finished_at=T0 + 50),
                row(3, "cancelled", finished_at=T0), row(4, "ready"), row(5, "succeeded", finished_at=T0 + 200),
                row(6, "failed", finished_at=T0),  # live (a retry is due): kept whatever its finished_at
                row(7, "running", finished_at=T0), row(8, "dead", finished_at=cutoff)]  # not *before* the cutoff
        assert commit(store, Batch(rows=rows, events=[e for i in range(1, 9) for e in (event(i), event(i, "x"))])) is None
        b = Batch(prune_before=cutoff)
        assert commit(store, b) is None
        assert b.pruned == 3
        assert [i for i in range(1, 9) if store.get_task(i) is not None] == [4, 5, 6, 7, 8]
        assert [store.events(i) for i in (1, 2, 3)] == [[], [], []]
        assert all(store.events(i) == read(event(i), event(i, "x")) for i in (4, 5, 6, 7, 8))
        assert commit(store, Batch(prune_before=cutoff)) is None  # again: nothing more goes
        assert [i for i in range(1, 9) if store.get_task(i) is not None] == [4, 5, 6, 7, 8]

    def test_ids_never_go_back_after_pruning(self, open_store: OpenStore, path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert commit(store, Batch(rows=[row(1), row(7, "succeeded", finished_at=T0)])) is None
            assert commit(store, Batch(prune_before=T0 + 1)) is None
            assert store.get_task(7) is None
        with opened(open_store, path) as store:
            assert store.load()[2] == 8

    # ------------------------------------------------------------------ durability
    def test_acknowledged_batches_survive_kill_9(self, path: Path, open_store: OpenStore) -> None:
        src = self.child_source(path) + textwrap.dedent("""
            import sys, threading, time
            from runq.app.store import Batch
            from runq.app.core import Task, State
            out = sys.stdout
            def acked(i):
                def cb(err):
                    if err is None:
                        out.write(f"{i}\\n"); out.flush()
                return cb
            s.start()
            i = 0
            while True:
                i += 1
                t = Task(i, "default", "t", i.to_bytes(4, "big"), 0, State.READY, None, 60.0, 3, 0, None, None,
                         None, None, 1.0)
                s.submit(Batch(rows=[t.row()], events=[(i, 1.0, "enqueued", "ready", None, 0, None, i)],
                               on_done=acked(i)))
                if i % 20 == 0:
                    time.sleep(0.001)
        """)
        proc = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        watchdog = threading.Timer(20.0, proc.kill)  # bounds the read loop below
        watchdog.start()
        acked: list[int] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                acked.append(int(line))
                if len(acked) >= 1500:
                    proc.kill()  # SIGKILL, while batches are still being submitted and committed
                    break
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
        assert len(acked) >= 1500, f"the child acknowledged only {len(acked)} batches"
        s = open_store(path)
        try:
            rows, _, next_id = s.load()
            stored = {r[0]: r for r in rows}
            missing = [i for i in acked if i not in stored]
            assert not missing, f"{len(missing)} acknowledged tasks lost, e.g. {missing[:5]}"
            assert all(stored[i][3] == i.to_bytes(4, "big") for i in acked)
            assert all(s.events(i) == [(i, 1.0, "enqueued", "ready", None, 0, None)] for i in acked[-20:])
            assert next_id > max(acked)
        finally:
            s.close()

    # ------------------------------------------------------------------ errors are reported, never dropped
    def test_locked_store_reports_errors_then_recovers(self, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1)])) is None
        d = Done()
        with self.locked(store):
            for i in range(3):
                store.submit(Batch(rows=[row(10 + i)], events=[event(10 + i)], on_done=d.cb(i)))
            d.wait(3)
            assert store.get_task(1) == row(1)  # reads go on meanwhile
            with pytest.raises(StoreError):
                store.check_writable()
        assert [tag for tag, _ in d.calls] == [0, 1, 2]
        for err in d.errors():
            assert isinstance(err, StoreError) and "locked" in str(err)
        assert store.stats.errors >= 1 and "locked" in (store.stats.last_error or "")
        assert all(store.get_task(10 + i) is None and store.events(10 + i) == [] for i in range(3))
        errors = store.stats.errors
        assert commit(store, Batch(rows=[row(2)], events=[event(2)])) is None
        assert store.get_task(2) == row(2) and store.events(2) == read(event(2))
        assert store.stats.errors == errors
        store.check_writable()

    def test_full_store_reports_error_and_writes_nothing(self, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1)], events=[event(1)], queue_ops=[("q", False)])) is None
        before = store.count_by_state()
        with self.full(store):
            big = Batch(rows=[row(i, payload=b"x" * 4000) for i in range(2, 300)], new_rows=[task(500).new_row()],
                        events=[event(i, detail="d" * 500) for i in range(1, 300)], queue_ops=[("q", True)])
            err = commit(store, big)
            assert isinstance(err, StoreError) and "full" in str(err)
            assert store.stats.errors == 1
            assert store.count_by_state() == before
            assert store.get_task(2) is None and store.get_task(500) is None
            assert store.events(1) == read(event(1))
        _, paused, _ = store.load()
        assert paused == []
        assert commit(store, Batch(rows=[row(2, payload=b"x" * 4000)], events=[event(2)])) is None
        assert store.get_task(2) == row(2, payload=b"x" * 4000)

    def test_a_failed_commit_fails_every_batch_in_it(self, store: Store) -> None:
        d = Done()
        with self.writer_held(store):
            store.submit(Batch(rows=[row(1)], on_done=d.cb("ok")))
            store.submit(Batch(new_rows=[task(2).new_row(), task(2).new_row()], on_done=d.cb("dup")))
        calls = d.wait(2)
        assert [tag for tag, _ in calls] == ["ok", "dup"]
        assert all(isinstance(e, StoreError) for _, e in calls)
        assert store.get_task(1) is None and store.get_task(2) is None
        assert commit(store, Batch(rows=[row(1)])) is None

    def test_an_unstorable_value_is_reported(self, store: Store) -> None:
        bad = row(1, result={"not": "bytes"})
        assert isinstance(commit(store, Batch(rows=[bad])), StoreError)
        assert commit(store, Batch(rows=[row(2)])) is None
        assert store.get_task(1) is None and store.get_task(2) == row(2)

    def test_an_int_too_large_is_reported_and_the_writer_goes_on(self, store: Store) -> None:
        d = Done()
        store.submit(Batch(rows=[row(1, result=2**64 - 1)], on_done=d.cb("big")))
        [(_, err)] = d.wait(1, timeout=1.0)
        assert isinstance(err, StoreError)
        assert commit(store, Batch(rows=[row(2)]), timeout=1.0) is None
        assert store.get_task(1) is None and store.get_task(2) == row(2)

    def test_many_rows_in_chunks_with_repeats_and_a_failure_past_the_first_chunk(self, store: Store) -> None:
        """Multi-row statements: counts that are not powers of two, rows of one task repeated across merged
        batches (the last wins), and a value refused in the third chunk: every chunk already run is rolled
        back, nothing of that commit stays, and the same writes succeed once corrected."""
        n = 1_337
        d = Done()
        with self.writer_held(store):
            store.submit(Batch(new_rows=[task(i).new_row() for i in range(1, n + 1)],
                               events=[event(i, "scheduled", "scheduled") for i in range(1, n + 1)], on_done=d.cb("a")))
            store.submit(Batch(rows=[row(i, "running", attempt=1) for i in range(1, n + 1, 2)], on_done=d.cb("b")))
            store.submit(Batch(rows=[row(i, "succeeded", attempt=1) for i in range(1, n + 1, 4)], on_done=d.cb("c")))
        assert [e for _, e in d.wait(3)] == [None, None, None]
        want = {i: "succeeded" if i % 4 == 1 else "running" if i % 2 == 1 else "ready" for i in range(1, n + 1)}
        assert dict(store.reader.execute("SELECT id, state FROM tasks")) == want
        assert all(len(store.events(i)) == 1 for i in (1, 512, 513, 1024, n))
        bad = [row(i, "dead", attempt=2) for i in range(1, 1_100)]
        bad[1_050] = row(1_051, "dead", attempt=2, result=2**64 - 1)  # beyond the first two chunks (512 + 512)
        events = [event(i, "dead", "dead") for i in range(1, 1_100)]
        assert isinstance(commit(store, Batch(rows=bad, events=events)), StoreError)
        assert dict(store.reader.execute("SELECT id, state FROM tasks")) == want
        assert store.events(1) == read(event(1, "scheduled", "scheduled"))
        bad[1_050] = row(1_051, "dead", attempt=2)
        assert commit(store, Batch(rows=bad, events=events)) is None
        assert dict(store.reader.execute("SELECT id, state FROM tasks WHERE state = 'dead'")) == \
            dict.fromkeys(range(1, 1_100), "dead")
        assert [e[2] for e in store.events(1)] == ["scheduled", "dead"]

    def test_check_writable_passes_on_a_healthy_store(self, store: Store) -> None:
        store.check_writable()
        assert commit(store, Batch(rows=[row(1)])) is None
        store.check_writable()


class TestSQLiteStore(StoreContract):
    @pytest.fixture(params=["NORMAL", "FULL"])
    def synchronous(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.fixture
    def open_store(self, synchronous: str) -> OpenStore:
        return lambda path: Store(str(path), synchronous=synchronous)

    @contextlib.contextmanager
    def blocked(self, store: Store) -> Iterator[None]:
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the writer's BEGIN IMMEDIATE waits (busy_timeout 5 s)
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    @contextlib.contextmanager
    def locked(self, store: Store) -> Iterator[None]:
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
        (pages,) = store.conn.execute("PRAGMA page_count").fetchone()
        (limit,) = store.conn.execute("PRAGMA max_page_count").fetchone()
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        try:
            yield
        finally:
            store.conn.execute(f"PRAGMA max_page_count = {limit}")

    @pytest.fixture(autouse=True)
    def _child_sync(self, synchronous: str) -> None:
        self._sync = synchronous

    def child_source(self, path: Path) -> str:
        return f"from runq.app.store import Store\ns = Store({str(path)!r}, synchronous={self._sync!r})\n"

    # ------------------------------------------------------------------ SQLite only: schema and PRAGMAs
    def test_fresh_file_gets_the_current_schema(self, store: Store, synchronous: str) -> None:
        assert store.migrated_from == 0
        conn = sqlite3.connect(store.path)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert {"tasks", "events", "queues", "meta"} <= tables
        finally:
            conn.close()
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == {"NORMAL": 1, "FULL": 2}[synchronous]
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_the_wal_file_stays_bounded_under_large_payloads_with_a_reader_open(self, open_store: OpenStore,
                                                                                path: Path) -> None:
        """Tasks of 256 KB, ten times ``wal_limit`` in all, committed by the writer thread and by
        ``commit_here`` in turn, a read-only reader (as ``runq tui --db``) querying between them: the -wal
        file stays under twice the limit (the page estimate alone would checkpoint after ~330 commits)."""
        s = open_store(path)
        s.wal_limit = 2 * 1024 * 1024
        s.start()
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        wal = Path(f"{path}-wal")
        payload = random.Random(7).randbytes(256 * 1024)
        sizes = []
        try:
            for i in range(1, 81):
                batch = Batch(new_rows=[task(i, payload=payload).new_row()])
                if i % 2 == 0 and s.commit_here([batch]):
                    pass  # (its checkpoint, when one is due, goes to the writer thread)
                else:
                    assert commit(s, batch) is None
                assert reader.execute("SELECT count(*) FROM tasks").fetchone() == (i,)
                sizes.append(wal.stat().st_size)
            assert s.conn.execute("PRAGMA journal_size_limit").fetchone() == (s.wal_limit,)
        finally:
            reader.close()
            s.close()
        assert max(sizes) < 2 * s.wal_limit, [size // 1024 for size in sizes]
        assert sizes[-1] >= s.wal_limit // 2  # (it did fill up: the bound is not met by writing nothing)
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("SELECT count(*), sum(length(payload)) FROM tasks").fetchone() == (80, 80 * len(payload))
        finally:
            conn.close()

    def test_migrate_on_an_up_to_date_file_is_a_no_op(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.write_now(Batch(rows=[row(1)]))
        s.close()
        conn = sqlite3.connect(str(path), isolation_level=None)
        schema = conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall()
        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")  # a no-op migration needs no write lock
        try:
            conn.execute("PRAGMA busy_timeout=0")
            assert migrate(conn) == SCHEMA_VERSION
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert conn.execute("SELECT * FROM sqlite_master ORDER BY name").fetchall() == schema
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
        s = open_store(path)
        try:
            assert s.migrated_from == SCHEMA_VERSION and s.get_task(1) == row(1)
        finally:
            s.close()

    def test_migration_steps_run_each_in_one_transaction(self, open_store: OpenStore, path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        open_store(path).close()
        conn = sqlite3.connect(str(path), isolation_level=None)
        monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS,
                                                       "ALTER TABLE tasks ADD COLUMN extra TEXT; NOT SQL AT ALL"])
        monkeypatch.setattr(schema_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
        with pytest.raises(sqlite3.OperationalError):
            schema_mod.migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "extra" not in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]  # rolled back
        monkeypatch.setattr(schema_mod, "MIGRATIONS", [*schema_mod.MIGRATIONS[:-1],
                                                       "ALTER TABLE tasks ADD COLUMN extra TEXT"])
        assert schema_mod.migrate(conn) == SCHEMA_VERSION
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert "extra" in [r[1] for r in conn.execute("PRAGMA table_info(tasks)")]
        conn.close()

    def test_a_version_2_file_keeps_its_answers_by_token_each_for_one_request(self, path: Path,
                                                                               open_store: OpenStore) -> None:
        conn = sqlite3.connect(str(path), isolation_level=None)
        for step in schema_mod.MIGRATIONS[:2]:  # (a file written by the runq of schema version 2)
            conn.executescript(step)
        conn.execute("INSERT INTO requests (id, client_id, seq, at, answer) VALUES (7, 'c1', 3, 1.5, '5+2')")
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        with opened(open_store, path) as store:
            assert store.migrated_from == 2
            assert store.load_requests() == ([(7, "c1", 3, 1.5, "5+2", 1, None)], 8)

    def test_a_newer_schema_is_refused_and_left_alone(self, path: Path, open_store: OpenStore) -> None:
        conn = sqlite3.connect(str(path))
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.close()
        with pytest.raises(SchemaTooNew):
            open_store(path)
        conn = sqlite3.connect(str(path))
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
            assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            conn.close()

    def test_a_second_store_on_the_same_file_is_refused_and_harms_nothing(self, store: Store, path: Path,
                                                                           open_store: OpenStore) -> None:
        """Two writers (two servers) on one file would each recover the other's running tasks and hand out
        the same ids: the second is refused before it reads or writes, and the first goes on."""
        assert commit(store, Batch(rows=[row(1, "running")])) is None
        with pytest.raises(StoreInUse, match="in use by another runq server"):
            open_store(path)
        link = path.with_name("link.db")
        link.symlink_to(path)
        with pytest.raises(StoreInUse):  # the same file by another name
            open_store(link)
        assert commit(store, Batch(rows=[row(2)])) is None  # the first one still writes
        assert store.get_task(1) == row(1, "running")
        store.close()
        again = open_store(path)  # once closed, the next one may open it
        try:
            assert again.get_task(2) == row(2)
        finally:
            again.close()

    def test_synchronous_must_be_normal_or_full(self, path: Path) -> None:
        with pytest.raises(ValueError):
            Store(str(path), synchronous="OFF")
        assert not path.exists()

    def test_the_reader_is_read_only_and_reads_while_a_write_is_open(self, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1)])) is None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.reader.execute("DELETE FROM tasks")
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM tasks")
        try:
            assert store.get_task(1) == row(1)  # the snapshot before the open write
            assert [r[0] for r in store.list_tasks()] == [1]
        finally:
            other.execute("ROLLBACK")
            other.close()

    def test_reads_go_on_while_the_writer_commits(self, store: Store) -> None:
        stop = threading.Event()
        done = Done()

        def write() -> None:
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                store.submit(Batch(rows=[row(i)], events=[event(i)], on_done=done.cb(i)))
                if i % 10 == 0:
                    time.sleep(0.001)

        t = threading.Thread(target=write)
        t.start()
        counts = []
        try:
            for _ in range(60):
                n = len(store.list_tasks(limit=10_000))
                counts.append(n)
                if n:
                    assert store.get_task(n) == row(n)  # rows commit in id order: every id <= n is there
                time.sleep(0.002)
        finally:
            stop.set()
            t.join()
        assert counts == sorted(counts) and counts[-1] > 0 and len(set(counts)) > 2
