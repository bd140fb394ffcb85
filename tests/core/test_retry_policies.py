"""Retry policies (runq/app/core/retries.py): the pure rule ``decide`` and the core driven with a fake clock.

Each layer (the task's own policy given at enqueue, its type's from the worker's hello, the server's default) and
each part (the backoff, ``retry_on``, ``never_retry``) is checked against delays written out here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from runq.app.core import Core, CoreConfig, State
from runq.app.core.records import NewTaskRecord
from runq.app.core.retries import TIMEOUT_TYPE, decide
from runq.protocol.errors import ProtocolError
from runq.protocol.messages import TaskSpec, TypeOptions, check_task_spec, parse_hello
from runq.protocol.retry_policy import RetryPolicy, check_retry_policy, error_type_names, matches, policy_text

T0 = 1_000.0
DEFAULT = (1.0, 3600.0, 0.25)
VALUE_ERROR = ["builtins.ValueError", "builtins.Exception", "builtins.BaseException"]
CONN_RESET = ["builtins.ConnectionResetError", "builtins.ConnectionError", "builtins.OSError",
              "builtins.Exception", "builtins.BaseException"]


def P(**kw: Any) -> RetryPolicy:
    return RetryPolicy(**kw)


def delays(layers: list[RetryPolicy | None], attempts: int, rand: float = 0.5,
           default: tuple[float, float, float] = DEFAULT) -> list[float | None]:
    return [decide(layers, default, a, 1000, (), None, lambda: rand).delay for a in range(1, attempts + 1)]


# ---------------------------------------------------------------------- the pure rule
def test_a_list_of_delays_is_followed_exactly_and_its_last_one_repeats() -> None:
    assert delays([P(delays=(5, 30, 120)), None], 5) == [5.0, 30.0, 120.0, 120.0, 120.0]
    # no jitter on a fixed list, whatever the random number
    assert delays([P(delays=(5, 30)), None], 2, rand=0.0) == [5.0, 30.0]


def test_an_exponential_backoff_stays_within_its_jitter_and_under_its_cap() -> None:
    pol = P(base=2.0, max=20.0, jitter=0.5)
    assert delays([pol, None], 5, rand=0.5) == [2.0, 4.0, 8.0, 16.0, 20.0]  # factor 1
    assert delays([pol, None], 5, rand=0.0) == [1.0, 2.0, 4.0, 8.0, 10.0]  # factor 1 - jitter
    high = delays([pol, None], 5, rand=1.0)  # factor 1 + jitter; the cap applies after the jitter
    assert high == [3.0, 6.0, 12.0, 20.0, 20.0]
    rng = random.Random(7)
    for attempt in range(1, 8):
        got = [decide([pol, None], DEFAULT, attempt, 99, (), None, rng.random).delay for _ in range(300)]
        centre = min(2.0 * 2 ** (attempt - 1), 20.0)
        assert all(g is not None and centre * 0.5 <= g <= min(centre * 1.5, 20.0) for g in got)


def test_unset_backoff_parts_of_a_layer_come_from_the_servers_default() -> None:
    # the type sets only max: base and jitter are the server's (1 s, no jitter here)
    assert delays([None, P(max=3.0)], 4, default=(1.0, 3600.0, 0.0)) == [1.0, 2.0, 3.0, 3.0]
    assert delays([None, None], 3, default=(1.5, 10.0, 0.0)) == [1.5, 3.0, 6.0]


def test_retry_on_retries_only_the_named_types_and_matches_base_classes_by_short_or_full_name() -> None:
    for names in (("ConnectionError",), ("builtins.ConnectionError",), ("OSError", "KeyError")):
        d = decide([P(retry_on=names), None], DEFAULT, 1, 3, CONN_RESET, None, lambda: 0.5)
        assert d.delay == 1.0
    d = decide([P(retry_on=("ConnectionError",)), None], DEFAULT, 1, 3, VALUE_ERROR, None, lambda: 0.5)
    assert d.delay is None and d.detail == "builtins.ValueError is not in retry_on (1 attempt)"
    # a part of a name is not a match: "Error" names no class here, "ionError" neither
    assert matches(["Error", "ionError"], CONN_RESET) is None
    # a failure that names no type matches nothing: with retry_on it goes dead
    assert decide([P(retry_on=("ValueError",)), None], DEFAULT, 1, 3, (), None, lambda: 0.5).delay is None
    # an empty retry_on means any
    assert decide([P(retry_on=()), None], DEFAULT, 1, 3, VALUE_ERROR, None, lambda: 0.5).delay == 1.0


def test_never_retry_goes_dead_at_once_and_wins_over_retry_on() -> None:
    pol = P(retry_on=("Exception",), never_retry=("ValueError",))
    d = decide([pol, None], DEFAULT, 1, 3, VALUE_ERROR, None, lambda: 0.5)
    assert d.delay is None and d.detail == "builtins.ValueError is in never_retry (1 attempt)"
    assert decide([pol, None], DEFAULT, 1, 3, CONN_RESET, None, lambda: 0.5).delay == 1.0


def test_retries_still_bound_the_attempts_and_retry_in_bypasses_the_lists() -> None:
    pol = P(delays=(5,), retry_on=("ConnectionError",), never_retry=("ValueError",))
    assert decide([pol, None], DEFAULT, 3, 2, CONN_RESET, None, lambda: 0.5).delay is None  # 3 attempts of 3
    # the handler asked (raise Retry(7)): neither list applies, its delay replaces the policy's
    assert decide([pol, None], DEFAULT, 1, 2, (), 7.0, lambda: 0.5).delay == 7.0
    assert decide([pol, None], DEFAULT, 1, 2, VALUE_ERROR, 7.0, lambda: 0.5).delay == 7.0


def test_each_part_comes_from_the_first_layer_that_sets_it() -> None:
    own, typed = P(delays=(9,)), P(base=100.0, never_retry=("ValueError",), retry_on=("KeyError",))
    # backoff from the task's own layer, never_retry and retry_on from the type's
    assert decide([own, typed], DEFAULT, 1, 3, ["builtins.KeyError"], None, lambda: 0.5).delay == 9.0
    assert decide([own, typed], DEFAULT, 1, 3, VALUE_ERROR, None, lambda: 0.5).delay is None
    # the task's own retry_on replaces the type's (an empty one: any type)
    own2 = P(retry_on=())
    assert decide([own2, typed], DEFAULT, 1, 3, CONN_RESET, None, lambda: 0.5).delay == 100.0


# ---------------------------------------------------------------------- the wire's check
@pytest.mark.parametrize(("raw", "says"), [
    ({"delays": [1], "base": 2}, "not both"),
    ({"delays": []}, "'delays'"),
    ({"delays": [-1]}, "'delays'"),
    ({"jitter": 1.5}, "'jitter'"),
    ({"base": 5, "max": 1}, "'max' must not be below 'base'"),
    ({"max": 0}, "'max'"),
    ({"retry_on": "ValueError"}, "'retry_on'"),
    ({"never_retry": [""]}, "'never_retry'"),
    ({"retry_on": ["x"] * 65}, "'retry_on'"),
    ({"backoff": 1}, "unknown field"),
    ({"base": True}, "'base'"),
])
def test_a_bad_policy_is_refused_naming_the_field(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(ProtocolError, match=says) as info:
        check_task_spec(TaskSpec("t", retry_policy=raw))
    assert info.value.code == "bad_request"
    if "retry_on" in raw and isinstance(raw["retry_on"], str):
        return  # (the SDK takes one name or class for a list of one)
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()
                       if k in ("delays", "base", "max", "jitter", "retry_on", "never_retry")} or {"jitter": 2.0})


def test_a_policy_is_normalised_and_an_empty_one_is_none() -> None:
    assert check_retry_policy({}) is None
    assert check_task_spec(TaskSpec("t", retry_policy={})).retry_policy is None
    got = check_retry_policy({"delays": [1, 2], "retry_on": ["A", "A", "B"]})
    assert got == {"delays": [1.0, 2.0], "retry_on": ["A", "B"]}
    assert policy_text(got) == '{"delays":[1.0,2.0],"retry_on":["A","B"]}'
    assert RetryPolicy(retry_on=[ConnectionError], never_retry=ValueError).wire() == {
        "retry_on": ["builtins.ConnectionError"], "never_retry": ["builtins.ValueError"]}


def test_a_bad_type_policy_refuses_the_hello() -> None:
    hello = {"op": "hello", "version": 1, "role": "worker",
             "type_options": {"t": {"retry_policy": {"jitter": 3}}}}
    with pytest.raises(ProtocolError, match="'t'.*'jitter'") as info:
        parse_hello(hello)
    assert info.value.code == "bad_message"
    hello["type_options"] = {"t": {"retry_policy": {"delays": [2]}}}
    assert parse_hello(hello).type_options["t"].retry_policy == '{"delays":[2.0]}'


def test_a_worker_reports_the_whole_class_chain() -> None:
    class Flaky(ConnectionResetError):
        pass

    names = error_type_names(Flaky("x"))
    assert names[0].endswith("Flaky") and names[1:] == CONN_RESET
    assert matches(["ConnectionError"], names) == "builtins.ConnectionError"


# ---------------------------------------------------------------------- the core, with a fake clock
def make(**cfg: Any) -> Core:
    return Core(CoreConfig(**cfg), rng=random.Random(1))


def start(core: Core, now: float) -> dict[str, Any]:
    core.credit("w1", 1, now)
    (msg,) = [m for m in core.take_effects(now).outbox["w1"] if m["op"] == "tasks"]
    (t,) = msg["tasks"]
    return t  # type: ignore[no-any-return]


def fail_times(core: Core, tid: int, error_types: list[str], times: int, now: float = T0) -> list[float | None]:
    """Run and fail the task ``times`` times at each due time; the delay each failure got (None: dead)."""
    out: list[float | None] = []
    for _ in range(times):
        t = start(core, now)
        core.fail("w1", tid, t["lease"], "boom", now, error_types=error_types)
        task = core.get(tid)
        if task.state is State.DEAD:
            out.append(None)
            break
        assert task.run_at is not None
        out.append(task.run_at - now)
        now = task.run_at
        core.heartbeat("w1", now)
        core.tick(now)
    return out


def test_a_task_follows_its_own_list_of_delays() -> None:
    core = make(jitter=0.0)
    core.worker_joined("w1", T0)
    ((tid, _),) = core.enqueue([check_task_spec(TaskSpec("t", retries=4, retry_policy={"delays": [5, 30]}))], T0)
    assert fail_times(core, tid, VALUE_ERROR, 5) == [5.0, 30.0, 30.0, 30.0, None]
    assert core.get(tid).attempt == 5


def test_per_enqueue_overrides_per_type_overrides_the_server_default() -> None:
    typed = TypeOptions(retry_policy=policy_text({"delays": [7.0], "never_retry": ["ValueError"]}))

    def case(spec: TaskSpec, error_types: list[str]) -> tuple[list[float | None], Core]:
        core = make(backoff_base=2.0, jitter=0.0)
        core.worker_joined("w1", T0, type_options={"typed": typed})
        ((tid, _),) = core.enqueue([check_task_spec(spec)], T0)
        return fail_times(core, tid, error_types, 2), core

    assert case(TaskSpec("plain"), CONN_RESET)[0] == [2.0, 4.0]  # the server's default
    assert case(TaskSpec("typed"), CONN_RESET)[0] == [7.0, 7.0]  # the type's
    own = TaskSpec("typed", retry_policy={"delays": [11]})
    assert case(own, CONN_RESET)[0] == [11.0, 11.0]  # its own delays...
    # ... and the type's never_retry, which its own policy does not set
    got, core = case(own, VALUE_ERROR)
    assert got == [None] and core.finished[1].attempt == 1
    (dead_event,) = [e for e in core.take_effects(T0).events if e.kind == "dead"]
    assert dead_event.detail == "builtins.ValueError is in never_retry (1 attempt)"
    # its own never_retry (empty: none) replaces the type's
    got, _ = case(TaskSpec("typed", retry_policy={"never_retry": []}), VALUE_ERROR)
    assert got == [7.0, 7.0]


def test_a_timeout_counts_as_timeout_error() -> None:
    core = make(jitter=0.0, lease_timeout=10.0)
    core.worker_joined("w1", T0)
    (a, _), (b, _), (c, _) = core.enqueue([
        check_task_spec(TaskSpec("t", timeout=5, retry_policy={"retry_on": ["TimeoutError"], "delays": [3]})),
        check_task_spec(TaskSpec("t", timeout=5, retry_policy={"retry_on": ["ConnectionError"]})),
        check_task_spec(TaskSpec("t", timeout=5, retry_policy={"never_retry": ["TimeoutError"]}))], T0)
    ta = start(core, T0)
    core.fail("w1", a, ta["lease"], "timeout", T0, timed_out=True)
    assert core.get(a).state is State.SCHEDULED and core.get(a).run_at == T0 + 3
    tb = start(core, T0)
    core.fail("w1", b, tb["lease"], "timeout", T0, timed_out=True)
    assert core.get(b).state is State.DEAD
    # the server's backstop (no word from the worker within timeout + lease_timeout) is a timeout too
    start(core, T0)
    for now in range(int(T0), int(T0) + 16):
        core.heartbeat("w1", float(now))
        core.tick(float(now))
    assert core.get(c).state is State.DEAD and TIMEOUT_TYPE.endswith("TimeoutError")


def test_a_policy_survives_in_the_tasks_row() -> None:
    core = make()
    ((tid, _),) = core.enqueue([check_task_spec(TaskSpec("t", retry_policy={"delays": [4], "retry_on": ["X"]}))], T0)
    (row,) = core.take_effects(T0).new_rows
    assert NewTaskRecord(*row).retry_policy == '{"delays":[4.0],"retry_on":["X"]}'
    other = make(jitter=0.0)
    other.recover(iter([core.get(tid).row()]), [], tid + 1, T0)
    other.worker_joined("w1", T0)
    assert fail_times(other, tid, ["X"], 1) == [4.0]


# ---------------------------------------------------------------------- deleting a dead task
def test_a_dead_task_is_deleted_to_cancelled_keeping_the_counts_and_only_a_dead_one() -> None:
    from runq.app.core import IllegalTransition, Task

    core = make()
    core.worker_joined("w1", T0)
    ((tid, _), (live, _)) = core.enqueue([TaskSpec("t", retries=0), TaskSpec("t")], T0)
    t = start(core, T0)
    core.fail("w1", tid, t["lease"], "boom", T0, error_types=VALUE_ERROR)
    assert core.finished[tid].state is State.DEAD
    counts = {k: v for k, v in core.counts["default"].items() if v}
    core.take_effects(T0)
    deleted = core.delete_dead(tid, T0 + 1, detail="deleted by ops")
    assert deleted.state is State.CANCELLED and deleted.error == "boom" and deleted.finished_at == T0
    assert {k: v for k, v in core.counts["default"].items() if v} == counts  # final: not counted as live
    fx = core.take_effects(T0 + 1)
    assert [(e.kind, e.state, e.detail) for e in fx.events] == [("deleted", "cancelled", "deleted by ops")]
    assert [r.state for r in fx.rows] == ["cancelled"]
    with pytest.raises(IllegalTransition):
        core.delete_dead(tid, T0 + 2)  # (cancelled now)
    with pytest.raises(IllegalTransition):
        core.delete_dead(live, T0 + 2)  # (a live task: ready or running)
    # a dead task read back from the store (no longer in memory)
    row = deleted.row()._replace(id=99, state="dead")
    other = make()
    gone = other.delete_dead(99, T0, Task.from_row(row))
    assert gone.state is State.CANCELLED and 99 in other.finished and other.counts["default"]["cancelled"] == 0


def test_a_fail_with_bad_error_types_is_refused_by_the_operations_layer() -> None:
    from runq.app.ops import BadRequest, Fail
    from runq.app.ops.inputs import check_fail

    assert check_fail(Fail(1, 1, "x", error_types=("builtins.ValueError",))).error_types == ("builtins.ValueError",)
    for bad in (("x",) * 65, ("",), ("x" * 301,), (7,)):
        with pytest.raises(BadRequest, match="'error_types'"):
            check_fail(Fail(1, 1, "x", error_types=bad))  # type: ignore[arg-type]
