"""The commit-failure policy (``runq.app.core.commits``), with a fake clock (plain floats) and no store.

A ``Flow`` plays the server's part as ``Server._committed`` does, by the settlement's word and nothing
else: it takes the core's effects into numbered batches, holds the answers waiting for each, and when a
batch's commit is over (failed or not, as the test says) asks the policy, then tells, keeps or flushes as
told. What a store would hold is kept in ``disk`` from the batches that committed, so each test can check
what was written against what was answered: an answer is never told success while naming a task that was
not written, and never refused while a task it created lives on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from runq.app.core import Core, CoreConfig, Effects, State
from runq.app.core.commits import Settlement
from runq.app.core.records import ServerEventRecord
from runq.protocol.messages import TaskSpec

T0 = 1_000.0
DISK_FULL = OSError("database or disk is full")


class Answer:
    """An enqueue's answer, as the server's ``Ack`` holds it; ``told`` is what the client heard."""

    def __init__(self, res: list[tuple[int, bool]], specs: list[TaskSpec]) -> None:
        self.res = res
        self.specs: list[TaskSpec] = specs
        self.created = [tid for tid, created in res if created]
        self.told: list[BaseException | None] = []


@dataclass
class Batch:
    """What a batch wrote (the store's ``Batch`` as the policy reads it) and the answers it carries."""

    rows: list[tuple[Any, ...]]
    new_rows: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    queue_ops: list[tuple[str, bool]]
    requests: list[tuple[Any, ...]] = field(default_factory=list)
    acks: list[Answer] = field(default_factory=list)
    limits: list[tuple[Any, Any]] = field(default_factory=list)
    breakers: list[tuple[str, Any]] = field(default_factory=list)
    server_events: list[ServerEventRecord] = field(default_factory=list)
    schedule_rows: list[tuple[str, Any]] = field(default_factory=list)


class Flow:
    """The server's side, reduced to what the policy needs (see the module docstring)."""

    def __init__(self) -> None:
        self.core = Core(CoreConfig(), rng=random.Random(1))
        self.waiting: list[Answer] = []
        self.batches: list[Batch] = []  # handed to the store, not over yet, in order
        self.submitted = 0
        self.committed = 0
        self.disk: dict[int, str] = {}  # task id -> state, as committed
        self.limits_disk: dict[tuple[str, ...], Any] = {}  # limit key -> record, as committed
        self.breakers_disk: dict[str, Any] = {}  # task type -> record, as committed
        self.server_events_disk: list[tuple[str, str]] = []  # (scope, kind), as committed
        self.settlements: list[Settlement[Answer]] = []
        self.retries = 0

    def enqueue(self, now: float, *specs: TaskSpec) -> Answer:
        res = self.core.enqueue(list(specs), now)
        ack = Answer(res, list(specs))
        self.waiting.append(ack)
        return ack

    def flush(self, now: float) -> Batch:
        fx: Effects = self.core.take_effects(now)
        batch = Batch(fx.rows, fx.new_rows, fx.events, fx.queue_ops, acks=self.waiting, limits=fx.limit_rows,
                      breakers=fx.breaker_rows, server_events=[e.record() for e in fx.limit_events])
        self.waiting = []
        self.batches.append(batch)
        self.submitted += 1
        return batch

    def over(self, error: BaseException | None, now: float) -> Settlement[Answer]:
        """The oldest batch in flight is over: committed (``error`` None) or not."""
        batch = self.batches.pop(0)
        self.committed += 1
        if error is None:
            for r in batch.new_rows + batch.rows:
                self.disk[r[0]] = r[5]
            for disk, writes in ((self.limits_disk, batch.limits), (self.breakers_disk, batch.breakers)):
                for key, rec in writes:  # (in order: the last one wins, None deletes)
                    if rec is None:
                        disk.pop(tuple(key) if isinstance(key, tuple) else key, None)
                    else:
                        disk[tuple(key) if isinstance(key, tuple) else key] = rec
            self.server_events_disk += [(e.scope, e.kind) for e in batch.server_events]
        s = self.core.settle_commit(batch, batch.acks, self.waiting, error, self.committed, self.submitted, now)
        self.settlements.append(s)
        self.waiting.extend(s.keep)
        for ack in s.tell:
            ack.told.append(error)
            if error is None:  # never told success while naming a task that was not written (rule 2)
                assert all(tid in self.disk for tid, _ in ack.res), (ack.res, self.disk)
        if s.retry:
            self.retries += 1
        if s.flush:
            self.flush(now)
        return s


def spec(**kw: Any) -> TaskSpec:
    return TaskSpec(type="t", **kw)


def test_a_refused_enqueue_forgets_its_tasks_and_every_other_write_is_retried() -> None:
    f = Flow()
    (x,) = [tid for tid, _ in f.enqueue(T0, spec()).res]
    f.core.worker_joined("w1", T0)
    f.core.credit("w1", 1, T0)
    f.flush(T0)
    f.over(None, T0)
    a = f.enqueue(T0 + 1, spec(), spec(delay=5))
    f.core.done("w1", [[x, 1, b"r"]], T0 + 1)
    failed = f.flush(T0 + 1)
    assert {r[0] for r in failed.new_rows} == set(a.created)
    s = f.over(DISK_FULL, T0 + 1)
    assert (s.tell, s.keep, s.changed, s.retry, s.flush) == ([a], [], [], True, False)
    assert a.told == [DISK_FULL]
    assert all(tid not in f.core.tasks for tid in a.created) and f.core.stats.enqueued == 1
    # the retry writes x's success again, and nothing of the forgotten tasks (their delay timer is stale)
    again = f.flush(T0 + 1.5)
    assert [r[0] for r in again.rows] == [x] and again.new_rows == []
    assert [e[2] for e in again.events] == ["succeeded"] and again.events == failed.events[-1:]
    f.over(None, T0 + 1.5)
    assert f.disk == {x: "succeeded"}
    assert f.core.tick(T0 + 6) == T0 + 11  # the forgotten delayed task's entry (T0 + 6) is stale: skipped
    assert f.core.take_effects(T0 + 6).events == []


def test_an_enqueue_whose_task_was_dispatched_before_the_failure_is_kept_not_refused() -> None:
    f = Flow()
    f.core.worker_joined("w1", T0)
    f.core.credit("w1", 1, T0)
    a = f.enqueue(T0, spec())
    (tid,) = a.created
    f.flush(T0)  # enqueued and dispatched in the same batch
    s = f.over(DISK_FULL, T0)
    assert (s.tell, s.keep, s.retry) == ([], [a], True) and a.told == []
    assert f.core.get(tid).state is State.RUNNING  # it lives on: the answer waits for its rows
    f.flush(T0 + 0.5)
    f.over(None, T0 + 0.5)
    assert a.told == [None] and f.disk == {tid: "running"}


def test_a_unique_key_answer_not_handed_over_yet_is_enqueued_again_at_once() -> None:
    f = Flow()
    a = f.enqueue(T0, spec(key="k", payload=b"a"))
    (x,) = a.created
    f.flush(T0)
    b = f.enqueue(T0 + 1, spec(key="k", payload=b"b"), spec(payload=b"other"))
    assert b.res[0] == (x, False)  # "k is x": before x's commit is known to have failed
    s = f.over(DISK_FULL, T0 + 2)
    assert s.tell == [a] and s.changed == [b] and s.keep == []
    new, other = b.res
    assert new[1] and new[0] not in (x, other[0]) and new[0] in b.created
    task = f.core.get(new[0])
    assert (task.payload, task.created_at, f.core.keys["k"]) == (b"b", T0 + 2, task)  # enqueued at the failure
    f.flush(T0 + 2)
    f.over(None, T0 + 2)
    assert b.told == [None] and f.disk == {new[0]: "ready", other[0]: "ready"}


def test_a_unique_key_answer_in_a_batch_in_flight_is_enqueued_again_when_that_batch_commits() -> None:
    f = Flow()
    a = f.enqueue(T0, spec(key="k"))
    (x,) = a.created
    f.flush(T0)
    b = f.enqueue(T0 + 1, spec(key="k"), spec())
    f.flush(T0 + 1)  # b's batch is in flight behind a's
    s = f.over(DISK_FULL, T0 + 2)
    assert s.tell == [a] and s.changed == [] and f.core.commits.forgotten == {x: 2}
    s = f.over(None, T0 + 3)  # b's batch committed, but b names x, which never was
    assert (s.tell, s.keep, s.changed, s.flush) == ([], [b], [b], True)
    assert b.told == [] and b.res[0][1] and f.core.get(b.res[0][0]).created_at == T0 + 3
    assert f.core.commits.forgotten == {}  # no batch in flight can name x any more
    f.over(None, T0 + 3)  # the batch of the new task
    assert b.told == [None]


def test_a_unique_key_answer_kept_by_a_second_failure_is_enqueued_again() -> None:
    """Batch 1 (A creates x with key k) and batch 2 (B: 'k is x', and a task that was dispatched at once)
    both fail. B is kept (its dispatched task lives on), and must not be answered later with x."""
    f = Flow()
    f.core.worker_joined("w1", T0)
    a = f.enqueue(T0, spec(key="k", queue="q"))
    (x,) = a.created
    f.flush(T0)
    b = f.enqueue(T0 + 1, spec(key="k", queue="q"), spec())
    f.core.credit("w1", 1, T0 + 1)
    f.flush(T0 + 1)
    f.over(DISK_FULL, T0 + 2)  # a refused, x forgotten; b's batch still in flight
    s = f.over(DISK_FULL, T0 + 2)
    assert s.keep == [b] and s.changed == [b] and b.res[0][0] != x
    f.flush(T0 + 3)
    f.over(None, T0 + 3)
    assert b.told == [None] and set(f.disk) == {tid for tid, _ in b.res}


def test_the_idempotency_rows_of_a_failed_batch_are_restored_and_a_prune_needs_no_answer() -> None:
    f = Flow()
    f.enqueue(T0, spec())
    batch = f.flush(T0)
    batch.requests = [(1, "client", 0, T0, "1+1")]
    assert f.over(DISK_FULL, T0).restore_requests
    batch = f.flush(T0)
    batch.requests = [(1, "client", 0, T0, "1+1")]
    assert not f.over(None, T0).restore_requests
    prune = Batch([], [], [], [])
    s = f.core.settle_commit(prune, [], [], DISK_FULL, 3, 3, T0)
    assert (s.tell, s.keep, s.changed, s.retry, s.restore_requests) == ([], [], [], True, False)


def test_a_pause_whose_commit_failed_is_kept_for_the_retry_not_refused() -> None:
    """A pause stays in effect in memory and its write is put back: refusing its answer (store_error) would say
    the queue is not paused while it is (issue 10). It is kept, and told by the commit that writes it."""
    f = Flow()
    f.core.pause("q", T0)
    pause = Answer([], [])
    f.waiting.append(pause)
    failed = f.flush(T0)
    assert failed.queue_ops == [("q", True)]
    s = f.over(DISK_FULL, T0)
    assert (s.tell, s.keep, s.retry) == ([], [pause], True) and pause.told == []
    again = f.flush(T0 + 0.5)
    assert again.queue_ops == [("q", True)] and again.acks == [pause]
    f.over(None, T0 + 0.5)
    assert pause.told == [None]


def test_the_limits_and_breakers_of_a_failed_batch_are_written_again_as_they_are_now() -> None:
    """A batch that set a cap and a breaker fails, after a later batch removed the cap committed: the retry
    writes the cap's removal (not the older record, which would bring a removed limit back at the next
    start), the breaker as it is now, and the failed batch's events before the ones made since."""
    f = Flow()
    core = f.core
    core.set_limit(("queue", "q"), T0, concurrency=1)
    core.set_breaker("t", T0, min_calls=2)
    failed = f.flush(T0)
    assert [k for k, _ in failed.limits] == [("queue", "q", "")] and [t for t, _ in failed.breakers] == ["t"]
    assert [e.kind for e in failed.server_events] == ["limit_set", "breaker_set"]
    core.remove_limit(("queue", "q"), T0 + 1)
    f.flush(T0 + 1)
    s = f.over(DISK_FULL, T0 + 1)
    assert s.retry
    f.over(None, T0 + 1)  # the removal commits
    assert f.limits_disk == {} and f.server_events_disk == [("queue:q", "limit_removed")]
    core.open_breaker("t", T0 + 2, "by hand")
    again = f.flush(T0 + 2)
    assert again.limits == [(("queue", "q", ""), None)]
    assert [e.kind for e in again.server_events] == ["limit_set", "breaker_set", "breaker_open"]
    assert [e.at for e in again.server_events] == [T0, T0, T0 + 2]
    f.over(None, T0 + 2)
    assert f.limits_disk == {}
    assert f.breakers_disk["t"].state == "open" and f.breakers_disk["t"].manual is True
    assert f.breakers_disk == {"t": core.stored_limits()[1][0]}
    assert [k for _, k in f.server_events_disk] == ["limit_removed", "limit_set", "breaker_set", "breaker_open"]
    # a commit that succeeds puts nothing back
    core.set_limit(("type", "t"), T0 + 3, rate=5)
    f.flush(T0 + 3)
    f.over(None, T0 + 3)
    after = f.flush(T0 + 3)
    assert (after.limits, after.breakers, after.server_events) == ([], [], [])
    assert f.limits_disk == {("type", "t", ""): core.stored_limits()[0][0]}
