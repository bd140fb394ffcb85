"""The dashboard's model and renderers with fixed times: rates, lanes, phases, worker states, sparklines."""

from __future__ import annotations

import pytest

from runq.tui.model import Bar, DashboardState, Lanes, RateSeries, phases
from runq.tui.widgets import fmt_duration, render_lanes, render_phases, sparkline

pytestmark = pytest.mark.tui

T = 1_000_000.0


def test_rate_series_buckets_by_second_and_forgets_old_ones() -> None:
    r = RateSeries()
    for s in range(10):
        r.add(T + s + 0.5, 3)
    assert r.rate(T + 10, 10) == 3.0
    assert r.series(T + 10, 10, 5) == [3.0] * 5
    assert r.rate(T + 20, 10) == 0.0  # ten quiet seconds later
    r.add(T + 20.1)
    r.add(T - 1000)  # older than the window: ignored
    assert r.series(T + 21, 20, 2) == [2.7, 0.1]  # [T+1, T+11) holds nine busy seconds
    r.add(T + 5000)  # a jump longer than the ring clears it
    assert sum(r.counts) == 1


def test_lanes_open_close_and_bound() -> None:
    lanes = Lanes(max_bars=3)
    lanes.apply("started", 1, T, "w1", 1, "a")
    lanes.apply("started", 2, T + 1, "w2", 1, "b")
    lanes.apply("succeeded", 1, T + 2, "w1", 1, "a")
    lanes.apply("failed", 3, T + 2, "w1", 1, "c")  # never started here: ignored
    assert [(b.task_id, b.end, b.outcome) for b in lanes.bars] == [(1, T + 2, "succeeded"), (2, None, None)]
    lanes.apply("started", 2, T + 3, "w1", 2, "b")  # started again without an end: the first attempt was lost
    assert lanes.bars[1].outcome == "lost"
    lanes.apply("started", 4, T + 4, "w2", 1, "d")
    assert len(lanes.bars) == 3 and lanes.bars[0].task_id == 2  # the oldest went
    window = lanes.window(T + 3.5, T + 10)
    assert sorted(window) == ["w1", "w2"]
    assert [b.task_id for b in window["w1"]] == [2]


def test_seeded_attempts_are_not_counted_twice() -> None:
    lanes = Lanes()
    lanes.seed([Bar(7, 2, "t", "w1", T, None, None), Bar(6, 1, "t", "w1", T - 5, T - 1, "succeeded")])
    lanes.apply("started", 7, T, "w1", 2, "t")  # the event of the seeded attempt, arriving later
    lanes.apply("succeeded", 7, T + 1, "w1", 2, "t")
    assert [(b.task_id, b.end, b.outcome) for b in lanes.bars] == [(6, T - 1, "succeeded"), (7, T + 1, "succeeded")]
    lanes.apply("started", 7, T + 2, "w2", 3, "t")  # a new attempt is a new bar
    assert len(lanes.bars) == 3


def test_state_coalesces_events() -> None:
    st = DashboardState()
    v = st.version
    evs = [
        {"kind": "enqueued", "id": 1, "queue": "q", "type": "t", "at": T, "attempt": 0},
        {"kind": "started", "id": 1, "queue": "q", "type": "t", "at": T + 1, "worker": "w1", "attempt": 1},
        {"kind": "failed", "id": 1, "queue": "q", "type": "t", "at": T + 2, "worker": "w1", "attempt": 1},
        {"kind": "dead", "id": 1, "queue": "q", "type": "t", "at": T + 2, "attempt": 1},
        {"kind": "dropped", "count": 7},
    ]
    for ev in evs:
        st.apply_event(ev, T + 3)
    q = st.queues["q"]
    assert (q.failed, q.dead, q.succeeded) == (1, 1, 0)
    assert q.enqueue_rate.rate(T + 4, 1) == 1 and q.complete_rate.rate(T + 4, 1) == 1
    assert st.dropped == 7 and st.events_seen == 4 and st.version == v + 5
    assert st.lanes.bars[0].outcome == "failed"
    st.set_queues([{"queue": "q", "paused": True, "ready": 2, "succeeded": 10, "failed": 3, "dead": 2}])
    assert st.totals_from_server and (q.paused, q.ready, q.succeeded, q.dead) == (True, 2, 10, 2)
    st.apply_event({"kind": "succeeded", "id": 2, "queue": "q", "type": "t", "at": T}, T)
    assert q.succeeded == 10  # the server's totals are not counted twice


def test_workers_lost_left_and_heartbeat_levels() -> None:
    st = DashboardState()
    st.heartbeat, st.lease_timeout = 1.0, 10.0
    w = {"id": "w1", "queues": ["q"], "concurrency": 2, "in_flight": 1, "last_heartbeat": T, "state": "active"}
    st.set_workers([w, dict(w, id="w2", state="draining")], T)
    assert st.heartbeat_level(st.workers["w1"], T + 1.5) == 0
    assert st.heartbeat_level(st.workers["w1"], T + 2.5) == 1
    assert st.heartbeat_level(st.workers["w1"], T + 8.5) == 2
    st.set_workers([], T + 5)
    assert st.workers["w1"].state == "lost" and st.workers["w2"].state == "left"
    assert st.workers["w1"].gone_at == T + 5 and st.heartbeat_level(st.workers["w1"], T + 5) == 2
    st.set_workers([], T + 5 + 301)
    assert st.workers == {}


def test_phases_name_the_waits() -> None:
    evs = [
        {"at": T, "kind": "enqueued", "state": "ready"},
        {"at": T + 1, "kind": "started", "state": "running", "worker": "w1"},
        {"at": T + 3, "kind": "failed", "state": "failed", "worker": "w1"},
        {"at": T + 3, "kind": "retry_scheduled", "state": "scheduled"},
        {"at": T + 4, "kind": "due", "state": "ready"},
        {"at": T + 4.5, "kind": "started", "state": "running", "worker": "w2"},
    ]
    ph = phases(evs, T + 10)
    assert [(p.name, p.end - p.start, p.worker, p.index) for p in ph] == [
        ("waiting", 1, None, 0), ("running", 2, "w1", 1), ("backoff", 1, None, 3), ("waiting", 0.5, None, 4),
        ("running", 5.5, "w2", 5)]
    evs.append({"at": T + 6, "kind": "succeeded", "state": "succeeded", "worker": "w2"})
    assert phases(evs, T + 100)[-1].end == T + 6
    strip = render_phases(phases(evs, T + 100), 60)
    assert len(strip.plain) == 60 and "running" in strip.plain and "backoff" in strip.plain


def test_renderers() -> None:
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([1, 2, 4, 8]) == "▁▂▄█"
    assert sparkline(list(range(30)), width=5)[-1] == "█" and len(sparkline(list(range(30)), width=5)) == 5
    assert [fmt_duration(s) for s in (0.25, 12.34, 245, 7800)] == ["250ms", "12.3s", "4m05s", "2h10m"]
    lanes = Lanes()
    lanes.apply("started", 1, T, "w1", 1, "resize_image")
    lanes.apply("succeeded", 1, T + 50, "w1", 1, "resize_image")
    lanes.apply("started", 2, T + 90, "w2", 1, "x")
    text = render_lanes(lanes.window(T, T + 100), T, T + 100, 100).plain.splitlines()
    assert text[0].strip().startswith("-1m40s") and text[0].rstrip().endswith("now")
    assert text[1].startswith("w1") and "resize_image" in text[1]
    assert text[2].startswith("w2") and text[2].rstrip().endswith(". x")  # running (bar cells: coloured spaces), labelled
    assert "no attempts" in render_lanes({}, T, T + 100, 50).plain


def test_the_dashboard_does_not_import_the_server() -> None:
    """The TUI talks to a server through the SDK only (docs/tui.md): importing it loads nothing of the server
    or the HTTP layer (nor trio, Hypercorn or Quart, which only they use). It may load the store's shared
    definitions (runq/app/store/queries.py: the offline mode reads the file with the store's own queries)."""
    import json
    import subprocess
    import sys

    code = ("import json, sys, runq.tui, runq.tui.app, runq.tui.live, runq.tui.offline, runq.tui.screens; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.stdout)
    forbidden = [m for m in loaded if m.split(".")[0] in ("trio", "hypercorn", "quart", "quart_trio")
                 or m.startswith(("runq.app.server", "runq.app.http", "runq.cli"))]
    assert forbidden == []
    assert "runq.app.store.queries" in loaded  # (the one definition of the read queries)
    assert {m for m in loaded if m.startswith("runq.app.")} <= {
        m for m in loaded if m.startswith(("runq.app.core", "runq.app.store", "runq.app.errors"))}
