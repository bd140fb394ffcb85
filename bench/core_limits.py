"""What limits cost the core's drain path: the same drain with no limit and with limits that never bind.

    python -m bench.core_limits [--tasks 100000] [--rounds 7] [--workers 2] [--only none,queue_rate,...]

The sans-IO core alone (no server, no store, no sockets: those do not change with a limit, and the server
cannot configure one yet): N no-op tasks of type ``noop`` are enqueued into ``default`` with a small msgpack
payload ``{"customer": i % 100}``; W workers (concurrency 1,000) grant credit; then the clock runs while
the core drains them: ``take_effects`` hands out tasks, each worker reports its whole batch done at once
and grants the credit back, until every task succeeded. Configurations, one drain each per round, in
interleaved rounds; the time is this process's CPU time (``time.process_time``: the machine is shared,
and the drain never waits), and the median of the rounds is printed:

- ``none``: no limit;
- ``queue_rate``: a rate limit on the queue ``default`` that never binds (1e9 per second, burst 1e9);
- ``type_cap``: a concurrency cap on the type ``noop`` that never binds (1e9 running);
- ``both``: the two above together;
- ``per_key``: a per-key rate limit on ``noop`` keyed by the payload's ``customer`` (1e9 per second): the
  payload is decoded at each dispatch, the price of keys.

One summary line: tasks/s of each, and each limited one as a percentage of ``none``. ``--only none`` runs
on a version of runq without limits too (to compare the drain path before and after them).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import msgpack

from runq.app.core import Core, CoreConfig
from runq.protocol.messages import TaskSpec

from .common import fmt

NOW = 1_000_000.0


def _none(core: Core) -> None:
    pass


def _queue_rate(core: Core) -> None:
    core.set_limit(("queue", "default"), NOW, rate=1e9, burst=1_000_000_000)


def _type_cap(core: Core) -> None:
    core.set_limit(("type", "noop"), NOW, concurrency=1_000_000_000)


def _both(core: Core) -> None:
    _queue_rate(core)
    _type_cap(core)


def _per_key(core: Core) -> None:
    core.set_limit(("type", "noop", "customer"), NOW, rate=1e9, burst=1_000_000_000)


CONFIGS: dict[str, Callable[[Core], None]] = {
    "none": _none, "queue_rate": _queue_rate, "type_cap": _type_cap, "both": _both, "per_key": _per_key,
}


def drain(n: int, workers: int, configure: Callable[[Core], None]) -> float:
    """CPU seconds the core takes to hand out and finish ``n`` ready tasks."""
    core = Core(CoreConfig(lease_timeout=1e9))
    specs = [TaskSpec(type="noop", payload=msgpack.packb({"customer": i % 100})) for i in range(n)]
    for i in range(0, n, 1000):
        core.enqueue(specs[i:i + 1000], NOW)
    configure(core)
    core.take_effects(NOW)
    wids = [f"w{i}" for i in range(workers)]
    for wid in wids:
        core.worker_joined(wid, NOW, concurrency=1000)
    gc.collect()
    t0 = time.process_time()
    for wid in wids:
        core.credit(wid, 1000, NOW)
    done = 0
    while done < n:
        fx = core.take_effects(NOW)
        if not fx.outbox:
            raise RuntimeError(f"the drain stopped after {done} of {n} tasks")
        for wid, msgs in fx.outbox.items():
            for m in msgs:
                if m["op"] != "tasks":
                    continue
                batch = [[t["id"], t["lease"], None] for t in m["tasks"]]
                core.done(wid, batch, NOW)
                core.credit(wid, len(batch), NOW)
                done += len(batch)
    dt = time.process_time() - t0
    if core.stats.succeeded != n:
        raise RuntimeError(f"core counts {core.stats.succeeded} succeeded, expected {n}")
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma-separated")
    a = p.parse_args()
    names = [n for n in CONFIGS if n in a.only.split(",")]
    drain(10_000, a.workers, _none)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(a.rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(drain(a.tasks, a.workers, CONFIGS[name]))
    rate = {name: a.tasks / statistics.median(ts) for name, ts in times.items()}
    base = rate.get("none")
    parts = [f"{name} {fmt(r)} tasks/s" + (f" ({100 * r / base:.1f}%)" if base and name != "none" else "")
             for name, r in rate.items()]
    print(f"core_limits: drain of {fmt(a.tasks)} tasks by {a.workers} workers, median of {a.rounds} rounds: "
          + ", ".join(parts))


if __name__ == "__main__":
    main()
