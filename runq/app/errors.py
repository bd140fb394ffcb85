"""Errors of the server side of runq (core, store, server), one flat module.

Every error runq raises on purpose derives from ``RunqError`` (``runq.protocol.errors``, the SDK's module:
the wire's errors live there because clients raise them too). The server side adds the classes below, each
with the stable ``code`` that the TCP protocol sends as is and the HTTP API maps to a status. The whole tree:

.. code-block:: text

    RunqError                       runq.protocol.errors        base; code "internal"
    +-- ProtocolError               runq.protocol.errors        a peer broke the wire protocol ("bad_message", ...)
    |   +-- FrameTooLarge           runq.protocol.errors        a frame over the size limit
    |   +-- NotRunqServer           runq.protocol.errors        the SDK reached something that is not runq
    +-- RemoteError                 runq.protocol.errors        the SDK got an error frame
    |   +-- TaskNotFound, InvalidState, Unauthorized            (and HelloRefused in runq.protocol.worker)
    +-- ConnectionClosed, TaskFailed, NoClient, TLSError        SDK side
    +-- IllegalTransition           here (core)                 a step the transition table forbids
    +-- TaskMissing                 here (core)                 no live or recently finished task has that id
    +-- ScheduleError               here (core)                 a schedule that cannot be kept (bad cron, zone, ...)
    +-- ScheduleMissing             here (core)                 no schedule has that name
    +-- ConfigError                 here (server)               settings that must not be served
    +-- StoreError                  here (store)                the database could not do what was asked
    |   +-- StoreInUse              here (store)                another server writes this database
    |   +-- SchemaTooNew            here (store)                the database was written by a newer runq
    |   +-- NotLeader               here (server)               its store lost the lease: the server stepped down
    +-- ApiError                    runq.app.http.errors        an HTTP request answered with an error body
    +-- OfflineError, ReadOnly, NotConnected                    the dashboard (runq.tui)

Rules of this file:

1. Only classes, and no import of the rest of ``runq.app`` at run time: the core, the store and the server
   all import it, and it imports none of them (so no cycle can start here).
2. Each class stays importable from the module that raised it before this one existed (``runq.app.core``,
   ``runq.app.store``, ``runq.app.store.sqlite``, ``runq.app.store.schema``, ``runq.app.server``): those
   modules re-export it.
3. A boundary translates: ``raise StoreError(...) from exc`` over ``sqlite3.Error`` and the like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.errors import RunqError

if TYPE_CHECKING:
    from .core.states import State, Transition

__all__ = ["ConfigError", "IllegalTransition", "NotLeader", "RunqError", "ScheduleError", "ScheduleMissing",
           "SchemaTooNew", "StoreError", "StoreInUse", "TaskMissing"]


class IllegalTransition(RunqError):
    """A transition was asked for in a state that does not allow it (raised by the core's transition table).

    Attributes:
        state: the task's state.
        transition: what was asked.

    Args:
        why: the message, when the state alone is not the reason.
    """

    code = "invalid_state"

    def __init__(self, state: State | None, transition: Transition, why: str | None = None) -> None:
        super().__init__(why or f"cannot apply {transition.value!r} to a task in state "
                                f"{state.value if state else 'new'!r}")
        self.state = state
        self.transition = transition


class TaskMissing(RunqError):
    """No live or recently finished task has this id (raised by the core; the store may still have it)."""

    code = "not_found"


class ScheduleError(RunqError):
    """A schedule was declared with something that cannot be kept: a bad cron expression or time zone, both or
    neither of ``cron`` and ``every``, an unknown missed policy (raised by the core; the text names the field)."""

    code = "bad_request"


class ScheduleMissing(RunqError):
    """No schedule has this name (raised by the core)."""

    code = "not_found"


class ConfigError(RunqError):
    """The server was asked to start with settings that are not allowed."""

    code = "bad_request"


class StoreError(RunqError):
    """The database could not do what was asked (the text says why)."""

    code = "store_error"


class StoreInUse(StoreError):
    """Another store (another server) has this database open for writing."""


class SchemaTooNew(StoreError):
    """The database was written by a newer runq; this one will not touch it."""


class NotLeader(StoreError):
    """The store does not lead (another server holds the leadership): this server must not serve.

    Raised by ``Server.serve`` once the server stepped down: its store lost the leadership while it served (a
    PostgreSQL lease not renewed in time, or another server's term found). A store that does not lead when the
    server starts makes it a standby instead (docs/operations.md, "Failover"). Never on SQLite, whose store
    always leads while it is open.
    """
