"""The transition table, exhaustively."""

from __future__ import annotations

import itertools

import pytest

from runq.app.core import FINAL_STATES, TRANSITIONS, IllegalTransition, State, Transition, next_state

ALL_STATES: list[State | None] = [None, *State]


@pytest.mark.parametrize(("state", "transition"), list(itertools.product(ALL_STATES, Transition)))
def test_every_pair_is_either_in_the_table_or_illegal(state: State | None, transition: Transition) -> None:
    if (state, transition) in TRANSITIONS:
        assert next_state(state, transition) is TRANSITIONS[(state, transition)]
    else:
        with pytest.raises(IllegalTransition) as exc_info:
            next_state(state, transition)
        text = str(exc_info.value)
        assert transition.value in text and (state.value if state else "new") in text
        assert exc_info.value.code == "invalid_state"


def test_final_states_only_leave_by_retry() -> None:
    for (state, transition), _ in TRANSITIONS.items():
        if state in FINAL_STATES:
            assert transition is Transition.RETRY
    assert (State.SUCCEEDED, Transition.RETRY) not in TRANSITIONS  # a success is never re-run


def test_the_table_matches_the_documented_diagram() -> None:
    s, t = State, Transition
    assert TRANSITIONS == {
        (None, t.ENQUEUE): s.READY,
        (None, t.SCHEDULE): s.SCHEDULED,
        (s.SCHEDULED, t.PROMOTE): s.READY,
        (s.READY, t.DISPATCH): s.RUNNING,
        (s.RUNNING, t.SUCCEED): s.SUCCEEDED,
        (s.RUNNING, t.FAIL): s.FAILED,
        (s.FAILED, t.BACKOFF): s.SCHEDULED,
        (s.FAILED, t.EXHAUST): s.DEAD,
        (s.RUNNING, t.LOSE): s.READY,
        (s.RUNNING, t.LOSE_LAST): s.DEAD,
        (s.RUNNING, t.RELEASE): s.READY,
        (s.RUNNING, t.RECOVER): s.READY,
        (s.SCHEDULED, t.CANCEL): s.CANCELLED,
        (s.READY, t.CANCEL): s.CANCELLED,
        (s.RUNNING, t.CANCEL): s.CANCELLED,
        (s.DEAD, t.RETRY): s.READY,
        (s.CANCELLED, t.RETRY): s.READY,
        (s.FAILED, t.RETRY): s.READY,
        (s.SCHEDULED, t.RETRY): s.READY,
    }


def test_every_state_is_reachable_and_every_live_state_can_end() -> None:
    reachable = {None}
    frontier = [None]
    while frontier:
        cur = frontier.pop()
        for (state, _), nxt in TRANSITIONS.items():
            if state == cur and nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(ALL_STATES)
    for state in State:
        if state not in FINAL_STATES:
            assert (state, Transition.CANCEL) in TRANSITIONS or state is State.FAILED
