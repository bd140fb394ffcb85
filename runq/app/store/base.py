"""The narrow storage interface: what the server asks of a store, and the records that cross it.

Theory of operation
-------------------
The server (runq/app/server/server.py) and recovery know a store only as ``Store``, the protocol below:
writes go in as ``Batch`` objects that commit together (group commit: a store may merge the batches waiting
into one transaction, reporting to each in order), reads come back as named records (``TaskRecord``,
``EventRecord``, ``RequestRecord``, ``LimitRecord``, ``BreakerRecord``, ``ServerEventRecord``; defined in runq/app/core/records.py because the core makes them, and
the core must not import the store), and ``leadership()`` says whether this store may serve at all.

Leadership: only one server at a time may write a database (two would each take the other's running tasks
for crashed ones and run them again, and hand out the same ids). A store answers ``leadership()`` with a
``Leadership``: whether it leads, and its term, a number that only grows from one leader to the next (a
store that fences its writes with it refuses a write of an older term). The server asks once it has opened
the store and before it reads anything back, and again while it serves: a store that lost the leadership
makes it step down (it stops, with ``NotLeader``).
The SQLite store leads from the moment it opens (its exclusive file lock, taken in its constructor, is the
leadership; a second store on the file is refused with ``StoreInUse``), always with term 1. The PostgreSQL
store (postgres.py) holds a lease in its ``runq_writer`` row (term, holder, expiry by the database's clock:
lease.py), renews it, and fences every commit with its term; a store opened while another server holds the
lease does not lead: the server then waits as a standby, asking ``take_leadership`` every ``check_in``
seconds, and serves once it leads (docs/operations.md, "Failover").

Rules of this file:

1. The protocol holds exactly what the server and recovery call, nothing that only one implementation has
   (PRAGMAs, connections, file paths): a new store implements every method here and passes the contract suite
   (tests/store/test_store_contract.py), and nothing else.
2. No I/O and no import of an implementation here: the dashboard and the server import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..core.records import (
    BreakerRecord,
    DeadFilter,
    EventRecord,
    LimitKey,
    LimitRecord,
    NewTaskRecord,
    NewTaskRow,
    QueueRecord,
    RequestRecord,
    ScheduleRecord,
    ServerEventRecord,
    TaskRecord,
    TaskRow,
)

if TYPE_CHECKING:
    from .principals import PrincipalStore

__all__ = ["Batch", "BreakerRecord", "EventRecord", "Leadership", "LimitRecord", "NewTaskRecord", "Notify",
           "QueueRecord", "RequestRecord", "ScheduleRecord", "ServerEventRecord", "Store", "StoreStats", "TaskRecord",
           "TaskRow"]

#: how a store hands ``on_done`` callbacks back (the server passes its trio token's ``run_sync_soon``)
Notify = Callable[[Callable[[], None]], None]


@dataclass(eq=False)
class Batch:
    """Writes that must commit together, and who to tell when they did.

    Attributes:
        rows: whole task records to write (insert or replace); the last one of a task wins.
        new_rows: tasks written for the first time, inserted before every ``rows`` of the same commit.
        events: event records (numbered by the core) to append.
        queue_ops: queues paused or resumed, to record.
        requests: enqueue answers by idempotency token to write (a record of an id written again replaces it).
        requests_below: delete the ``requests`` records whose id is below this.
        limits: limits to record, as the core's effects give them: (key, record) with the key (scope, name,
            key) the record's first three fields; a record replaces the key's, None deletes it. In order: the
            last one of a key wins.
        breakers: the same for circuit breakers, keyed by task type.
        server_events: events of no task to append (their ``id`` None: the store numbers them, in order).
        prune_before: delete finished tasks (and their events) finished before this time.
        schedule_rows: (name, record) of schedules to write (insert or replace), or (name, None) to delete; in
            order, the last one of a name wins. They commit with the tasks of the same batch (the dedup of a
            schedule's fire times: runq/app/core/schedules.py).
        on_done: called with ``None`` after the commit, or with the exception (a ``StoreError``).
        pruned: set by the store: how many tasks ``prune_before`` deleted.
    """

    rows: list[TaskRecord] = field(default_factory=list)
    new_rows: list[NewTaskRow] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    queue_ops: list[QueueRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    requests_below: int | None = None
    limits: list[tuple[LimitKey, LimitRecord | None]] = field(default_factory=list)
    breakers: list[tuple[str, BreakerRecord | None]] = field(default_factory=list)
    server_events: list[ServerEventRecord] = field(default_factory=list)
    prune_before: float | None = None
    schedule_rows: list[tuple[str, ScheduleRecord | None]] = field(default_factory=list)
    on_done: Callable[[BaseException | None], None] | None = None
    pruned: int = 0


@dataclass
class StoreStats:
    """Counters of a store's commits (``/metrics`` and ``stats()`` read them)."""

    commits: int = 0
    batches: int = 0
    rows: int = 0
    events: int = 0
    errors: int = 0
    last_commit_rows: int = 0
    commit_seconds_total: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Leadership:
    """Whether a store may serve (see the module docstring).

    Attributes:
        is_leader: this store holds the leadership; its writes are the database's.
        term: the leadership's number; it only grows from one leader to the next (0: never led).
        holder: who holds it, for a person (a lock file and pid, a server's name).
        address: the address the leader's clients and workers reach it at (``runq serve --advertise``), when
            the store knows it (PostgreSQL's lease row); None otherwise.
        check_in: seconds after which asking again may give another answer (a leader's lease to be checked, a
            standby's next try to take it); None: the answer never changes by itself (SQLite).
    """

    is_leader: bool
    term: int
    holder: str
    address: str | None = None
    check_in: float | None = None


class Store(Protocol):
    """What the server asks of a store (rule 1 of this file). ``runq.app.store.open_store`` makes one.

    Writes are asynchronous: ``submit`` returns at once and ``on_done`` reports the commit through the
    store's ``notify``. Reads are synchronous and may block (the server calls them in a thread, one at a time).

    Attributes:
        stats: commit counters.
    """

    stats: StoreStats

    # ------------------------------------------------------------------ leadership
    def leadership(self) -> Leadership:
        """Whether this store leads now (the server asks before it serves, then again every ``check_in``
        seconds while it serves: a store that lost the leadership makes it step down). No I/O: it answers
        from what the store knows."""
        ...

    def take_leadership(self) -> Leadership:
        """Try once to become the leader (a standby's poll); return the leadership after that try. May block
        for a round trip to the database. A store that leads already answers as ``leadership``."""
        ...

    def advertise(self, address: str) -> None:
        """The address this server serves at (written with the lease where a store keeps one, so that a
        standby and its clients can name the active server)."""
        ...

    # ------------------------------------------------------------------ startup (before ``start``)
    def load(self) -> tuple[Iterator[TaskRow], list[str], int]:
        """Return (the live tasks in id order, streamed, as ``TaskRow`` tuples (not records: records.py says
        why); the paused queues; the next free task id).

        Ids never go back: the next id is above every id ever stored, pruned ones included.
        """
        ...

    def load_requests(self) -> tuple[list[RequestRecord], int]:
        """Return (the stored enqueue answers by idempotency token, by id; the next free record number)."""
        ...

    def next_event_id(self) -> int:
        """The first free event id."""
        ...

    def load_limits(self) -> tuple[list[LimitRecord], list[BreakerRecord]]:
        """Return (the stored limits, by scope, name and key; the stored breakers, by task type): what the
        core's ``recover_limits`` takes back."""
        ...

    def load_schedules(self) -> list[ScheduleRecord]:
        """Return the stored schedules, by name."""
        ...

    def write_now(self, batch: Batch) -> None:
        """Commit ``batch`` in the calling thread and return once it is durable.

        Raises:
            StoreError: the commit failed (nothing of it was written).
        """
        ...

    # ------------------------------------------------------------------ writes
    def start(self) -> None:
        """Start committing what is submitted (batches submitted before wait for this)."""
        ...

    def submit(self, batch: Batch) -> None:
        """Queue ``batch`` for the next commit; return at once. Batches commit in the order submitted, and
        each one's ``on_done`` runs once, in that order, after its commit (with ``None``) or its failure (with a
        ``StoreError``: then nothing of that commit was written, and later batches still commit)."""
        ...

    @property
    def can_commit_inline(self) -> bool:
        """Whether ``commit_here`` is worth trying: a commit is short (it waits for no disk flush)."""
        ...

    def commit_here(self, batches: list[Batch]) -> bool:
        """Commit ``batches`` in the calling thread, ``on_done`` called here too, if that can be done without
        waiting (nothing else is committing); return False, having done nothing, if not. The caller has seen
        every batch it submitted before reported."""
        ...

    def close(self) -> None:
        """Commit what is queued, stop, and let go of the database (and of the leadership)."""
        ...

    # ------------------------------------------------------------------ reads
    def get_task(self, task_id: int) -> TaskRecord | None:
        """The task, or ``None``."""
        ...

    def events(self, task_id: int) -> list[EventRecord]:
        """The task's timeline, oldest first, starting with its ``enqueued`` (or ``scheduled``) event even
        though the core does not store the ``enqueued`` one (runq.app.store.queries.timeline)."""
        ...

    def list_tasks(self, state: str | None = None, queue: str | None = None, type: str | None = None,
                   limit: int = 100, cursor: int | None = None, owner: str | None = None) -> list[TaskRecord]:
        """A page of tasks, newest first, filtered (``owner``: only that owner's); ``cursor`` is the last id of
        the previous page."""
        ...

    def principals(self) -> PrincipalStore:
        """The users, API tokens and refresh tokens of the database, on a connection of their own (principals.py:
        never inside the group commit)."""
        ...

    def dead_tasks(self, f: DeadFilter, limit: int, cursor: int | None = None,
                   oldest_first: bool = False) -> list[TaskRecord]:
        """A page of dead tasks that ``f`` lets through, newest first (``cursor``: the last id of the previous
        page), or the oldest first (docs/dead-letters.md)."""
        ...

    def server_events(self, since: int | None = None, limit: int = 100) -> list[ServerEventRecord]:
        """Events of no task, oldest first: the ``limit`` most recent ones, or with ``since`` (an event id),
        the first ``limit`` ones after it (to follow the log)."""
        ...

    def check_writable(self) -> None:
        """Return if the database accepts a write now.

        Raises:
            StoreError: it does not (the text says why).
        """
        ...
