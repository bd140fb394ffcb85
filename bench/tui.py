"""The dashboard under load: refreshes per second and refresh lag while 10,000 tasks/s (30,000 events/s) run.

    python -m bench.tui [--events-rate 30000] [--seconds 20] [--workers 2] [--concurrency 32] [--hz 5]

A real `runq serve` (fresh database in a temporary folder), W real `runq worker` processes running the no-op
handler of bench/noop_tasks.py, and a feeder process (this module with --feed) that enqueues no-op tasks with
enqueue_many at events-rate / 3 tasks per second (each task makes three live events: enqueued, started,
succeeded). This process runs the dashboard headless (Textual's App.run_test, 160x50) on a LiveSource
subscribed to every event, and shows each screen (queues, workers, tasks, timeline) for a quarter of the run.

One summary line per screen and one in all:
- events/s: live events the dashboard applied per second (coalesced into its state);
- refreshes/s: ticks of the refresh timer that ran (nominal: --hz);
- worst gap: the longest time between two ticks (a starved event loop shows here; nominal 1/hz);
- worst draw: the longest redraw (the screen's work per tick);
- worst lag: the oldest the newest applied event was at a tick (local receive time vs. the tick): how far
  the screens trail the live feed;
- dropped: events the server dropped because the dashboard read too slowly.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Any

import anyio

from runq import Client

from .common import ROOT, CpuMeter, fmt, server, workers

SCREENS = ("queues", "workers", "tasks", "timeline")


async def feed(address: str, tasks_per_second: float, seconds: float) -> None:
    """Enqueue no-op tasks at a steady rate (batches every 20 ms) for ``seconds``."""
    async with Client(address) as client:
        start = time.perf_counter()
        sent = 0
        async with anyio.create_task_group() as tg:
            while (elapsed := time.perf_counter() - start) < seconds:
                due = int(elapsed * tasks_per_second) - sent
                if due > 0:
                    tg.start_soon(client.enqueue_many, [{"type": "noop"}] * due)
                    sent += due
                await anyio.sleep(0.02)


async def run_dashboard(address: str, seconds: float, hz: float) -> list[tuple[str, dict[str, float]]]:
    from runq.tui import LiveSource, RunqDashboard

    app = RunqDashboard(LiveSource(address), refresh_hz=hz)
    results: list[tuple[str, dict[str, float]]] = []
    async with app.run_test(size=(160, 50)) as pilot:
        state = app.source.state
        with anyio.fail_after(20):
            while not state.connected:
                await pilot.pause(0.05)
        per_screen = seconds / len(SCREENS)
        for name in SCREENS:
            await app.switch_mode(name)
            await pilot.pause(0.3)
            stats = app.refresh_stats
            stats.reset()
            events0, dropped0 = state.events_seen, state.dropped
            worst_lag = 0.0
            t0 = time.perf_counter()
            ticks_seen = 0
            while time.perf_counter() - t0 < per_screen:
                await anyio.sleep(0.01)
                if stats.ticks != ticks_seen:  # just after a tick: how old is the newest event it drew?
                    ticks_seen = stats.ticks
                    if state.last_event_at:
                        worst_lag = max(worst_lag, app.source.now() - state.last_event_at)
            wall = time.perf_counter() - t0
            results.append((name, {
                "events": (state.events_seen - events0) / wall, "refreshes": stats.ticks / wall,
                "worst_gap": stats.worst_gap, "worst_draw": stats.worst_draw, "worst_lag": worst_lag,
                "dropped": state.dropped - dropped0, "draw_share": stats.draw_total / wall,
            }))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tui", description=__doc__.split("\n\n")[0])
    ap.add_argument("--events-rate", type=float, default=30_000.0,
                    help="live events per second to aim at (3 per task: the default is 10,000 tasks/s)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the run (split over the 4 screens)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--hz", type=float, default=5.0, help="the dashboard's refresh rate")
    ap.add_argument("--feed", default=None, help=argparse.SUPPRESS)  # internal: run as the feeder process
    args = ap.parse_args(argv)
    if args.feed:
        anyio.run(feed, args.feed, args.events_rate / 3, args.seconds)
        return 0

    with server() as (srv, address), workers(address, args.workers, args.concurrency) as wprocs:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        feeder = subprocess.Popen([sys.executable, "-m", "bench.tui", "--feed", address,
                                   "--events-rate", str(args.events_rate), "--seconds", str(args.seconds + 3)],
                                  cwd=ROOT, env=env)
        try:
            time.sleep(1.0)  # let the load settle
            groups = {"server": [srv.pid], "workers": [p.pid for p in wprocs], "feeder": [feeder.pid],
                      "dashboard": [os.getpid()]}
            with CpuMeter(groups) as cpu:
                results = anyio.run(run_dashboard, address, args.seconds, args.hz, backend="asyncio")
        finally:
            feeder.kill()
            feeder.wait()
    total: dict[str, Any] = {}
    for name, r in results:
        print(_line(f"tui {name:<8}", r, args.hz), flush=True)
        for k, v in r.items():
            total[k] = max(total.get(k, 0.0), v) if k.startswith("worst") else total.get(k, 0.0) + v / len(results)
    total["dropped"] = sum(r["dropped"] for _, r in results)
    print(_line("tui all     ", total, args.hz) + f"; {cpu.report()}", flush=True)
    return 0


def _line(label: str, r: dict[str, float], hz: float) -> str:
    return (f"{label}: {fmt(r['events'])} events/s applied, {r['refreshes']:.2f} refreshes/s (nominal {hz:g}), "
            f"worst gap {r['worst_gap'] * 1000:.0f} ms, worst draw {r['worst_draw'] * 1000:.1f} ms, "
            f"worst lag {r['worst_lag'] * 1000:.0f} ms, draw {100 * r['draw_share']:.1f}% of the loop, "
            f"{fmt(r['dropped'])} dropped")


if __name__ == "__main__":
    sys.exit(main())
