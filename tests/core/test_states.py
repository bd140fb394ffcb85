"""The transition table, exhaustively; and the two places that describe it in words.

Every (state or new) x transition pair is either in ``TRANSITIONS`` or raises ``IllegalTransition``
naming both. The diagram in the docstring of ``states.py`` and the table in ``docs/semantics.md``
are parsed and compared with the table, so neither can drift from the code.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from runq.app.core import FINAL_STATES, TRANSITIONS, IllegalTransition, State, Transition, next_state
from runq.app.core import states as states_module
from runq.app.core.effects import ENQUEUE_STEP
from runq.app.core.states import STEPS

ALL_STATES: list[State | None] = [None, *State]
LIVE_STATES = [s for s in State if s not in FINAL_STATES]
SEMANTICS_MD = Path(__file__).resolve().parents[2] / "docs" / "semantics.md"


def _name(state: State | None) -> str:
    return state.value if state is not None else "new"


@pytest.mark.parametrize(("state", "transition"), list(itertools.product(ALL_STATES, Transition)),
                         ids=lambda x: _name(x) if not isinstance(x, Transition) else x.name)
def test_every_pair_is_either_in_the_table_or_illegal(state: State | None, transition: Transition) -> None:
    if (state, transition) in TRANSITIONS:
        nxt = next_state(state, transition)
        assert nxt is TRANSITIONS[(state, transition)] and isinstance(nxt, State)
    else:
        with pytest.raises(IllegalTransition) as exc_info:
            next_state(state, transition)
        exc = exc_info.value
        text = str(exc)
        assert repr(transition.value) in text and repr(_name(state)) in text, text
        assert exc.state is state and exc.transition is transition
        assert exc.code == "invalid_state"


#: The rules of docs/semantics.md ("States and transitions"), written out by hand as (from, event kind, to):
#: the table in the code must be exactly this list, no pair more, no pair less.
EXPECTED = [
    ("new", "enqueued", "ready"),
    ("new", "scheduled", "scheduled"),
    ("scheduled", "due", "ready"),
    ("ready", "started", "running"),
    ("running", "succeeded", "succeeded"),
    ("running", "failed", "failed"),
    ("failed", "retry_scheduled", "scheduled"),
    ("failed", "dead", "dead"),
    ("running", "lost", "ready"),
    ("running", "lost_dead", "dead"),
    ("running", "released", "ready"),
    ("running", "recovered", "ready"),
    ("scheduled", "cancelled", "cancelled"),
    ("ready", "cancelled", "cancelled"),
    ("running", "cancelled", "cancelled"),
    ("dead", "retried", "ready"),
    ("cancelled", "retried", "ready"),
    ("failed", "retried", "ready"),
    ("scheduled", "retried", "ready"),
    ("dead", "deleted", "cancelled"),
]


def test_the_table_is_the_list_written_out_here() -> None:
    table = sorted((_name(state), tr.value, after.value) for (state, tr), after in TRANSITIONS.items())
    assert table == sorted(EXPECTED)


def test_the_precomputed_steps_are_the_table() -> None:
    """``STEPS`` (what the core's hot paths read) says what the written-out list says, names included."""
    steps = sorted((_name(state), step.kind, step.name) for (state, tr), step in STEPS.items())
    assert steps == sorted(EXPECTED)
    for (state, tr), step in STEPS.items():
        assert step.kind == tr.value and step.state is State(step.name), (state, tr)
    # the step enqueue applies itself (rule 1 of queue.py) is the list's, read from the table
    assert ("new", ENQUEUE_STEP.kind, ENQUEUE_STEP.name) == ("new", "enqueued", "ready")
    assert ENQUEUE_STEP is STEPS[(None, Transition.ENQUEUE)]


def test_the_table_is_not_empty_and_only_holds_states_and_transitions() -> None:
    assert len(TRANSITIONS) == 20
    for (state, transition), nxt in TRANSITIONS.items():
        assert state is None or isinstance(state, State)
        assert isinstance(transition, Transition) and isinstance(nxt, State)


def test_final_states_only_leave_by_retry_or_a_dead_tasks_delete() -> None:
    assert FINAL_STATES == {State.SUCCEEDED, State.DEAD, State.CANCELLED}
    for final in FINAL_STATES:
        outgoing = {tr for (st, tr) in TRANSITIONS if st is final}
        # a success is never re-run; dead and cancelled tasks can be retried by hand; a dead one deleted
        expected = {State.SUCCEEDED: set(), State.CANCELLED: {Transition.RETRY},
                    State.DEAD: {Transition.RETRY, Transition.DELETE}}[final]
        assert outgoing == expected, final
        assert TRANSITIONS.get((final, Transition.RETRY), State.READY) is State.READY


def test_a_new_task_is_only_created_by_enqueue_or_schedule() -> None:
    assert {tr: nxt for (st, tr), nxt in TRANSITIONS.items() if st is None} == {
        Transition.ENQUEUE: State.READY, Transition.SCHEDULE: State.SCHEDULED}
    assert all(nxt is not None for nxt in TRANSITIONS.values())


def test_every_state_is_reachable_and_every_live_state_can_end() -> None:
    reachable: set[State | None] = {None}
    frontier: list[State | None] = [None]
    while frontier:
        cur = frontier.pop()
        for (state, _), nxt in TRANSITIONS.items():
            if state is cur and nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(ALL_STATES)
    # every stored live state can be cancelled; failed is passed through in the same step
    for state in LIVE_STATES:
        assert ((state, Transition.CANCEL) in TRANSITIONS) == (state is not State.FAILED), state
    # failed always leaves at once: to scheduled (backoff) or dead (exhaust)
    assert {tr for (st, tr) in TRANSITIONS if st is State.FAILED} == {
        Transition.BACKOFF, Transition.EXHAUST, Transition.RETRY}


def test_transition_values_are_distinct_event_kinds() -> None:
    values = [t.value for t in Transition]
    assert len(values) == len(set(values))
    assert "late_result" not in values and "progress" not in values  # those are not transitions


# ---------------------------------------------------------------------- the docstring diagram
_ARROW = re.compile(r"\s*--(\w+)-->\s*")


def _diagram_states(text: str) -> list[State | None]:
    text = text.strip()
    if text == "any non-final":
        # ``failed`` is not a state a task rests in (the docstring says so): cancel applies to the others
        return [s for s in LIVE_STATES if s is not State.FAILED]
    out: list[State | None] = []
    for word in text.split("|"):
        word = word.strip()
        out.append(None if word == "new" else State(word))
    return out


def _parse_diagram(doc: str) -> dict[tuple[State | None, Transition], State]:
    body = doc.split("the whole of the rules:", 1)[1].split("``failed``", 1)[0]
    table: dict[tuple[State | None, Transition], State] = {}
    for line in body.splitlines():
        line = line.split("  (", 1)[0].split(" (", 1)[0].strip()
        if "-->" not in line:
            continue
        parts = _ARROW.split(line)  # [src, name, dst, name, dst, ...]
        for i in range(1, len(parts), 2):
            tr = Transition[parts[i].upper()]
            (dst,) = _diagram_states(parts[i + 1].split()[0])
            assert dst is not None
            for src in _diagram_states(parts[i - 1] if i == 1 else parts[i - 1].split()[0]):
                assert (src, tr) not in table, f"{src} {tr} twice in the diagram"
                table[(src, tr)] = dst
    return table


def test_the_table_matches_the_docstring_diagram() -> None:
    assert states_module.__doc__ is not None
    diagram = _parse_diagram(states_module.__doc__)
    # the diagram starts at an existing task: creation (enqueue/schedule) is described in the table only
    created = {k: v for k, v in TRANSITIONS.items() if k[0] is None}
    assert diagram == {k: v for k, v in TRANSITIONS.items() if k[0] is not None}
    assert len(diagram) + len(created) == len(TRANSITIONS)


# ---------------------------------------------------------------------- docs/semantics.md
def _parse_semantics_table(md: str) -> dict[tuple[State | None, Transition], State]:
    section = md.split("<!-- transition-table -->", 2)[1]
    table: dict[tuple[State | None, Transition], State] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`"):
            continue
        kind = cells[1].split("`")[1]
        tr = Transition(kind)
        dst = State(cells[2])
        for src in cells[0].split(","):
            src = src.strip()
            key = (None if src == "new" else State(src), tr)
            assert key not in table
            table[key] = dst
    return table


def test_the_semantics_doc_table_is_the_transition_table() -> None:
    assert _parse_semantics_table(SEMANTICS_MD.read_text()) == TRANSITIONS
