"""Measurements of the live server: rates, processing-time percentiles, and ``/metrics``.

Theory of operation
-------------------
Nothing here keeps a copy of the queue's state. Counts, workers and counters are
read from the core, the server and the store at the moment they are asked for
(a Prometheus scrape calls ``RunqCollector.collect``). Three things need history,
and ``Meter`` keeps just that:

- processing time per task type: the core appends every finished attempt to
  ``Core.run_times`` while a ``Meter`` is attached; the meter drains that list
  after every commit into per-type histograms (for ``/metrics``) and a reservoir
  of the last ``RECENT`` run times per type (percentiles for ``/api/stats``);
- enqueue and completion rates: a sample of ``Core.totals`` per queue every
  second for the last ``WINDOW`` seconds; a rate is the difference between now
  and the oldest sample, divided by the time between them;
- store commits: the size (task rows + event rows) and latency (hand-off to the
  writer thread until durable) of every committed batch, as histograms.

Observing costs a dictionary lookup, a bisect and an append per finished attempt:
the hot path stays cheap, which is why the histograms are counted here and handed
to prometheus-client as metric families at scrape time.
"""

from __future__ import annotations

import bisect
import gc
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..core import WorkerState
from ..core.stats import queue_totals
from ..store import Batch

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["CONTENT_TYPE_LATEST", "RECENT", "WINDOW", "Histogram", "Meter"]

RECENT = 1000
WINDOW = 60.0
RUN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
               900.0, 3600.0)
ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Counts of observations per bucket (upper bounds ``bounds``, then +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs as Prometheus wants them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


def _percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ordered, non-empty list."""
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class Meter:
    """History the HTTP API needs on top of the live core (see the module docstring).

    Args:
        server: the running server.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.run_hist: dict[tuple[str, str], Histogram] = {}
        self.recent: dict[str, deque[float]] = {}
        self.commit_rows = Histogram(ROWS_BUCKETS)
        self.commit_latency = Histogram(LATENCY_BUCKETS)
        self.samples: deque[tuple[float, dict[str, dict[str, int]]]] = deque()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RunqCollector(self))
        server.core.run_times = []
        server.commit_listeners.append(self._committed)
        server.commit_observers.append(self._observe_commit)
        self.sample()

    def detach(self) -> None:
        """Stop collecting (the HTTP API stopped)."""
        srv = self.server
        srv.core.run_times = None
        if self._committed in srv.commit_listeners:
            srv.commit_listeners.remove(self._committed)
        if self._observe_commit in srv.commit_observers:
            srv.commit_observers.remove(self._observe_commit)

    # ------------------------------------------------------------------ collecting
    def _committed(self, batch: Batch, error: BaseException | None) -> None:
        self.drain()

    def drain(self) -> None:
        """Move the core's finished-attempt run times into the histograms and reservoirs."""
        runs = self.server.core.run_times
        if not runs:
            return
        self.server.core.run_times = []
        hists = self.run_hist
        recent = self.recent
        for _queue, type_, seconds, ok in runs:
            key = (type_, "succeeded" if ok else "failed")
            h = hists.get(key)
            if h is None:
                h = hists[key] = Histogram(RUN_BUCKETS)
            h.observe(seconds)
            r = recent.get(type_)
            if r is None:
                r = recent[type_] = deque(maxlen=RECENT)
            r.append(seconds)

    def _observe_commit(self, rows: int, latency: float) -> None:
        self.commit_rows.observe(rows)
        self.commit_latency.observe(latency)

    def totals(self) -> dict[str, dict[str, int]]:
        return {name: queue_totals(c) for name, c in self.server.core.totals.items()}

    def sample(self) -> None:
        """Record the queues' cumulative counts now (called every second)."""
        now = self.server.clock()
        self.samples.append((now, self.totals()))
        while len(self.samples) > 1 and self.samples[1][0] <= now - WINDOW:
            self.samples.popleft()

    # ------------------------------------------------------------------ reading
    def rates(self) -> dict[str, dict[str, float]]:
        """Per queue, events per second over the last ``WINDOW`` seconds (or since start)."""
        now = self.server.clock()
        totals = self.totals()
        if not self.samples:
            return {}
        t0, old = self.samples[0]
        span = now - t0
        out: dict[str, dict[str, float]] = {}
        for name, cur in totals.items():
            before = old.get(name, {})
            out[name] = {k: (cur[k] - before.get(k, 0)) / span if span > 0 else 0.0
                         for k in ("enqueued", "completed", "succeeded", "failed", "dead")}
        return out

    def percentiles(self) -> dict[str, dict[str, float | int]]:
        """Per task type: p50, p90, p99, mean and max of the last ``RECENT`` run times, and their count."""
        self.drain()
        out: dict[str, dict[str, float | int]] = {}
        for type_, r in sorted(self.recent.items()):
            ordered = sorted(r)
            out[type_] = {"count": len(ordered), "p50": _percentile(ordered, 50), "p90": _percentile(ordered, 90),
                          "p99": _percentile(ordered, 99), "mean": sum(ordered) / len(ordered), "max": ordered[-1]}
        return out

    def queues(self, queue_stats: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """``queue_stats`` (the ``queues`` operation's answer; default: the server's now) with each queue's
        cumulative counts and rates."""
        rates = self.rates()
        totals = self.totals()
        out = []
        for q in queue_stats if queue_stats is not None else self.server.queue_stats():
            name = q["queue"]
            r = rates.get(name, {})
            t = totals.get(name, queue_totals(None))
            out.append({
                "name": name, "paused": q["paused"],
                "counts": {"scheduled": q["scheduled"], "ready": q["ready"], "running": q["running"]},
                "workers": q["workers"],
                "enqueued": t["enqueued"], "succeeded": t["succeeded"], "failed": t["failed"], "dead": t["dead"],
                "cancelled": t["cancelled"],
                "enqueue_rate": r.get("enqueued", 0.0), "completion_rate": r.get("completed", 0.0),
            })
        return out

    def stats(self, statistics: dict[str, Any] | None = None) -> dict[str, Any]:
        """The body of ``GET /api/stats``, from ``statistics`` (the ``stats`` operation's answer; default: the
        server's now)."""
        srv = self.server
        s = statistics if statistics is not None else srv.statistics()
        c = srv.core.stats
        rates = self.rates()
        finished = c.succeeded + c.dead
        span = 0.0
        if self.samples:
            span = srv.clock() - self.samples[0][0]
        return {
            "version": s["version"], "uptime": s["uptime"], "workers": s["workers"],
            "queues": {q["queue"]: {"scheduled": q["scheduled"], "ready": q["ready"], "running": q["running"],
                                    "paused": q["paused"]} for q in s["queues"]},
            "processing_time": self.percentiles(),
            "rates": {
                "window": min(span, WINDOW),
                "enqueued": sum(r["enqueued"] for r in rates.values()),
                "succeeded": sum(r["succeeded"] for r in rates.values()),
                "failed": sum(r["failed"] for r in rates.values()),
                "dead": sum(r["dead"] for r in rates.values()),
            },
            "success_ratio": c.succeeded / finished if finished else None,
            "totals": {"enqueued": c.enqueued, "succeeded": c.succeeded, "failed": c.failed, "dead": c.dead,
                       "cancelled": c.cancelled, "lease_expiries": c.lease_expiries,
                       "late_results": c.late_results},
            "tasks_live": s["tasks_live"], "connections": s["connections"],
            "protocol_errors": s["protocol_errors"], "internal_errors": s["internal_errors"],
            "store_errors": s["store_errors"], "commits": s["commits"], "commit_batches": s["commit_batches"], "recovered": s["recovered"],
        }

    def exposition(self) -> bytes:
        """The Prometheus text of ``/metrics``."""
        self.drain()
        return generate_latest(self.registry)


class RunqCollector:
    """Reads the live server at scrape time (a prometheus-client custom collector)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def collect(self) -> Iterator[Metric]:
        m = self.meter
        srv = m.server
        core = srv.core
        st = core.stats
        yield _gauge("runq_uptime_seconds", "Seconds since the server started.", srv.clock() - srv.stats.started_at)

        tasks = GaugeMetricFamily("runq_tasks", "Live tasks by queue and state.", labels=["queue", "state"])
        paused = GaugeMetricFamily("runq_queue_paused", "1 when the queue is paused.", labels=["queue"])
        for q in srv.queue_stats():
            for state in ("scheduled", "ready", "running"):
                tasks.add_metric([q["queue"], state], q[state])
            paused.add_metric([q["queue"]], 1 if q["paused"] else 0)
        yield tasks
        yield paused

        enq = CounterMetricFamily("runq_tasks_enqueued", "Tasks enqueued since start.", labels=["queue"])
        done = CounterMetricFamily("runq_tasks_completed", "Tasks that reached a final state since start.",
                                   labels=["queue", "state"])
        failed = CounterMetricFamily("runq_task_failures", "Failed attempts since start (retried or not).",
                                     labels=["queue"])
        for name, t in sorted(m.totals().items()):
            enq.add_metric([name], t["enqueued"])
            for state in ("succeeded", "dead", "cancelled"):
                done.add_metric([name, state], t[state])
            failed.add_metric([name], t["failed"])
        yield enq
        yield done
        yield failed

        runs = HistogramMetricFamily("runq_task_run_seconds", "Processing time of finished attempts by task type.",
                                     labels=["type", "outcome"])
        m.drain()
        for (type_, outcome), h in sorted(m.run_hist.items()):
            runs.add_metric([type_, outcome], h.buckets(), h.sum)
        yield runs

        workers = GaugeMetricFamily("runq_workers", "Connected workers by state.", labels=["state"])
        by_state = Counter(w.state for w in core.workers.values())
        for state in WorkerState:
            workers.add_metric([state.value], by_state.get(state, 0))
        yield workers
        yield _gauge("runq_tasks_in_flight", "Tasks leased to connected workers.",
                     sum(len(w.running) for w in core.workers.values()))
        yield _counter("runq_lease_expiries", "Worker leases that expired (missed heartbeats).", st.lease_expiries)
        yield _counter("runq_late_results", "Results refused because the worker no longer held the lease.",
                       st.late_results)
        yield _counter("runq_protocol_errors", "TCP connections closed for breaking the protocol.",
                       srv.stats.protocol_errors)
        yield _counter("runq_internal_errors", "TCP connections closed because the server hit a bug (logged).",
                       srv.stats.internal_errors)
        yield _gauge("runq_connections", "Open TCP connections.", len(srv.sessions))
        yield _gauge("runq_event_subscribers", "Open live-event subscriptions (TCP and HTTP).", len(srv.subscribers))
        gcs = CounterMetricFamily("runq_gc_collections", "Collections of the process's cyclic garbage collector "
                                  "by generation (runq serve raises its thresholds: docs/operations.md).",
                                  labels=["generation"])
        for generation, gen_stats in enumerate(gc.get_stats()):
            gcs.add_metric([str(generation)], gen_stats["collections"])
        yield gcs

        store = srv.store
        if store is not None:
            ss = store.stats
            yield _counter("runq_store_commits", "SQLite transactions committed (group commits).", ss.commits)
            yield _counter("runq_store_commit_batches", "Batches written by those commits.", ss.batches)
            yield _counter("runq_store_commit_seconds", "Seconds the writer spent in commits.",
                           ss.commit_seconds_total)
            yield _counter("runq_store_rows_written", "Task rows written.", ss.rows)
            yield _counter("runq_store_events_written", "Event rows written.", ss.events)
            yield _counter("runq_store_errors", "Commits that failed.", srv.stats.store_errors)
        rows = HistogramMetricFamily("runq_store_batch_rows", "Task and event rows per committed batch.")
        rows.add_metric([], m.commit_rows.buckets(), m.commit_rows.sum)
        yield rows
        lat = HistogramMetricFamily("runq_store_commit_latency_seconds",
                                    "Seconds from handing a batch to the writer until it is durable.")
        lat.add_metric([], m.commit_latency.buckets(), m.commit_latency.sum)
        yield lat
        yield from self._limits(srv)

    def _limits(self, srv: Server) -> Iterator[Metric]:
        """Circuit breakers by task type, and limits by scope (their per-key values summed: a payload field's
        values would make a label without bound)."""
        core = srv.core
        now = srv.clock()
        state = GaugeMetricFamily("runq_breaker_state", "1 for the state each task type's circuit breaker is in.",
                                  labels=["type", "state"])
        changes = CounterMetricFamily("runq_breaker_transitions", "Times a breaker entered a state since start.",
                                      labels=["type", "state"])
        held = GaugeMetricFamily("runq_breaker_waiting", "Ready tasks held while the breaker refuses them.",
                                 labels=["type"])
        for b in core.breaker_status(now):
            for name in ("closed", "open", "half_open"):
                state.add_metric([b.type, name], 1 if b.state == name else 0)
                changes.add_metric([b.type, name], b.changes.get(name, 0))
            held.add_metric([b.type], b.waiting)
        yield state
        yield changes
        yield held
        waiting = GaugeMetricFamily("runq_limit_waiting", "Ready tasks held aside by a limit, by scope.",
                                    labels=["scope"])
        running = GaugeMetricFamily("runq_limit_running", "Running tasks counted by a limit's cap, by scope.",
                                    labels=["scope"])
        deferred = CounterMetricFamily("runq_limit_deferred", "Times a limit refused a task since start, by scope.",
                                       labels=["scope"])
        sums: dict[str, list[int]] = {}
        for st in core.limit_status(now):
            acc = sums.setdefault(str(st.scope), [0, 0, 0])
            acc[0] += st.waiting
            acc[1] += st.running
            acc[2] += st.deferred
        for lim in core.limits():
            w, r, d = sums.get(str(lim.scope), (0, 0, 0))
            waiting.add_metric([str(lim.scope)], w)
            running.add_metric([str(lim.scope)], r)
            deferred.add_metric([str(lim.scope)], d)
        yield waiting
        yield running
        yield deferred


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
