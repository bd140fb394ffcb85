"""Tasks found running at a start, held for the worker that ran them (``CoreConfig.reclaim``): the worker takes
them back with the attempt and the worker id stored with them (leases.py ``reclaim``, rule 5), or they go back
to ready when ``reclaim`` seconds passed (the ``RECLAIM`` timer). Driven with a fake ``now``."""

from __future__ import annotations

import random
from typing import Any

from runq.app.core import Core, CoreConfig, State, Task
from runq.app.core.effects import Effects
from runq.app.core.records import TASK_COLUMNS

T0 = 1_000.0


def core_with_running(reclaim: float = 10.0) -> Core:
    """A core restarted with task 4 (attempt 2, worker ``w1-aaaaaa``) and task 5 (attempt 1, worker
    ``w2-bbbbbb``) running, and task 6 ready."""
    core = Core(CoreConfig(reclaim=reclaim), rng=random.Random(1))
    rows = [
        Task(4, "default", "t", b"", 0, State.RUNNING, None, 30.0, 3, 2, None, None, None, None, T0, T0, None,
             "w1-aaaaaa").row(),
        Task(5, "default", "t", b"", 0, State.RUNNING, None, 30.0, 3, 1, None, None, None, None, T0, T0, None,
             "w2-bbbbbb").row(),
        Task(6, "default", "t", b"", 0, State.READY, None, 30.0, 3, 0, None, None, None, None, T0).row(),
    ]
    assert core.recover(iter(rows), [], 7, T0 + 1) == 2
    return core


def events(fx: Effects, tid: int) -> list[tuple[Any, ...]]:
    return [e[2:7] for e in fx.events if e[0] == tid]


def sent_ids(fx: Effects, wid: str) -> list[int]:
    return [t["id"] for m in fx.outbox.get(wid, []) if m["op"] == "tasks" for t in m["tasks"]]


def test_a_running_task_is_held_for_its_worker_and_taken_back_with_its_attempt_and_worker_id() -> None:
    core = core_with_running()
    fx = core.take_effects(T0 + 1)
    assert fx.events == [] and core.get(4).state is State.RUNNING and core.get(4).worker == "w1-aaaaaa"
    core.worker_joined("w3-cccccc", T0 + 2)
    core.credit("w3-cccccc", 10, T0 + 2)
    assert core.reclaim("w3-cccccc", [[4, 2, 17, "w1-aaaaaa"]], T0 + 2) == [4]
    fx = core.take_effects(T0 + 2)
    assert events(fx, 4) == [("reclaimed", "running", "w3-cccccc", 2,
                              "taken back from worker w1-aaaaaa after a server restart")]
    row = next(dict(zip(TASK_COLUMNS, r)) for r in fx.rows if r[0] == 4)
    assert (row["state"], row["worker"], row["attempt"]) == ("running", "w3-cccccc", 2)
    assert sent_ids(fx, "w3-cccccc") == [6]  # (a held task is not dispatched again; the ready one is)
    core.done("w3-cccccc", [[4, 17, b"\x01"]], T0 + 3)  # its result, under the lease the worker knows
    assert core.get(4).state is State.SUCCEEDED and core.get(4).result == b"\x01"
    core.tick(T0 + 100)  # (the RECLAIM entry of a task taken back is stale: nothing happens)
    fx = core.take_effects(T0 + 100)
    assert events(fx, 4) == [("succeeded", "succeeded", "w3-cccccc", 2, None)]


def test_a_claim_that_does_not_prove_the_same_attempt_is_refused() -> None:
    core = core_with_running()
    core.worker_joined("w3-cccccc", T0 + 2)
    core.worker_joined("w2-bbbbbb", T0 + 2)  # (a connected worker under that id: task 5 cannot be claimed by others)
    assert core.reclaim("w3-cccccc", [
        [4, 1, 17, "w1-aaaaaa"],  # another attempt
        [4, 2, 17, "w9-zzzzzz"],  # another worker
        [5, 1, 3, "w2-bbbbbb"],  # its worker id is connected now
        [6, 0, 1, "w1-aaaaaa"],  # not running
        [99, 1, 1, "w1-aaaaaa"],  # unknown
        [4, 2, 0, "w1-aaaaaa"],  # no lease number
    ], T0 + 2) == []
    assert core.get(4).worker == "w1-aaaaaa" and core.take_effects(T0 + 2).events == []
    core.done("w3-cccccc", [[4, 17, b""]], T0 + 3)  # a result without the claim: a late result
    assert core.get(4).state is State.RUNNING and core.stats.late_results == 1


def test_what_no_worker_took_back_goes_back_to_ready_after_the_reclaim_window_and_runs_again() -> None:
    core = core_with_running(reclaim=10.0)
    core.worker_joined("w3-cccccc", T0 + 2)
    core.credit("w3-cccccc", 10, T0 + 2)
    core.take_effects(T0 + 2)
    assert core.next_deadline() == T0 + 1 + 10
    core.tick(T0 + 10.9)
    assert core.get(4).state is State.RUNNING
    core.tick(T0 + 11)
    fx = core.take_effects(T0 + 11)
    detail = "server restarted while it ran; worker {} did not take it back within 10s"
    assert events(fx, 4)[0] == ("recovered", "ready", None, 2, detail.format("w1-aaaaaa"))
    assert events(fx, 5)[0] == ("recovered", "ready", None, 1, detail.format("w2-bbbbbb"))
    assert sorted(sent_ids(fx, "w3-cccccc")) == [4, 5]  # dispatched again: attempt counted once more
    assert (core.get(4).attempt, core.get(4).worker) == (3, "w3-cccccc")
    assert core.reclaim("w3-cccccc", [[4, 2, 17, "w1-aaaaaa"]], T0 + 12) == []  # too late


def test_without_reclaim_running_tasks_go_back_to_ready_at_once() -> None:
    core = core_with_running(reclaim=0.0)
    fx = core.take_effects(T0 + 1)
    assert events(fx, 4) == [("recovered", "ready", None, 2, "server restarted while it ran")]
    core.worker_joined("w3-cccccc", T0 + 2)
    assert core.reclaim("w3-cccccc", [[4, 2, 17, "w1-aaaaaa"]], T0 + 2) == []
