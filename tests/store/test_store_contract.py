"""The store contract: one suite that every storage implementation passes.

Every test here runs once per entry of ``KITS`` (store_helpers.py): today ``SQLiteStore`` on a real file in
``tmp_path``, with ``synchronous`` NORMAL and FULL. A new store joins with one ``StoreKit`` entry there (how
to open one on a fresh database, and how to make its commits wait, fail and run out of space), and nothing
here changes. The suite talks to a store only through the ``Store`` protocol (runq/app/store/base.py) and
calls every one of its methods (``test_the_suite_calls_every_method_of_the_protocol`` checks that). What
only SQLite has (schema, PRAGMAs, migrations, its file lock) is tested in test_sqlite_store.py.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_helpers import (
    FINAL,
    KITS,
    LIVE,
    ROOT,
    T0,
    Done,
    OpenStore,
    StoreKit,
    commit,
    event,
    opened,
    page_all,
    read,
    row,
    task,
    timeline,
)

from runq.app.core import EventRecord, State, Task, TaskRecord
from runq.app.core.model import TASK_COLUMNS
from runq.app.core.records import DeadFilter
from runq.app.store import (
    Batch,
    BreakerRecord,
    Leadership,
    LimitRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
    Store,
    StoreError,
    StoreInUse,
    base,
)

R = RequestRecord
L = LimitRecord
B = BreakerRecord
E = ServerEventRecord
SR = ScheduleRecord


@pytest.fixture(params=KITS, ids=[k.name for k in KITS])
def kit(request: pytest.FixtureRequest) -> StoreKit:
    k: StoreKit = request.param
    return k


@pytest.fixture
def open_store(kit: StoreKit) -> OpenStore:
    return kit.open


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(open_store: OpenStore, path: Path) -> Iterator[Store]:
    s = open_store(path)
    s.start()
    yield s
    s.close()


@contextlib.contextmanager
def writer_held(kit: StoreKit, store: Store) -> Iterator[None]:
    """Inside, the writer is stuck committing a first (empty) batch; batches submitted meanwhile queue up."""
    d = Done()
    with kit.blocked(store):
        store.submit(Batch(on_done=d.cb("held")))
        time.sleep(0.05)  # the writer takes the first batch and waits on the lock
        yield
    assert d.wait(1) == [("held", None)]


def states(store: Store) -> dict[int, str]:
    """{id: state} of every stored task."""
    return {r.id: r.state for r in store.list_tasks(limit=1_000_000)}


class TestStoreContract:
    """What every store does."""

    # ------------------------------------------------------------------ commits
    def test_rows_and_events_are_visible_when_on_done_runs(self, store: Store) -> None:
        d = Done()
        batch = Batch(rows=[row(1), row(2, "running")], events=[event(1), event(2), event(2, "started", "running")],
                      on_done=d.cb("b", then=lambda: (store.get_task(1), store.get_task(2), timeline(store, 2))))
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
        assert timeline(store, 1) == read((1, ready.created_at, "enqueued", "ready", None, 0, None, 0),
                                          event(1, "started", "running"))
        assert timeline(store, 2) == read(event(2, "scheduled", "scheduled"))
        assert store.events(3) == []

    def test_enqueue_answers_by_token_are_written_replaced_deleted_and_read_back(self, open_store: OpenStore,
                                                                              path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert store.load_requests() == ([], 1)
            rows = [R(1, "c1", 0, T0, "5+1", 1, None), R(2, "c1", 1, T0, "6+1", 1, None),
                    R(3, "c2", 0, T0 + 1, "!5,7", 1, None)]
            assert commit(store, Batch(new_rows=[task(5).new_row()], requests=rows)) is None
            # a row written again replaces its answer; the rows below an id go in one range
            digests = b"\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03"  # (three requests' tasks)
            assert commit(store, Batch(requests=[R(3, "c2", 0, T0 + 1, "!5,8", 1, None),
                                                 R(4, "c3", 7, T0, "9+1", 3, digests)],
                                       requests_below=2)) is None
        with opened(open_store, path) as store:  # and they are there after a restart
            # (row 4 answers seqs 7, 8, 9: the next free number is 7)
            assert store.load_requests() == ([(2, "c1", 1, T0, "6+1", 1, None), (3, "c2", 0, T0 + 1, "!5,8", 1, None),
                                              (4, "c3", 7, T0, "9+1", 3, digests)], 7)

    def test_a_failed_commit_writes_no_answer_by_token(self, kit: StoreKit, store: Store) -> None:
        with kit.full(store):
            err = commit(store, Batch(new_rows=[task(1, payload=b"x" * 100_000).new_row()],
                                      requests=[R(1, "c", 0, T0, "1+1", 1, None)]))
        assert err is not None
        assert store.load_requests() == ([], 1)

    # ------------------------------------------------------------------ schedules
    def test_schedules_are_written_replaced_deleted_and_read_back_after_a_restart(self, kit: StoreKit,
                                                                                 open_store: OpenStore,
                                                                                 path: Path) -> None:
        cron = SR("nightly", "report", b"\x91\x01", "reports", 5, 30.0, 2, "0 9 * * MON-FRI", "Europe/Berlin", None,
                  "all", 7, False, T0 + 60, None, T0)
        every = SR("tick", "t", b"\xc0", None, None, None, None, None, "UTC", 0.5, "skip", 10, True, None, T0 - 1, T0)
        with opened(open_store, path, start=True) as store:
            assert store.load_schedules() == []
            assert commit(store, Batch(schedule_rows=[("nightly", cron), ("tick", every), ("gone", every._replace(
                name="gone"))])) is None
            # in one batch and across merged batches, the last row of a name wins; None deletes
            d = Done()
            with writer_held(kit, store):
                store.submit(Batch(schedule_rows=[("nightly", cron._replace(next_fire=T0 + 120)), ("gone", None)],
                                   on_done=d.cb(1)))
                store.submit(Batch(new_rows=[task(1).new_row()], on_done=d.cb(2),
                                   schedule_rows=[("nightly", cron._replace(next_fire=T0 + 180, last_fire=T0 + 120))]))
            assert d.wait(2) == [(1, None), (2, None)]
        with opened(open_store, path) as store:  # a restart: named records, by name, with their types
            loaded = store.load_schedules()
            assert loaded == [cron._replace(next_fire=T0 + 180, last_fire=T0 + 120), every]
            assert all(type(r) is SR for r in loaded) and loaded[1].paused is True and loaded[0].paused is False

    def test_a_failed_commit_writes_no_schedule_row(self, kit: StoreKit, store: Store) -> None:
        row_ = SR("s", "t", b"\xc0", None, None, None, None, None, "UTC", 1.0, "once", 10, False, T0 + 1, T0, T0)
        assert commit(store, Batch(schedule_rows=[("s", row_)])) is None
        with kit.full(store):  # (the task of the firing and the schedule's new mark: neither is written)
            err = commit(store, Batch(new_rows=[task(1, payload=b"x" * 100_000).new_row()],
                                      schedule_rows=[("s", row_._replace(next_fire=T0 + 2, last_fire=T0 + 1))]))
        assert err is not None
        assert store.load_schedules() == [row_] and store.get_task(1) is None

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

    def test_merged_batches_last_row_wins_and_events_keep_order(self, kit: StoreKit, store: Store) -> None:
        d = Done()
        with writer_held(kit, store):
            steps = [("ready", "enqueued"), ("running", "started"), ("failed", "failed"), ("ready", "retry"),
                     ("running", "started"), ("succeeded", "succeeded")]
            for i, (st, kind) in enumerate(steps):
                store.submit(Batch(rows=[row(1, st, attempt=i), row(100 + i)],
                                   events=[event(1, kind, st, at=T0 + i), event(100 + i)], on_done=d.cb(i)))
        calls = d.wait(len(steps))
        assert calls == [(i, None) for i in range(len(steps))]
        assert store.stats.commits <= 2  # the held first batch, then everything else together
        assert store.get_task(1) == row(1, "succeeded", attempt=5)
        assert timeline(store, 1) == read(*(event(1, kind, st, at=T0 + i) for i, (st, kind) in enumerate(steps)))
        assert all(store.get_task(100 + i) == row(100 + i) for i in range(len(steps)))

    def test_queue_pause_ops_persist(self, kit: StoreKit, open_store: OpenStore, path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert commit(store, Batch(queue_ops=[("a", True), ("b", True), ("c", True), ("c", False)])) is None
            d = Done()
            with writer_held(kit, store):
                store.submit(Batch(queue_ops=[("a", False)], on_done=d.cb(1)))
                store.submit(Batch(queue_ops=[("d", True), ("a", True), ("b", False)], on_done=d.cb(2)))
            assert d.wait(2) == [(1, None), (2, None)]
        with opened(open_store, path) as store:  # a restart
            _, paused, _ = store.load()
            assert sorted(paused) == ["a", "d"]

    # ------------------------------------------------------------------ limits, breakers, server events
    def test_limits_and_breakers_are_written_replaced_deleted_and_loaded_back(self, kit: StoreKit,
                                                                               open_store: OpenStore, path: Path) -> None:
        mail = L("queue", "mail", "", 10.0, 1.0, 5, None)
        per_customer = L("type", "send", "customer", None, 1.0, 1, 2)
        flaky = B("flaky", 0.5, 60.0, 10, 30.0, 1, "open", T0 + 30, False)
        by_hand = B("held", None, None, None, None, None, "open", None, True)
        with opened(open_store, path, start=True) as store:
            assert store.load_limits() == ([], [])
            assert commit(store, Batch(limits=[(mail[:3], mail), (per_customer[:3], per_customer)],
                                       breakers=[("flaky", flaky), ("held", by_hand)])) is None
            assert store.load_limits() == ([mail, per_customer], [flaky, by_hand])
            # in one commit of several batches, the last record of a key wins; None deletes it
            d = Done()
            mail2 = mail._replace(rate=2.5, burst=1, concurrency=3)
            closed = flaky._replace(state="closed", until=None)
            with writer_held(kit, store):
                store.submit(Batch(limits=[(mail[:3], None), (per_customer[:3], None)],
                                   breakers=[("flaky", flaky._replace(state="half_open"))], on_done=d.cb(1)))
                store.submit(Batch(limits=[(mail[:3], mail2)], breakers=[("flaky", closed), ("held", None)],
                                   on_done=d.cb(2)))
            assert d.wait(2) == [(1, None), (2, None)]
        with opened(open_store, path) as store:  # a restart
            limits, breakers = store.load_limits()
            assert limits == [mail2] and breakers == [closed]
            assert type(breakers[0].manual) is bool and isinstance(limits[0], LimitRecord)
            assert isinstance(breakers[0], BreakerRecord)

    def test_server_events_are_numbered_in_order_and_read_back(self, open_store: OpenStore, path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert store.server_events() == []
            first = [E(None, T0 + i, "type:send", "limit_set", f"rate {i}") for i in range(3)]
            assert commit(store, Batch(server_events=first)) is None
            assert commit(store, Batch(server_events=[E(None, T0 + 9, "type:flaky", "breaker_open", "by hand",
                                                        "alice")])) is None
        with opened(open_store, path, start=True) as store:  # they are there after a restart
            every = store.server_events()
            assert [(e.at, e.scope, e.kind, e.detail, e.actor) for e in every] == [
                (T0, "type:send", "limit_set", "rate 0", None), (T0 + 1, "type:send", "limit_set", "rate 1", None),
                (T0 + 2, "type:send", "limit_set", "rate 2", None),
                (T0 + 9, "type:flaky", "breaker_open", "by hand", "alice")]
            ids = [e.id for e in every]
            assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))  # (numbered, increasing)
            assert all(isinstance(e, ServerEventRecord) for e in every)
            assert store.server_events(limit=2) == every[2:]  # the latest ones, oldest first
            assert store.server_events(since=ids[0], limit=2) == every[1:3]  # the next ones after an id
            assert store.server_events(since=ids[-1]) == []

    def test_a_failed_commit_writes_no_limit_breaker_or_server_event(self, kit: StoreKit, store: Store) -> None:
        lim = L("queue", "q", "", None, 1.0, 1, 1)
        with kit.full(store):
            err = commit(store, Batch(new_rows=[task(1, payload=b"x" * 100_000).new_row()],
                                      limits=[(lim[:3], lim)],
                                      breakers=[("t", B("t", None, None, None, None, None, "open", None, True))],
                                      server_events=[E(None, T0, "queue:q", "limit_set", "cap 1")]))
        assert err is not None
        assert store.load_limits() == ([], []) and store.server_events() == []

    # ------------------------------------------------------------------ group commit
    def test_group_commit_while_the_writer_is_busy(self, kit: StoreKit, open_store: OpenStore, path: Path) -> None:
        n = 100
        with opened(open_store, path, start=True) as store:
            d = Done()
            with writer_held(kit, store):
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
            assert [TaskRecord(*r).id for r in rows] == list(range(1, n + 1)) and next_id == n + 1
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

    def test_a_tasks_requires_is_written_and_loaded_back(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.start()
        new = task(1, requires='{"region":"eu"}').new_row()
        assert commit(s, Batch(new_rows=[new], rows=[row(2, requires='{"gpu":"1"}'), row(3)])) is None
        s.close()
        s = open_store(path)  # a restart
        try:
            loaded = [TaskRecord(*r) for r in s.load()[0]]
            assert [(r.id, r.requires) for r in loaded] == [(1, '{"region":"eu"}'), (2, '{"gpu":"1"}'), (3, None)]
        finally:
            s.close()

    def test_a_tasks_retry_policy_is_written_and_loaded_back(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.start()
        new = task(1, retry_policy='{"delays":[5.0]}').new_row()
        assert commit(s, Batch(new_rows=[new], rows=[row(2, retry_policy='{"retry_on":["X"]}'), row(3)])) is None
        s.close()
        s = open_store(path)  # a restart
        try:
            loaded = [TaskRecord(*r) for r in s.load()[0]]
            assert [(r.id, r.retry_policy) for r in loaded] == [
                (1, '{"delays":[5.0]}'), (2, '{"retry_on":["X"]}'), (3, None)]
        finally:
            s.close()

    def test_dead_tasks_by_queue_type_error_text_and_time(self, store: Store) -> None:
        dead = [row(1, "dead", queue="a", type="x", error="ValueError: bad 50% _off_", finished_at=T0 + 1),
                row(2, "dead", queue="b", type="x", error="Traceback...\nKeyError: 'k'", finished_at=T0 + 2),
                row(3, "dead", queue="a", type="y", error="valueerror again", finished_at=T0 + 3),
                row(4, "succeeded", queue="a", type="x", error=None, finished_at=T0 + 4),
                row(5, "cancelled", queue="a", type="x", error="ValueError", finished_at=T0 + 5),
                row(6, "dead", queue="a", type="x", error=None, finished_at=T0 + 6)]
        assert commit(store, Batch(rows=dead)) is None
        F = DeadFilter

        def ids(f: DeadFilter, limit: int = 100, **kw: Any) -> list[int]:
            return [r.id for r in store.dead_tasks(f, limit, **kw)]

        assert ids(F()) == [6, 3, 2, 1]  # newest first, dead only
        assert ids(F(), oldest_first=True) == [1, 2, 3, 6]
        assert ids(F(queue="a")) == [6, 3, 1] and ids(F(type="y")) == [3] and ids(F(queue="b", type="y")) == []
        assert ids(F(error="VALUEERROR")) == [3, 1]  # a substring, without case
        assert ids(F(error="keyerror: 'k'")) == [2]
        assert ids(F(error="50% _")) == [1] and ids(F(error="5_%")) == []  # % and _ taken literally
        assert ids(F(since=T0 + 2)) == [6, 3, 2] and ids(F(until=T0 + 3)) == [2, 1]
        assert ids(F(since=T0 + 2, until=T0 + 3, queue="b")) == [2]
        assert ids(F(), 2) == [6, 3] and ids(F(), 2, cursor=3) == [2, 1]  # pages
        assert ids(F(), 2, oldest_first=True) == [1, 2]
        assert store.dead_tasks(F(type="y"), 10) == [dead[2]]

    def test_a_tasks_coalesce_key_limit_key_and_replaced_payload_are_written_and_loaded_back(
            self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.start()
        new = task(1, coalesce_key="user:7", limit_key="acme").new_row()
        assert commit(s, Batch(new_rows=[new], rows=[row(2, coalesce_key="k2"), row(3, limit_key="globex")])) is None
        # a later enqueue merged into task 1 (rule replace): its row is written again with the newest payload
        assert commit(s, Batch(rows=[row(1, coalesce_key="user:7", limit_key="acme", payload=b"\x07")])) is None
        s.close()
        s = open_store(path)  # a restart
        try:
            loaded = [TaskRecord(*r) for r in s.load()[0]]
            assert [(r.id, r.coalesce_key, r.limit_key, r.payload) for r in loaded] == [
                (1, "user:7", "acme", b"\x07"), (2, "k2", None, row(2).payload), (3, None, "globex", row(3).payload)]
        finally:
            s.close()

    def test_a_tasks_owner_is_written_loaded_back_and_filters_the_list(self, open_store: OpenStore,
                                                                        path: Path) -> None:
        s = open_store(path)
        s.start()
        new = task(1, owner="alice").new_row()
        assert commit(s, Batch(new_rows=[new], rows=[row(2, owner="bob"), row(3), row(4, "succeeded", owner="alice")])) is None
        assert [r.id for r in s.list_tasks(owner="alice")] == [4, 1]
        assert [r.id for r in s.list_tasks(owner="bob", state="ready")] == [2]
        assert [r.id for r in s.list_tasks()] == [4, 3, 2, 1]
        s.close()
        s = open_store(path)  # a restart
        try:
            loaded = [TaskRecord(*r) for r in s.load()[0]]
            assert [(r.id, r.owner) for r in loaded] == [(1, "alice"), (2, "bob"), (3, None)]
            assert s.get_task(4).owner == "alice"  # type: ignore[union-attr]
        finally:
            s.close()

    def test_principals_are_kept_beside_the_tasks_and_every_change_moves_their_version(self, store: Store) -> None:
        from runq.app.store.principals import RefreshRecord, TokenRecord, UserRecord

        ps = store.principals()
        try:
            assert (ps.users(), ps.tokens(), ps.version()) == ([], [], None)
            alice = UserRecord("alice", "user", "$argon2id$x", False, T0, T0)
            ps.add_user(alice)
            v1 = ps.version()
            assert ps.users() == [alice] and ps.user("alice") == alice and ps.user("bob") is None and v1
            with pytest.raises(ValueError):
                ps.add_user(alice)
            assert ps.update_user("alice", T0 + 1, disabled=True, password="$argon2id$y")
            assert ps.user("alice") == alice._replace(disabled=True, password="$argon2id$y", changed_at=T0 + 1)
            assert not ps.update_user("bob", T0 + 1, disabled=True) and ps.version() not in (None, v1)
            tok = TokenRecord("abcd0123", "h" * 64, "w", "worker", None, "q1,q2", T0 + 60, None, T0)
            ps.add_token(tok)
            assert ps.tokens() == [tok]
            assert ps.revoke_token("w", T0 + 2) and not ps.revoke_token("abcd0123", T0 + 3)
            assert ps.tokens() == [tok._replace(revoked_at=T0 + 2)]
            ref = RefreshRecord("00ff00ff", "r" * 64, "alice", T0 + 100, None, T0)
            ps.add_refresh(ref)
            assert ps.refresh("r" * 64) == ref and ps.refresh("x") is None
            assert ps.revoke_refresh("r" * 64, T0 + 5) and not ps.revoke_refresh("r" * 64, T0 + 6)
            ps.add_refresh(ref._replace(id="11ff00ff", hash="s" * 64))
            assert ps.revoke_user_refresh("alice", T0 + 7) == 1
            assert ps.forget_refresh(T0 + 101) == 2 and ps.refresh("s" * 64) is None
            assert ps.set_meta_once("k", "one") == "one" and ps.set_meta_once("k", "two") == "one"
            ps.audit(T0, "login_failed", "failed login from 127.0.0.1", "mallory")
        finally:
            ps.close()
        assert [(e.scope, e.kind, e.actor) for e in store.server_events()] == [("auth", "login_failed", "mallory")]

    def test_next_id_counts_a_finished_newest_task(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        s.write_now(Batch(rows=[row(3), row(9, "succeeded", finished_at=T0)]))
        rows, _, next_id = s.load()
        assert [TaskRecord(*r).id for r in rows] == [3] and next_id == 10
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
        assert [r.id for r in store.list_tasks(limit=1000)] == list(range(120, 0, -1))
        assert store.list_tasks(limit=3) == [population[i].row() for i in (120, 119, 118)]
        filters: list[dict[str, Any]] = [{"state": "ready"}, {"queue": "b"}, {"type": "y"},
                                         {"state": "dead", "queue": "a", "type": "z"}, {"state": "running", "type": "x"}]
        for flt in filters:
            want = [i for i in range(120, 0, -1)
                    if all(dict(zip(TASK_COLUMNS, population[i].row()))[k] == v for k, v in flt.items())]
            assert want, flt
            assert [r.id for r in store.list_tasks(limit=1000, **flt)] == want, flt
        assert store.list_tasks(state="ready", queue="nope") == []

    def test_paging_covers_every_task_exactly_once(self, store: Store, population: dict[int, Task]) -> None:
        assert page_all(store, 7) == list(range(120, 0, -1))
        assert page_all(store, 1000) == list(range(120, 0, -1))
        want = [i for i in range(120, 0, -1) if population[i].queue == "a" and population[i].state == State.FAILED]
        assert page_all(store, 4, queue="a", state="failed") == want

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
        assert all(timeline(store, i) == read(event(i), event(i, "x")) for i in (4, 5, 6, 7, 8))
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
    def test_acknowledged_batches_survive_kill_9(self, kit: StoreKit, path: Path, open_store: OpenStore) -> None:
        src = kit.child_source(path) + textwrap.dedent("""
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
            stored = {r.id: r for r in (TaskRecord(*r) for r in rows)}
            missing = [i for i in acked if i not in stored]
            assert not missing, f"{len(missing)} acknowledged tasks lost, e.g. {missing[:5]}"
            assert all(stored[i].payload == i.to_bytes(4, "big") for i in acked)
            assert all(s.events(i) == [(i, 1.0, "enqueued", "ready", None, 0, None, i)] for i in acked[-20:])
            assert next_id > max(acked)
        finally:
            s.close()

    # ------------------------------------------------------------------ errors are reported, never dropped
    def test_locked_store_reports_errors_then_recovers(self, kit: StoreKit, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1)])) is None
        d = Done()
        with kit.locked(store):
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
        assert store.get_task(2) == row(2) and timeline(store, 2) == read(event(2))
        assert store.stats.errors == errors
        store.check_writable()

    def test_full_store_reports_error_and_writes_nothing(self, kit: StoreKit, store: Store) -> None:
        assert commit(store, Batch(rows=[row(1)], events=[event(1)], queue_ops=[("q", False)])) is None
        before = store.count_by_state()
        with kit.full(store):
            big = Batch(rows=[row(i, payload=b"x" * 4000) for i in range(2, 300)], new_rows=[task(500).new_row()],
                        events=[event(i, detail="d" * 500) for i in range(1, 300)], queue_ops=[("q", True)])
            err = commit(store, big)
            assert isinstance(err, StoreError) and "full" in str(err)
            assert store.stats.errors == 1
            assert store.count_by_state() == before
            assert store.get_task(2) is None and store.get_task(500) is None
            assert timeline(store, 1) == read(event(1))
        _, paused, _ = store.load()
        assert paused == []
        assert commit(store, Batch(rows=[row(2, payload=b"x" * 4000)], events=[event(2)])) is None
        assert store.get_task(2) == row(2, payload=b"x" * 4000)

    def test_a_failed_commit_fails_every_batch_in_it(self, kit: StoreKit, store: Store) -> None:
        d = Done()
        with writer_held(kit, store):
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

    def test_many_rows_in_chunks_with_repeats_and_a_failure_past_the_first_chunk(self, kit: StoreKit, store: Store) -> None:
        """Multi-row statements: counts that are not powers of two, rows of one task repeated across merged
        batches (the last wins), and a value refused in the third chunk: every chunk already run is rolled
        back, nothing of that commit stays, and the same writes succeed once corrected."""
        n = 1_337
        d = Done()
        with writer_held(kit, store):
            store.submit(Batch(new_rows=[task(i).new_row() for i in range(1, n + 1)],
                               events=[event(i, "scheduled", "scheduled") for i in range(1, n + 1)], on_done=d.cb("a")))
            store.submit(Batch(rows=[row(i, "running", attempt=1) for i in range(1, n + 1, 2)], on_done=d.cb("b")))
            store.submit(Batch(rows=[row(i, "succeeded", attempt=1) for i in range(1, n + 1, 4)], on_done=d.cb("c")))
        assert [e for _, e in d.wait(3)] == [None, None, None]
        want = {i: "succeeded" if i % 4 == 1 else "running" if i % 2 == 1 else "ready" for i in range(1, n + 1)}
        assert states(store) == want
        assert all(len(store.events(i)) == 1 for i in (1, 512, 513, 1024, n))
        bad = [row(i, "dead", attempt=2) for i in range(1, 1_100)]
        bad[1_050] = row(1_051, "dead", attempt=2, result=2**64 - 1)  # beyond the first two chunks (512 + 512)
        events = [event(i, "dead", "dead") for i in range(1, 1_100)]
        assert isinstance(commit(store, Batch(rows=bad, events=events)), StoreError)
        assert states(store) == want
        assert timeline(store, 1) == read(event(1, "scheduled", "scheduled"))
        bad[1_050] = row(1_051, "dead", attempt=2)
        assert commit(store, Batch(rows=bad, events=events)) is None
        assert {i: s for i, s in states(store).items() if s == "dead"} == \
            dict.fromkeys(range(1, 1_100), "dead")
        assert [e.kind for e in store.events(1)] == ["scheduled", "dead"]

    def test_check_writable_passes_on_a_healthy_store(self, store: Store) -> None:
        store.check_writable()
        assert commit(store, Batch(rows=[row(1)])) is None
        store.check_writable()

    # ------------------------------------------------------------------ records
    def test_reads_return_named_records(self, store: Store) -> None:
        assert commit(store, Batch(new_rows=[task(1).new_row()], rows=[row(2, "running")],
                                   events=[event(2, "started", "running")],
                                   requests=[RequestRecord(1, "c", 0, T0, "1+1", 1, None)])) is None
        got = store.get_task(2)
        assert isinstance(got, TaskRecord) and got.state == "running" and got.id == 2
        assert all(isinstance(r, TaskRecord) for r in store.list_tasks())
        assert [type(e) for e in store.events(1)] == [EventRecord]  # (the rebuilt ``enqueued`` one too)
        assert all(isinstance(e, EventRecord) for e in store.events(2))
        (req,), _ = store.load_requests()
        assert isinstance(req, RequestRecord) and req.client_id == "c"
        rows, _, _ = store.load()  # (plain TaskRow tuples, for speed: runq/app/core/records.py)
        assert [TaskRecord(*r) for r in rows] == [task(1).row(), row(2, "running")]

    def test_event_ids_are_kept_and_the_rebuilt_enqueued_event_has_id_0(self, store: Store) -> None:
        started, done = event(1, "started", "running"), event(1, "succeeded", "succeeded")
        assert commit(store, Batch(new_rows=[task(1).new_row()], events=[started, done])) is None
        assert [e.id for e in store.events(1)] == [0, started.id, done.id]
        assert store.events(1)[1:] == [started, done]

    def test_next_event_id_is_above_every_stored_event(self, open_store: OpenStore, path: Path) -> None:
        with opened(open_store, path, start=True) as store:
            assert store.next_event_id() == 1
            assert commit(store, Batch(rows=[row(1)], events=[EventRecord(1, T0, "x", "ready", None, 0, None, 41),
                                                              EventRecord(1, T0, "y", "ready", None, 0, None, 7)])) is None
        with opened(open_store, path) as store:  # after a restart too
            assert store.next_event_id() == 42

    def test_write_now_commits_before_it_returns_and_raises_a_store_error(self, kit: StoreKit, store: Store) -> None:
        store.write_now(Batch(rows=[row(1)], events=[event(1)]))
        assert store.get_task(1) == row(1)
        with kit.full(store), pytest.raises(StoreError, match="full"):
            store.write_now(Batch(rows=[row(i, payload=b"x" * 4000) for i in range(2, 300)]))
        assert store.get_task(2) is None

    # ------------------------------------------------------------------ commits in the caller's thread
    def test_commit_here_commits_in_the_calling_thread_when_nothing_else_commits(self, store: Store) -> None:
        assert isinstance(store.can_commit_inline, bool)
        d = Done()
        assert store.commit_here([Batch(rows=[row(1)], on_done=d.cb(1)), Batch(rows=[row(2)], on_done=d.cb(2))])
        assert d.calls == [(1, None), (2, None)]  # reported before it returned, here, in order
        assert d.threads == [threading.current_thread()] * 2
        assert store.get_task(1) == row(1) and store.get_task(2) == row(2)

    def test_commit_here_does_nothing_while_the_writer_commits(self, kit: StoreKit, store: Store) -> None:
        d = Done()
        with writer_held(kit, store):
            assert store.commit_here([Batch(rows=[row(1)], on_done=d.cb("here"))]) is False
            assert d.calls == []
        assert store.get_task(1) is None
        assert d.calls == []

    # ------------------------------------------------------------------ leadership
    def test_an_open_store_leads_and_a_closed_one_does_not(self, open_store: OpenStore, path: Path) -> None:
        s = open_store(path)
        try:
            lead = s.leadership()
            assert isinstance(lead, Leadership) and lead.is_leader and lead.term >= 1 and lead.holder
            with pytest.raises(dataclasses.FrozenInstanceError):
                lead.is_leader = False  # type: ignore[misc]
            s.start()
            assert s.leadership().is_leader and s.leadership().term == lead.term
        finally:
            s.close()
        assert not s.leadership().is_leader

    def test_at_most_one_store_leads_a_database_and_terms_never_go_back(self, open_store: OpenStore,
                                                                           path: Path) -> None:
        first = open_store(path)
        try:
            term = first.leadership().term
            try:
                second = open_store(path)
            except StoreInUse:  # (SQLite: its file lock refuses a second store outright)
                pass
            else:  # (a store with a lease: the second one waits as a follower)
                try:
                    assert not second.leadership().is_leader
                finally:
                    second.close()
            assert first.leadership().is_leader
            again_first = first.take_leadership()  # (a leader asked to take it again: it still leads, same term)
            assert again_first.is_leader and again_first.term == term
            first.advertise("127.0.0.1:7700")  # (where its server serves: kept where the store keeps a lease)
            assert first.leadership().address in (None, "127.0.0.1:7700")
            assert commit_started(first, Batch(rows=[row(1)])) is None  # and it still writes
        finally:
            first.close()
        with opened(open_store, path) as again:  # the next one leads, in the same term or a later one
            lead = again.leadership()
            assert lead.is_leader and lead.term >= term
            assert again.get_task(1) == row(1)

    # ------------------------------------------------------------------ the protocol itself
    def test_the_suite_calls_every_method_of_the_protocol(self) -> None:
        members = {n for n, _ in inspect.getmembers(base.Store) if not n.startswith("_")} | {"stats"}
        called = {node.attr for node in ast.walk(ast.parse(Path(__file__).read_text()))
                  if isinstance(node, ast.Attribute)}
        assert members - called == set()
        assert {"leadership", "load", "load_requests", "load_schedules", "next_event_id", "load_limits", "write_now",
                "start", "submit", "commit_here", "can_commit_inline", "close", "get_task", "events", "list_tasks",
                "server_events", "check_writable", "stats", "dead_tasks", "principals", "take_leadership",
                "advertise"} == members  # (what the server and recovery call: base.py rule 1)


def commit_started(store: Store, batch: Batch) -> BaseException | None:
    """``commit`` on a store not started yet (it starts it)."""
    store.start()
    return commit(store, batch)
