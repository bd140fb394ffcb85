"""Throughput and latency of runq on this machine, one summary line per measurement.

    python -m bench.throughput [--tasks N] [--workers W] [--concurrency C] [--rate R] [--only NAME,...]
                               [--inflight K] [--batch B] [--batches P] [--seconds S] [--calls C]
                               [--producers P] [--profile DIR]

Every measurement starts a real `runq serve` (synchronous=NORMAL, a fresh database in a temporary
folder, removed afterwards) and, where needed, real `runq worker` processes; all traffic is on 127.0.0.1.

- enqueue_single: N tasks, one enqueue request each, on ONE connection, pipelined (K requests in flight);
  the clock stops when the last one is acknowledged (committed).
- enqueue_batch: N tasks through enqueue_many in batches of B (1,000), P batches in flight (4), acknowledged.
- drain: N no-op tasks enqueued into a paused queue, W worker processes (concurrency C) joined, then
  resume; the clock stops when the server counts N succeeded. ``--limit queue_rate|type_cap|both`` first
  sets limits that never bind (docs/limits.md: what a limit's checks cost).
- sequential: one connection, one call at a time (the next starts when the previous returned), for
  SyncClient and for Client on asyncio: a durable enqueue (acknowledged after its commit) and a status
  (get of a ready task), p50 / p99 and calls/s; beside them, in the same run and interleaved with them in
  rounds, the floor: an echo round trip of a small frame to a minimal trio echo server (bench.echo) over the
  same kind of client socket (a blocking socket; anyio on asyncio, the Client's transport).
- concurrent: P producer processes (8) at once, each a SyncClient making C durable enqueues one at a time
  on its own connection: enqueues/s and enqueues per commit (whether the commits of many connections are
  still grouped).
- latency: W workers; a producer enqueues `stamp` tasks at a fixed rate R for S seconds; each handler
  returns time.monotonic() at its start; enqueue-to-start = that minus the producer's time.monotonic()
  just before the enqueue call (CLOCK_MONOTONIC is system-wide on Linux). p50 / p99 / max.

--profile DIR samples the server, the worker processes and this process (the client) with py-spy during
each measurement and writes DIR/<measurement>-<process>.txt (top functions) and .folded (raw stacks).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from runq import Client, SyncClient
from runq.protocol.frames import encode_frame

from .common import CpuMeter, echo_server, fmt, measured, server, wait_for, workers

#: the frame the floor echoes: the size of a small request (a ``get``)
_ECHO_FRAME = encode_frame({"op": "get", "rid": 1234, "id": 1234})


async def _check_ready(c: Client, n: int) -> None:
    """Every acknowledged task is really there (guards against a bench that measures nothing)."""
    stats = await c.stats()
    if stats["enqueued"] != n:
        raise RuntimeError(f"server counts {stats['enqueued']} enqueued, expected {n}")


async def _enqueue_single(address: str, n: int, inflight: int, profile: str | None,
                          server_pid: int) -> tuple[float, CpuMeter]:
    async with Client(address) as c:
        lanes = [n // inflight + (1 if i < n % inflight else 0) for i in range(inflight)]

        async def one_lane(count: int) -> None:
            for _ in range(count):
                await c.enqueue("noop")

        with measured("enqueue_single", profile, server_pid) as cpu:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for count in lanes:
                    tg.start_soon(one_lane, count)
            dt = time.perf_counter() - t0
        await _check_ready(c, n)
        return n / dt, cpu


async def _enqueue_batch(address: str, n: int, batch: int, inflight: int, profile: str | None,
                         server_pid: int) -> tuple[float, CpuMeter]:
    async with Client(address) as c:
        chunks = [min(batch, n - i) for i in range(0, n, batch)]
        tasks: list[dict[str, Any]] = [{"type": "noop"}] * batch

        async def one_lane(mine: list[int]) -> None:
            for size in mine:
                await c.enqueue_many(tasks[:size])

        with measured("enqueue_batch", profile, server_pid) as cpu:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for lane in range(inflight):
                    tg.start_soon(one_lane, chunks[lane::inflight])
            dt = time.perf_counter() - t0
        await _check_ready(c, n)
        return n / dt, cpu


def enqueue_single(args: argparse.Namespace) -> str:
    with server() as (proc, address):
        rate, cpu = anyio.run(_enqueue_single, address, args.tasks, args.inflight, args.profile, proc.pid,
                              backend="trio")
    return (f"enqueue_single: {fmt(rate)} tasks/s (N={fmt(args.tasks)}, 1 connection, pipelined: "
            f"{args.inflight} requests in flight; {cpu.report()})")


def enqueue_batch(args: argparse.Namespace) -> str:
    with server() as (proc, address):
        rate, cpu = anyio.run(_enqueue_batch, address, args.tasks, args.batch, args.batches, args.profile,
                              proc.pid, backend="trio")
    return (f"enqueue_batch: {fmt(rate)} tasks/s (N={fmt(args.tasks)}, batches of {fmt(args.batch)}, "
            f"{args.batches} batches in flight; {cpu.report()})")


def drain(args: argparse.Namespace) -> str:
    n = args.tasks
    with server() as (proc, address), SyncClient(address) as c:
        c.pause("default")
        limits = _never_binding_limits(c, args.limit)
        for i in range(0, n, 5000):
            c.enqueue_many([{"type": "noop"}] * min(5000, n - i))
        with workers(address, args.workers, args.concurrency) as ws:
            wait_for(lambda: len(c.workers()) >= args.workers)
            with measured("drain", args.profile, proc.pid, [w.pid for w in ws], client=False) as cpu:
                t0 = time.perf_counter()
                c.resume("default")
                wait_for(lambda: c.stats()["succeeded"] >= n, timeout=600, step=0.005)
                dt = time.perf_counter() - t0
            stats = c.stats()
    if stats["succeeded"] != n or stats["failed"]:
        raise RuntimeError(f"drain: expected {n} succeeded and none failed, got {stats}")
    return (f"drain: {fmt(n / dt)} tasks/s (N={fmt(n)} no-op tasks, {args.workers} worker processes x "
            f"concurrency {args.concurrency}{limits}; {cpu.report()})")


#: ``--limit``: the limits set before a drain, none of which ever holds a task back
LIMITS = ("none", "queue_rate", "type_cap", "both")


def _never_binding_limits(c: SyncClient, which: str) -> str:
    """Set the limits ``which`` names (docs/limits.md), far above what a drain reaches, so that they cost their
    checks and never bind (issue 11: drain within 5% of no limit); the words for the summary line."""
    if which not in LIMITS:
        raise SystemExit(f"--limit must be one of {', '.join(LIMITS)}")
    if which in ("queue_rate", "both"):
        c.set_limit("queue", "default", rate=10_000_000, period=1.0, burst=1_000_000)
    if which in ("type_cap", "both"):
        c.set_limit("type", "noop", concurrency=1_000_000)
    return "" if which == "none" else f", limits: {which} (never binding)"


async def _latency(address: str, rate: float, seconds: float, nworkers: int, profile: str | None,
                   server_pid: int, worker_pids: list[int]) -> tuple[list[float], CpuMeter]:
    async with Client(address) as c:
        with anyio.fail_after(30):
            while len(await c.workers()) < nworkers:
                await anyio.sleep(0.05)
        sent: dict[int, float] = {}
        n = int(rate * seconds)

        async def one() -> None:
            t = time.monotonic()
            sent[await c.enqueue("stamp")] = t

        with measured("latency", profile, server_pid, worker_pids) as cpu:
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
        if len(lat) != n:
            raise RuntimeError(f"latency: {len(lat)} results for {n} tasks")
        return sorted(lat), cpu


def latency(args: argparse.Namespace) -> str:
    with server() as (proc, address), workers(address, args.workers, args.concurrency) as ws:
        lat, cpu = anyio.run(_latency, address, args.rate, args.seconds, args.workers, args.profile, proc.pid,
                             [w.pid for w in ws], backend="trio")

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * q))]

    return (f"latency: enqueue-to-start p50 {p(0.5):.3f} ms, p99 {p(0.99):.3f} ms, max {lat[-1]:.3f} ms "
            f"(at {fmt(args.rate)} tasks/s for {args.seconds:g} s, n={fmt(len(lat))}, {args.workers} worker "
            f"processes x concurrency {args.concurrency}; {cpu.report()})")


_SEQUENTIAL = ("floor", "enqueue", "status")


def _sequential_sync(address: str, echo_address: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """Per-call seconds of each kind, in ``rounds`` interleaved rounds (after a warm-up of each)."""
    host, port = echo_address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = _ECHO_FRAME

    def echo() -> None:
        sock.sendall(frame)
        got = 0
        while got < len(frame):
            got += len(sock.recv(65536))

    samples: dict[str, list[float]] = {k: [] for k in _SEQUENTIAL}
    with sock, SyncClient(address) as c:
        first = c.enqueue("noop")
        fns: dict[str, Callable[[], object]] = {"floor": echo, "enqueue": lambda: c.enqueue("noop"),
                                                 "status": lambda: c.status(first)}
        for fn in fns.values():
            for _ in range(min(200, calls)):
                fn()
        clock = time.perf_counter
        for _ in range(rounds):
            for kind, fn in fns.items():
                out = samples[kind]
                for _ in range(calls // rounds):
                    t = clock()
                    fn()
                    out.append(clock() - t)
    return samples


async def _sequential_async(address: str, echo_address: str, calls: int, rounds: int) -> dict[str, list[float]]:
    host, port = echo_address.rsplit(":", 1)
    frame = _ECHO_FRAME
    samples: dict[str, list[float]] = {k: [] for k in _SEQUENTIAL}
    async with await anyio.connect_tcp(host, int(port)) as stream, Client(address) as c:
        async def echo() -> None:
            await stream.send(frame)
            got = 0
            while got < len(frame):
                got += len(await stream.receive(65536))

        first = await c.enqueue("noop")

        async def enqueue() -> None:
            await c.enqueue("noop")

        async def status() -> None:
            await c.status(first)

        fns: dict[str, Callable[[], Awaitable[None]]] = {"floor": echo, "enqueue": enqueue, "status": status}
        for fn in fns.values():
            for _ in range(min(200, calls)):
                await fn()
        clock = time.perf_counter
        for _ in range(rounds):
            for kind, fn in fns.items():
                out = samples[kind]
                for _ in range(calls // rounds):
                    t = clock()
                    await fn()
                    out.append(clock() - t)
    return samples


def _sequential_lines(client: str, samples: dict[str, list[float]]) -> list[str]:
    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] * 1e6

    floor = statistics.median(samples["floor"]) * 1e6
    what = {"floor": "echo of a small frame to a minimal trio echo server: the floor",
            "enqueue": "enqueue('noop'), acknowledged after its commit",
            "status": "status(id) of a ready task"}
    lines = []
    for kind, xs in samples.items():
        p50 = pct(xs, 0.5)
        ratio = "" if kind == "floor" else f" = {p50 / floor:.2f}x the floor"
        lines.append(f"sequential_{client}_{kind}: p50 {p50:.0f} us{ratio}, p99 {pct(xs, 0.99):.0f} us, "
                     f"{fmt(len(xs) / sum(xs))} calls/s (n={fmt(len(xs))}, one call at a time on one connection; "
                     f"{what[kind]})")
    return lines


def sequential(args: argparse.Namespace) -> str:
    calls, rounds = args.calls, 10
    with server() as (proc, address), echo_server() as (_, echo_address):
        with measured("sequential_sync", args.profile, proc.pid):
            sync = _sequential_sync(address, echo_address, calls, rounds)
        with measured("sequential_asyncio", args.profile, proc.pid):
            asyn = anyio.run(_sequential_async, address, echo_address, calls, rounds, backend="asyncio")
    return "\n".join(_sequential_lines("sync", sync) + _sequential_lines("asyncio", asyn))


def _one_producer(address: str, n: int, ready: Any, start: Any, done: Any, leave: Any) -> None:
    """A producer process of ``concurrent``: one SyncClient, ``n`` durable enqueues one at a time (it stays
    until ``leave``, so that its CPU time can be read)."""
    with SyncClient(address) as c:
        c.ping()
        ready.release()
        start.wait()
        for _ in range(n):
            c.enqueue("noop")
        done.release()
        leave.wait(600)


def concurrent(args: argparse.Namespace) -> str:
    """P producer processes at once, each one connection with one durable enqueue at a time: whether the
    commits of many connections are still grouped (enqueues per commit) and what that gives."""
    procs, n = args.producers, args.calls
    ctx = multiprocessing.get_context("spawn")  # (a fresh interpreter each: no state of this one)
    with server() as (proc, address), SyncClient(address) as c:
        ready, start, done, leave = ctx.Semaphore(0), ctx.Event(), ctx.Semaphore(0), ctx.Event()
        producers = [ctx.Process(target=_one_producer, args=(address, n, ready, start, done, leave))
                     for _ in range(procs)]
        for p in producers:
            p.start()
        try:
            for _ in producers:
                if not ready.acquire(timeout=60):
                    raise RuntimeError("concurrent: a producer did not connect")
            before = c.stats()
            with measured("concurrent", args.profile, proc.pid, [p.pid for p in producers if p.pid],
                          client=False) as cpu:
                t0 = time.perf_counter()
                start.set()
                for _ in producers:
                    if not done.acquire(timeout=600):
                        raise RuntimeError("concurrent: a producer did not finish")
                dt = time.perf_counter() - t0
            after = c.stats()
            leave.set()
            for p in producers:
                p.join(60)
        finally:
            for p in producers:
                if p.is_alive():
                    p.kill()
                    p.join()
    enqueued = after["enqueued"] - before["enqueued"]
    if enqueued != procs * n or any(p.exitcode for p in producers):
        raise RuntimeError(f"concurrent: {enqueued} enqueued, expected {procs * n}")
    commits = after["commits"] - before["commits"]
    return (f"concurrent: {fmt(enqueued / dt)} enqueues/s from {procs} connections, each one durable enqueue at a "
            f"time (SyncClient, one process each, {fmt(n)} each); {enqueued / max(commits, 1):.1f} enqueues per "
            f"commit; {cpu.report().replace('workers', 'producers')}")


BENCHES = {"enqueue_single": enqueue_single, "enqueue_batch": enqueue_batch, "drain": drain, "latency": latency,
           "sequential": sequential, "concurrent": concurrent}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=100_000, help="N (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="worker processes W (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrency C of each worker (default %(default)s)")
    p.add_argument("--inflight", type=int, default=256, help="enqueue_single: requests in flight (default %(default)s)")
    p.add_argument("--batch", type=int, default=1000, help="enqueue_batch: tasks per batch (default %(default)s)")
    p.add_argument("--batches", type=int, default=4,
                   help="enqueue_batch: batches in flight on the one connection (default %(default)s)")
    p.add_argument("--calls", type=int, default=5000,
                   help="sequential: calls of each kind per client, in 10 interleaved rounds; concurrent: enqueues "
                        "per producer (default %(default)s)")
    p.add_argument("--producers", type=int, default=8,
                   help="concurrent: producer processes, one connection each (default %(default)s)")
    p.add_argument("--rate", type=float, default=500.0, help="latency: tasks/s (default %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="latency: how long (default %(default)s)")
    p.add_argument("--limit", default="none", choices=LIMITS,
                   help="drain: limits set first that never bind (default %(default)s)")
    p.add_argument("--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES))
    p.add_argument("--profile", metavar="DIR", default=None, help="write py-spy profiles of every process to DIR")
    p.add_argument("--db", metavar="URL", default=None,
                   help="a postgresql:// URL: each measurement's server runs on a fresh database made there "
                        "(default: a SQLite file)")
    args = p.parse_args()
    if args.db:
        from . import common

        common.PG_URL = args.db
    names = args.only.split(",")
    for name in names:
        if name not in BENCHES:
            p.error(f"unknown measurement {name!r}; choose from {', '.join(BENCHES)}")
    for name in names:
        print(BENCHES[name](args), flush=True)


if __name__ == "__main__":
    main()
