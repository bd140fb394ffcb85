"""The task state machine: every legal transition in one table.

Theory of operation
-------------------
A task is always in exactly one ``State``. Something that happens to it is a
``Transition`` (an input event of the core). ``TRANSITIONS`` maps each legal
(state, transition) pair to the next state; ``next_state`` looks a pair up and
raises ``IllegalTransition`` (naming both) for any other pair. The core calls
``next_state`` for every change (or reads ``STEPS``: the same table, each
step's stored names precomputed for the hot paths), so it is the whole of the rules:

    scheduled --promote--> ready --dispatch--> running --succeed--> succeeded
    running --fail--> failed --backoff--> scheduled  (a retry, after a delay)
                      failed --exhaust--> dead      (retries spent)
    running --lose--> ready   (worker lost or lease expired; attempt counted)
    running --lose_last--> dead (that was the last allowed attempt)
    running --release--> ready (graceful hand-back; attempt not counted)
    running --recover--> ready (server restarted while it ran)
    any non-final --cancel--> cancelled
    dead | cancelled | failed | scheduled --retry--> ready (manual retry)
    dead --delete--> cancelled (deleted from the dead-letter queue: docs/dead-letters.md)

``failed`` is passed through in the same step (the event log keeps it): a
stored task is never left in it.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from ..errors import IllegalTransition

__all__ = ["FINAL_STATES", "STEPS", "TRANSITIONS", "IllegalTransition", "State", "Step", "Transition", "next_state"]


class State(str, enum.Enum):
    """Where a task is in its life."""

    SCHEDULED = "scheduled"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class Transition(str, enum.Enum):
    """What happens to a task (each is also an event kind in its timeline)."""

    ENQUEUE = "enqueued"
    SCHEDULE = "scheduled"
    PROMOTE = "due"
    DISPATCH = "started"
    SUCCEED = "succeeded"
    FAIL = "failed"
    BACKOFF = "retry_scheduled"
    EXHAUST = "dead"
    LOSE = "lost"
    LOSE_LAST = "lost_dead"
    RELEASE = "released"
    RECOVER = "recovered"
    CANCEL = "cancelled"
    RETRY = "retried"
    DELETE = "deleted"

    def __str__(self) -> str:
        return self.value


S, T = State, Transition

FINAL_STATES = frozenset({S.SUCCEEDED, S.DEAD, S.CANCELLED})

#: (state before, transition) -> state after. ``None`` as the state is a task not yet created.
TRANSITIONS: dict[tuple[State | None, Transition], State] = {
    (None, T.ENQUEUE): S.READY,
    (None, T.SCHEDULE): S.SCHEDULED,
    (S.SCHEDULED, T.PROMOTE): S.READY,
    (S.READY, T.DISPATCH): S.RUNNING,
    (S.RUNNING, T.SUCCEED): S.SUCCEEDED,
    (S.RUNNING, T.FAIL): S.FAILED,
    (S.FAILED, T.BACKOFF): S.SCHEDULED,
    (S.FAILED, T.EXHAUST): S.DEAD,
    (S.RUNNING, T.LOSE): S.READY,
    (S.RUNNING, T.LOSE_LAST): S.DEAD,
    (S.RUNNING, T.RELEASE): S.READY,
    (S.RUNNING, T.RECOVER): S.READY,
    (S.SCHEDULED, T.CANCEL): S.CANCELLED,
    (S.READY, T.CANCEL): S.CANCELLED,
    (S.RUNNING, T.CANCEL): S.CANCELLED,
    (S.DEAD, T.RETRY): S.READY,
    (S.CANCELLED, T.RETRY): S.READY,
    (S.FAILED, T.RETRY): S.READY,
    (S.SCHEDULED, T.RETRY): S.READY,
    # a dead task deleted from the dead-letter queue: final, out of that queue, its timeline kept (it is purged
    # with the other finished tasks by the retention); not a state of its own (docs/dead-letters.md says why)
    (S.DEAD, T.DELETE): S.CANCELLED,
}


class Step(NamedTuple):
    """One entry of ``TRANSITIONS`` as the core applies it: the names it writes are looked up once, here.

    Attributes:
        state: the state after the transition.
        kind: the event kind written to the timeline (``transition.value``).
        name: ``state.value``, as a task row and an event row store it.
    """

    state: State
    kind: str
    name: str


#: ``TRANSITIONS`` with each target's stored names precomputed: the core's one path of a state change reads
#: this (a dict lookup per change, no enum attribute reads); ``test_states`` checks it is the same table.
STEPS: dict[tuple[State | None, Transition], Step] = {
    key: Step(after, key[1]._value_, after._value_) for key, after in TRANSITIONS.items()
}


def next_state(state: State | None, transition: Transition) -> State:
    """Return the state after ``transition``.

    Raises:
        IllegalTransition: the pair is not in ``TRANSITIONS``.
    """
    try:
        return TRANSITIONS[(state, transition)]
    except KeyError:
        raise IllegalTransition(state, transition) from None
