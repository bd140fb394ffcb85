"""Throughput and latency of runq on this machine, one summary line per measurement.

    python -m bench.throughput [--tasks N] [--workers W] [--concurrency C] [--rate R] [--only NAME,...]

Every measurement starts a real `runq serve` (synchronous=NORMAL, a fresh database in a temporary
folder) and, where needed, real `runq worker` processes; all traffic is on 127.0.0.1.

- enqueue_single: N tasks, one enqueue request each, on ONE connection, pipelined (K requests in flight);
  the clock stops when the last one is acknowledged (committed).
- enqueue_batch: N tasks through enqueue_many in batches of 1,000 (two batches in flight), acknowledged.
- drain: N no-op tasks enqueued into a paused queue, W worker processes joined, then resume; the clock
  stops when the server counts N succeeded.
- latency: W workers; a producer enqueues `stamp` tasks at a fixed rate R for a few seconds; each handler
  returns time.monotonic() at its start; enqueue-to-start = that minus the producer's time.monotonic()
  just before the enqueue call. p50 / p99 / max.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

from runq import Client, SyncClient

from .common import fmt, server, wait_for, workers


async def _enqueue_single(address: str, n: int, inflight: int) -> float:
    async with Client(address) as c:
        per = n // inflight

        async def one_lane() -> None:
            for _ in range(per):
                await c.enqueue("noop")

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(inflight):
                tg.start_soon(one_lane)
        return per * inflight / (time.perf_counter() - t0)


async def _enqueue_batch(address: str, n: int, batch: int, inflight: int) -> float:
    async with Client(address) as c:
        tasks: list[dict[str, Any]] = [{"type": "noop"}] * batch
        rounds = n // batch // inflight

        async def one_lane() -> None:
            for _ in range(rounds):
                await c.enqueue_many(tasks)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(inflight):
                tg.start_soon(one_lane)
        return rounds * inflight * batch / (time.perf_counter() - t0)


def enqueue_single(args: argparse.Namespace) -> str:
    with server() as (_, address):
        rate = anyio.run(_enqueue_single, address, args.tasks, args.inflight, backend="trio")
    return f"enqueue_single: {fmt(rate)} tasks/s (N={fmt(args.tasks)}, 1 connection, {args.inflight} in flight)"


def enqueue_batch(args: argparse.Namespace) -> str:
    with server() as (_, address):
        rate = anyio.run(_enqueue_batch, address, args.tasks * 4, 1000, 2, backend="trio")
    return f"enqueue_batch: {fmt(rate)} tasks/s (N={fmt(args.tasks * 4)}, batches of 1,000, 2 in flight)"


def drain(args: argparse.Namespace) -> str:
    n = args.tasks
    with server() as (_, address), SyncClient(address) as c:
        c.pause("default")
        for i in range(0, n, 5000):
            c.enqueue_many([{"type": "noop"}] * min(5000, n - i))
        with workers(address, args.workers, args.concurrency):
            wait_for(lambda: len(c.workers()) >= args.workers)
            t0 = time.perf_counter()
            c.resume("default")
            wait_for(lambda: c.stats()["succeeded"] >= n, timeout=300, step=0.005)
            dt = time.perf_counter() - t0
    return (f"drain: {fmt(n / dt)} tasks/s (N={fmt(n)} no-op tasks, {args.workers} worker processes x "
            f"concurrency {args.concurrency})")


async def _latency(address: str, rate: float, seconds: float, nworkers: int) -> list[float]:
    async with Client(address) as c:
        while len(await c.workers()) < nworkers:
            await anyio.sleep(0.05)
        sent: dict[int, float] = {}
        n = int(rate * seconds)

        async def one() -> None:
            t = time.monotonic()
            sent[await c.enqueue("stamp")] = t

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                tg.start_soon(one)
        lat = []
        for tid, t in sent.items():
            lat.append((await c.result(tid, timeout=30) - t) * 1000)
        return sorted(lat)


def latency(args: argparse.Namespace) -> str:
    with server() as (_, address), workers(address, args.workers, args.concurrency):
        lat = anyio.run(_latency, address, args.rate, args.seconds, args.workers, backend="trio")
    p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]  # noqa: E731
    return (f"latency: enqueue-to-start p50 {p(0.5):.3f} ms, p99 {p(0.99):.3f} ms, max {lat[-1]:.3f} ms "
            f"(at {fmt(args.rate)} tasks/s for {args.seconds:g} s, n={len(lat)}, {args.workers} workers)")


BENCHES = {"enqueue_single": enqueue_single, "enqueue_batch": enqueue_batch, "drain": drain, "latency": latency}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--inflight", type=int, default=256, help="enqueue_single: requests in flight")
    p.add_argument("--rate", type=float, default=500.0, help="latency: tasks/s")
    p.add_argument("--seconds", type=float, default=10.0, help="latency: how long")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    args = p.parse_args()
    for name in args.only.split(","):
        print(BENCHES[name](args), flush=True)


if __name__ == "__main__":
    main()
