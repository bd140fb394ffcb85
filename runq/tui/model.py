"""The dashboard's state: what every source fills and every screen reads.

Theory of operation
-------------------
A source (live or offline) writes into one ``DashboardState``; screens read
it on a timer. Live events are *coalesced*: applying one is a few dictionary
and counter updates and a bump of ``version``, never a redraw. The screens
compare ``version`` with what they last drew and redraw at most once per tick.

Nothing here imports Textual or does I/O, and no function reads the clock:
times are passed in (server time for event positions, ``now`` for ages and
windows), so the model is tested and snapshotted with fixed times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BAR_END_KINDS",
    "COMPLETE_KINDS",
    "ENQUEUE_KINDS",
    "Bar",
    "DashboardState",
    "Lanes",
    "Phase",
    "QueueRow",
    "RateSeries",
    "WorkerRow",
    "phases",
]

#: events that put a new task on a queue (the enqueue rate counts them)
ENQUEUE_KINDS = frozenset({"enqueued", "scheduled"})
#: events that finish a task for good (the completion rate counts them)
COMPLETE_KINDS = frozenset({"succeeded", "dead", "lost_dead", "cancelled"})
#: events that end a running attempt (close its bar in the Gantt view)
BAR_END_KINDS = frozenset({"succeeded", "failed", "lost", "lost_dead", "released", "cancelled", "recovered"})

RATE_BUCKETS = 600  # one per second: ten minutes of history


class RateSeries:
    """Counts per whole second over the last ``RATE_BUCKETS`` seconds (a ring)."""

    __slots__ = ("counts", "last_second")

    def __init__(self) -> None:
        self.counts = [0] * RATE_BUCKETS
        self.last_second = -1

    def _advance(self, second: int) -> None:
        if self.last_second < 0:
            self.last_second = second
            return
        if second <= self.last_second:
            return
        gap = min(second - self.last_second, RATE_BUCKETS)
        for i in range(1, gap + 1):
            self.counts[(self.last_second + i) % RATE_BUCKETS] = 0
        self.last_second = second

    def add(self, at: float, n: int = 1) -> None:
        """Count ``n`` occurrences at time ``at`` (older than the window: ignored)."""
        second = int(at)
        self._advance(second)
        if second > self.last_second - RATE_BUCKETS:
            self.counts[second % RATE_BUCKETS] += n

    def series(self, now: float, seconds: int, buckets: int) -> list[float]:
        """Per-second rates over the last ``seconds`` (ending at ``now``), in ``buckets`` averages, oldest first."""
        end = int(now)
        self._advance(end)
        seconds = max(1, min(seconds, RATE_BUCKETS - 1))
        buckets = max(1, min(buckets, seconds))
        width = seconds / buckets
        out: list[float] = []
        for b in range(buckets):
            lo = end - seconds + int(b * width)
            hi = end - seconds + int((b + 1) * width)
            total = sum(self.counts[s % RATE_BUCKETS] for s in range(lo, hi))
            out.append(total / max(hi - lo, 1))
        return out

    def rate(self, now: float, seconds: int = 10) -> float:
        """Average per second over the last ``seconds`` whole seconds before ``now``."""
        end = int(now)
        self._advance(end)
        seconds = max(1, min(seconds, RATE_BUCKETS - 1))
        return sum(self.counts[s % RATE_BUCKETS] for s in range(end - seconds, end)) / seconds


@dataclass
class QueueRow:
    """One queue as the dashboard shows it."""

    name: str
    paused: bool = False
    ready: int = 0
    scheduled: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    workers: int = 0
    enqueue_rate: RateSeries = field(default_factory=RateSeries)
    complete_rate: RateSeries = field(default_factory=RateSeries)


@dataclass
class WorkerRow:
    """One worker; ``state`` is ``active``, ``draining``, ``lost`` (vanished), ``left`` (after a drain) or ``seen``."""

    id: str
    name: str | None = None
    host: str | None = None
    pid: int | None = None
    queues: tuple[str, ...] = ()
    concurrency: int = 1
    in_flight: int = 0
    last_heartbeat: float | None = None
    state: str = "active"
    completed: int = 0
    failed: int = 0
    gone_at: float | None = None
    #: the labels it offers for routing (hello ``labels``, docs/routing.md)
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_map(cls, m: Mapping[str, Any]) -> WorkerRow:
        """Build from a worker map of the protocol (section 8.4)."""
        return cls(id=str(m["id"]), name=m.get("name"), host=m.get("host"), pid=m.get("pid"),
                   queues=tuple(m.get("queues") or ()), concurrency=int(m.get("concurrency") or 1),
                   in_flight=int(m.get("in_flight") or 0), last_heartbeat=m.get("last_heartbeat"),
                   state=str(m.get("state") or "active"), completed=int(m.get("completed") or 0),
                   failed=int(m.get("failed") or 0),
                   labels={str(k): str(v) for k, v in (m.get("labels") or {}).items()})


@dataclass
class Bar:
    """One attempt of a task on a worker: a bar of the Gantt view."""

    task_id: int
    attempt: int
    type: str
    worker: str
    start: float
    end: float | None = None
    outcome: str | None = None  # the kind of the event that ended it; None while it runs


class Lanes:
    """Attempts per worker, built from ``started`` and the events that end an attempt.

    At most ``max_bars`` bars are kept (the oldest go first), so memory stays
    bounded at any event rate.
    """

    def __init__(self, max_bars: int = 20_000) -> None:
        self.max_bars = max_bars
        self.bars: deque[Bar] = deque()
        self.open: dict[int, Bar] = {}
        self._seeded: set[tuple[int, int]] = set()

    def seed(self, bars: Iterable[Bar]) -> None:
        """Add attempts known from task maps (at connection); their ``started`` events, if any follow, are
        not counted twice."""
        for bar in sorted(bars, key=lambda b: b.start):
            self._seeded.add((bar.task_id, bar.attempt))
            self.bars.append(bar)
            if bar.end is None:
                self.open[bar.task_id] = bar
        while len(self.bars) > self.max_bars:
            old = self.bars.popleft()
            if self.open.get(old.task_id) is old:
                del self.open[old.task_id]

    def apply(self, kind: str, task_id: int, at: float, worker: str | None, attempt: int, type: str) -> None:
        """Feed one event."""
        if kind == "started":
            if worker is None:
                return
            if self._seeded and (task_id, attempt) in self._seeded:
                self._seeded.discard((task_id, attempt))
                return
            prev = self.open.pop(task_id, None)
            if prev is not None and prev.end is None:
                prev.end, prev.outcome = at, "lost"
            bar = Bar(task_id, attempt, type, worker, at)
            self.open[task_id] = bar
            self.bars.append(bar)
            if len(self.bars) > self.max_bars:
                old = self.bars.popleft()
                if self.open.get(old.task_id) is old:
                    del self.open[old.task_id]
        elif kind in BAR_END_KINDS:
            ended = self.open.pop(task_id, None)
            if ended is not None:
                ended.end, ended.outcome = at, kind

    def clear(self) -> None:
        self.bars.clear()
        self.open.clear()
        self._seeded.clear()

    def window(self, start: float, end: float) -> dict[str, list[Bar]]:
        """Bars overlapping ``[start, end]``, per worker."""
        out: dict[str, list[Bar]] = {}
        for bar in reversed(self.bars):
            if bar.end is not None and bar.end < start:
                continue
            if bar.start > end:
                continue
            out.setdefault(bar.worker, []).append(bar)
        for bars in out.values():
            bars.reverse()
        return out


class DashboardState:
    """Everything the screens show, written by one source."""

    def __init__(self, *, offline: bool = False, max_bars: int = 20_000) -> None:
        self.offline = offline
        self.connected = offline
        self.status = ""  # why we are disconnected, or what the offline file is
        self.server = ""
        self.identity = ""  # who the dashboard is connected as ("alice (user)"), when the server says
        self.note = ""  # a problem worth a line on the Queues screen (e.g. the HTTP API not answering)
        self.queues: dict[str, QueueRow] = {}
        self.workers: dict[str, WorkerRow] = {}
        self.stats: dict[str, Any] = {}
        self.lanes = Lanes(max_bars)
        self.heartbeat = 10 / 3  # seconds between worker heartbeats (from welcome)
        self.lease_timeout = 10.0
        self.version = 0  # bumped on every change
        self.events_seen = 0
        self.last_event_at = 0.0  # when the latest live event was received (source clock)
        self.dropped = 0
        self.totals_from_server = False  # queue maps carry succeeded/failed/dead totals
        self.watched: dict[int, int] = {}  # task id -> version of its last live event
        self.schedules: list[dict[str, Any]] = []  # the server's schedules (periodic tasks), as it lists them
        self.schedules_wanted = False  # polled only while the Schedules screen is in view (an older server
        self.schedules_error = ""  # has no such request): why the latest poll of them failed
        #: the configured limits (limit maps, docs/protocol.md 8.8: ``scope``, ``name``, ``key``, ``rate``,
        #: ``period``, ``burst``, ``concurrency``): the Queues screen shows those of each queue
        self.limits: list[dict[str, Any]] = []

    def queue_limits(self, name: str) -> list[dict[str, Any]]:
        """The limits that apply to the tasks of queue ``name`` as one (scope ``queue``, with or without a key)."""
        return [lim for lim in self.limits if lim.get("scope") == "queue" and lim.get("name") == name]

    # ------------------------------------------------------------------ writing
    def queue(self, name: str) -> QueueRow:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = QueueRow(name)
        return q

    def apply_event(self, ev: Mapping[str, Any], arrived: float) -> None:
        """Coalesce one live event (an ``event`` frame, section 7 of the protocol).

        Args:
            ev: the event map.
            arrived: when the event was received, on the source's clock (``Source.now``): rates are
                bucketed by it and read at ``now``.
        """
        kind = ev.get("kind")
        if kind == "dropped":
            self.dropped += int(ev.get("count") or 0)
            self.version += 1
            return
        self.events_seen += 1
        self.last_event_at = arrived
        name = ev.get("queue")
        tid = ev.get("id")
        if isinstance(name, str):
            q = self.queues.get(name) or self.queue(name)
            if kind in ENQUEUE_KINDS:
                q.enqueue_rate.add(arrived)
            elif kind in COMPLETE_KINDS:
                q.complete_rate.add(arrived)
            if not self.totals_from_server:
                if kind == "succeeded":
                    q.succeeded += 1
                elif kind == "failed":
                    q.failed += 1
                elif kind == "dead" or kind == "lost_dead":
                    q.dead += 1
        if isinstance(tid, int):
            if kind == "started" or kind in BAR_END_KINDS:
                at = ev.get("at")
                self.lanes.apply(str(kind), tid, float(at) if at is not None else arrived, ev.get("worker"),
                                 int(ev.get("attempt") or 0), str(ev.get("type") or "?"))
            if tid in self.watched:
                self.watched[tid] = self.version + 1
        self.version += 1

    def set_queues(self, maps: Iterable[Mapping[str, Any]]) -> None:
        """Replace the per-queue counts with the server's queue maps (section 8.3)."""
        seen = set()
        for m in maps:
            name = str(m["queue"])
            seen.add(name)
            q = self.queue(name)
            q.paused = bool(m.get("paused"))
            q.ready = int(m.get("ready") or 0)
            q.scheduled = int(m.get("scheduled") or 0)
            q.running = int(m.get("running") or 0)
            q.workers = int(m.get("workers") or 0)
            if "succeeded" in m and "dead" in m:
                self.totals_from_server = True
                q.succeeded = int(m.get("succeeded") or 0)
                q.failed = int(m.get("failed") or 0)
                q.dead = int(m.get("dead") or 0)
        for name, q in self.queues.items():
            if name not in seen:
                q.ready = q.scheduled = q.running = q.workers = 0
        self.version += 1

    def set_workers(self, maps: Iterable[Mapping[str, Any]], now: float, keep_gone: float = 300.0) -> None:
        """Replace the worker list; workers that vanished stay ``keep_gone`` seconds as lost (or left)."""
        current = {}
        for m in maps:
            w = WorkerRow.from_map(m)
            current[w.id] = w
        for wid, old in self.workers.items():
            if wid in current:
                continue
            if old.gone_at is None:
                old.gone_at = now
                old.state = "left" if old.state in ("draining", "left") else "lost"
                old.in_flight = 0
            if now - old.gone_at < keep_gone:
                current[wid] = old
        self.workers = dict(sorted(current.items()))
        self.version += 1

    def set_connected(self, connected: bool, status: str = "") -> None:
        self.connected = connected
        self.status = status
        self.version += 1

    def watch(self, task_id: int) -> None:
        """Track live events of one task (the open detail screen)."""
        self.watched.setdefault(task_id, 0)

    def unwatch(self, task_id: int) -> None:
        self.watched.pop(task_id, None)

    # ------------------------------------------------------------------ reading
    def heartbeat_level(self, w: WorkerRow, now: float) -> int:
        """0: on time, 1: late (over two heartbeats), 2: close to losing its leases (or gone)."""
        if w.state in ("lost", "left"):
            return 2
        if w.last_heartbeat is None:
            return 0
        age = now - w.last_heartbeat
        if age > 0.8 * self.lease_timeout:
            return 2
        if age > 2 * self.heartbeat:
            return 1
        return 0


@dataclass(frozen=True)
class Phase:
    """The time between two events of a task's timeline."""

    name: str  # waiting, running, backoff, delayed
    start: float
    end: float
    worker: str | None
    index: int  # the event that starts it


def phases(events: Sequence[Mapping[str, Any]], now: float) -> list[Phase]:
    """Name the gaps between a task's events: ``waiting`` (ready), ``running``, ``backoff`` (retry wait),
    ``delayed`` (scheduled at enqueue); the last gap runs to ``now`` unless the task is final."""
    out: list[Phase] = []
    for i, ev in enumerate(events):
        state = ev.get("state")
        start = float(ev["at"])
        if i + 1 < len(events):
            end = float(events[i + 1]["at"])
        elif state in ("succeeded", "dead", "cancelled"):
            break
        else:
            end = max(now, start)
        if state == "ready":
            name = "waiting"
        elif state == "running":
            name = "running"
        elif state == "scheduled":
            name = "backoff" if ev.get("kind") == "retry_scheduled" else "delayed"
        else:  # failed is passed through within one step; final states end the timeline
            continue
        out.append(Phase(name, start, end, ev.get("worker") if state == "running" else None, i))
    return out
