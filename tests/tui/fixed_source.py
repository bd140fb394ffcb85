"""A source with fixed data and a stopped clock, for the snapshot tests (deterministic screens)."""

from __future__ import annotations

from typing import Any

from runq.protocol.errors import TaskNotFound
from runq.tui.model import DashboardState, WorkerRow
from runq.tui.source import Source, TaskPage

NOW = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def _task(tid: int, state: str, type_: str, queue: str = "default", **kw: Any) -> dict[str, Any]:
    t: dict[str, Any] = {
        "id": tid, "queue": queue, "type": type_, "payload": {"n": tid}, "priority": 0, "state": state,
        "run_at": None, "timeout": 600.0, "max_retries": 3, "attempt": 1, "key": None, "result": None,
        "error": None, "progress": None, "created_at": NOW - 300 + tid, "started_at": None, "finished_at": None,
        "worker": None,
    }
    t.update(kw)
    return t


class FixedSource(Source):
    """Three queues, four workers (one late, one about to be lost, one gone), lanes, tasks, one timeline."""

    def __init__(self, *, connected: bool = True) -> None:
        self.description = "127.0.0.1:7700"
        st = self.state = DashboardState()
        st.server = "127.0.0.1:7700 (runq/0.1.0)"
        st.connected = connected
        st.status = "" if connected else "disconnected from 127.0.0.1:7700 (the server closed the connection); reconnecting"
        st.stats = {"uptime": 3723.0}
        st.events_seen = 123456
        for name, paused, counts in (("default", False, (40, 2, 8, 9120, 31, 3)),
                                     ("emails", True, (1200, 0, 0, 310, 0, 0)),
                                     ("reports", False, (0, 15, 1, 88, 12, 4))):
            q = st.queue(name)
            q.paused = paused
            q.ready, q.scheduled, q.running, q.succeeded, q.failed, q.dead = counts
            q.workers = 2 if name != "emails" else 0
            for s in range(120):
                if name == "default":
                    q.enqueue_rate.add(NOW - 120 + s, 20 + (s * 7) % 30)
                    q.complete_rate.add(NOW - 120 + s, 18 + (s * 5) % 28)
                elif name == "reports" and s % 10 == 0:
                    q.enqueue_rate.add(NOW - 120 + s, 3)
                    q.complete_rate.add(NOW - 120 + s + 4, 2)
        workers = [
            WorkerRow("w1-a1b2c3", "api-1", "host-a", 4101, ("default", "reports"), 16, 8, NOW - 1.2, "active", 5210, 20),
            WorkerRow("w2-d4e5f6", "api-2", "host-b", 4102, ("default",), 16, 3, NOW - 7.5, "active", 3900, 11),
            WorkerRow("w3-0a0b0c", None, "host-c", 77, ("reports",), 2, 1, NOW - 9.1, "draining", 99, 0),
            WorkerRow("w4-ffeedd", "old", "host-a", 4000, ("default",), 4, 0, NOW - 60, "lost", 10, 1, gone_at=NOW - 30),
        ]
        workers[0].labels = {"region": "eu", "gpu": "1"}
        workers[1].labels = {"region": "us"}
        st.workers = {w.id: w for w in workers}
        st.limits = [
            {"scope": "queue", "name": "emails", "key": "", "rate": 10.0, "period": 1.0, "burst": 5, "concurrency": 3},
            {"scope": "queue", "name": "emails", "key": "customer", "rate": 2.0, "period": 60.0, "burst": 1,
             "concurrency": None},
            {"scope": "type", "name": "send_email", "key": "", "rate": None, "period": 1.0, "burst": 1, "concurrency": 2},
        ]
        lanes = st.lanes
        tid = 1000
        for w, (step, length) in (("w1-a1b2c3", (3.0, 2.0)), ("w2-d4e5f6", (5.0, 1.0))):
            t = NOW - 118
            while t < NOW - 4:
                tid += 1
                lanes.apply("started", tid, t, w, 1, "resize_image")
                lanes.apply("failed" if tid % 11 == 0 else "succeeded", tid, t + length, w, 1, "resize_image")
                t += step
        lanes.apply("started", 2001, NOW - 70, "w3-0a0b0c", 1, "monthly_report")
        lanes.apply("succeeded", 2001, NOW - 20, "w3-0a0b0c", 1, "monthly_report")
        lanes.apply("started", 2002, NOW - 15, "w3-0a0b0c", 1, "monthly_report")
        lanes.apply("started", 2003, NOW - 110, "w4-ffeedd", 2, "send_email")
        lanes.apply("lost", 2003, NOW - 60, "w4-ffeedd", 2, "send_email")
        st.version += 1

        self.tasks = [
            _task(42, "dead", "charge_card", "default", attempt=4, worker="w2-d4e5f6", started_at=NOW - 20,
                  requires='{"region":"eu"}', limit_key="acme",
                  finished_at=NOW - 19.5,
                  error="Traceback (most recent call last):\n  File \"tasks.py\", line 12, in charge_card\n"
                        "    raise ConnectionError('payment gateway unreachable')\n"
                        "ConnectionError: payment gateway unreachable"),
            _task(41, "running", "monthly_report", "reports", worker="w3-0a0b0c", started_at=NOW - 15,
                  progress={"done": 3, "of": 10}),
            _task(40, "succeeded", "resize_image", "default", worker="w1-a1b2c3", result={"width": 640},
                  started_at=NOW - 40, finished_at=NOW - 38),
            _task(39, "scheduled", "send_email", "emails", attempt=0, run_at=NOW + 3600),
            _task(38, "cancelled", "send_email", "emails", attempt=0, finished_at=NOW - 100),
            _task(37, "ready", "resize_image", "default", attempt=0),
        ]
        t42 = NOW - 60
        self.timelines: dict[int, list[dict[str, Any]]] = {42: [
            {"at": t42, "kind": "enqueued", "state": "ready", "worker": None, "attempt": 0, "detail": None},
            {"at": t42 + 0.4, "kind": "started", "state": "running", "worker": "w1-a1b2c3", "attempt": 1, "detail": None},
            {"at": t42 + 2.4, "kind": "failed", "state": "failed", "worker": "w1-a1b2c3", "attempt": 1,
             "detail": "ConnectionError: payment gateway unreachable"},
            {"at": t42 + 2.4, "kind": "retry_scheduled", "state": "scheduled", "worker": None, "attempt": 1, "detail": "in 1.1s"},
            {"at": t42 + 3.5, "kind": "due", "state": "ready", "worker": None, "attempt": 1, "detail": None},
            {"at": t42 + 3.6, "kind": "started", "state": "running", "worker": "w2-d4e5f6", "attempt": 2, "detail": None},
            {"at": t42 + 5.6, "kind": "failed", "state": "failed", "worker": "w2-d4e5f6", "attempt": 2,
             "detail": "ConnectionError: payment gateway unreachable"},
            {"at": t42 + 5.6, "kind": "retry_scheduled", "state": "scheduled", "worker": None, "attempt": 2, "detail": "in 2.3s"},
            {"at": t42 + 7.9, "kind": "due", "state": "ready", "worker": None, "attempt": 2, "detail": None},
            {"at": t42 + 40, "kind": "started", "state": "running", "worker": "w2-d4e5f6", "attempt": 4, "detail": None},
            {"at": t42 + 40.5, "kind": "failed", "state": "failed", "worker": "w2-d4e5f6", "attempt": 4,
             "detail": "ConnectionError: payment gateway unreachable"},
            {"at": t42 + 40.5, "kind": "dead", "state": "dead", "worker": None, "attempt": 4, "detail": "4 attempts, retries spent"},
        ]}
        for ev in self.timelines[42]:
            ev["task_id"] = 42

    def now(self) -> float:
        return NOW

    async def list_tasks(self, *, state: str | None = None, queue: str | None = None, type: str | None = None,
                         limit: int = 100, cursor: int | None = None) -> TaskPage:
        out = [t for t in self.tasks if (state is None or t["state"] == state) and (queue is None or t["queue"] == queue)
               and (type is None or t["type"] == type) and (cursor is None or t["id"] < cursor)]
        return out[:limit], None

    async def get(self, task_id: int) -> dict[str, Any]:
        for t in self.tasks:
            if t["id"] == task_id:
                return dict(t)
        raise TaskNotFound("not_found", f"no task {task_id}")

    async def events(self, task_id: int) -> list[dict[str, Any]]:
        return list(self.timelines.get(task_id, []))
