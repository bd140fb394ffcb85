"""The SDK's side of retry policies (issue 11): a definition's policy goes in the worker's hello as its type's,
a policy given at enqueue goes in the task's entry; neither is sent where it does not belong."""

from __future__ import annotations

import pytest

import runq
from runq.protocol.messages import parse_hello
from runq.protocol.worker import Worker


class Declined(Exception):
    pass


@runq.task(retries=4, retry_policy=runq.RetryPolicy(delays=[5, 30], never_retry=[Declined]))
def charge(order: int) -> None:
    raise Declined(order)


def test_a_definitions_policy_is_its_types_in_the_hello_not_in_each_task() -> None:
    w = Worker()
    w.register(charge)
    w.task("plain")(lambda payload: None)
    opts = w._type_options()
    assert opts["charge"]["retry_policy"] == {"delays": [5.0, 30.0],
                                              "never_retry": [f"{__name__}.Declined"]}
    assert "plain" not in opts
    hello = parse_hello({"op": "hello", "version": 1, "role": "worker", "type_options": opts})
    assert hello.type_options["charge"].retry_policy == (
        '{"delays":[5.0,30.0],"never_retry":["' + f"{__name__}.Declined" + '"]}')
    entry = charge.call(order=1).entry()
    assert "retry_policy" not in entry  # (its workers send it once, as the type's)


def test_a_policy_given_at_enqueue_is_the_tasks_own() -> None:
    entry = charge.call(order=1).entry(retry_policy=runq.RetryPolicy(base=2, max=60))
    assert entry["retry_policy"] == {"base": 2.0, "max": 60.0}
    from runq.protocol.client import _task_entry

    assert _task_entry("charge", 1, retry_policy=runq.RetryPolicy(retry_on=["TimeoutError"]))["retry_policy"] == {
        "retry_on": ["TimeoutError"]}


def test_a_bad_policy_is_refused_where_it_is_built() -> None:
    with pytest.raises(ValueError, match="'jitter' must be a number from 0 to 1"):
        runq.RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="not both"):
        runq.RetryPolicy(delays=[1], base=1)
    with pytest.raises(ValueError, match="retry_policy must be a runq.RetryPolicy"):
        runq.task(retry_policy={"delays": [1]})(lambda: None)  # type: ignore[arg-type]
