"""The cost of authentication and TLS on enqueue: no token vs a shared token vs a shared token over TLS.

    python -m bench.auth [--calls C] [--tasks N] [--inflight K] [--connects M] [--rounds R]

Three real `runq serve` processes run side by side for the whole run (fresh databases, synchronous NORMAL,
127.0.0.1): one with no token, one with `--token`, one with `--token` and `--tls-cert`/`--tls-key` (a
throwaway CA and certificate made with trustme, which the test extra installs). The measurements are made
in R rounds (default 5), each round visiting the three servers in a rotated order, so that all three see the
same machine; the figures are over all rounds. One line per mode and measurement kind:

- sequential: one SyncClient, one durable `enqueue("noop")` at a time (the next starts when the previous
  returned), C calls per round (default 1,000): p50 / p99 in microseconds and calls/s.
- pipelined: one Client on asyncio, N enqueues per round (default 20,000) with K in flight (default 256) on
  the one connection: enqueues/s, and the server's CPU time per enqueue (user + system, /proc).
- connect: M connections per round (default 50), each a SyncClient made (TCP connect, TLS handshake when
  on, hello and welcome) and closed: p50 / p99 in milliseconds.

The token is checked once per connection, at hello (compared in constant time): a request carries none.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from runq import Client, SyncClient

from .common import cpu_seconds, fmt, server

TOKEN = "bench-secret-token-0123456789"


class Mode(NamedTuple):
    name: str
    serve: list[str]  # options of `runq serve`
    client: dict[str, Any]  # keyword arguments of the clients


@contextmanager
def modes() -> Iterator[list[Mode]]:
    try:
        import trustme
    except ImportError:
        raise SystemExit("bench.auth needs trustme for its TLS certificate: pip install -e '.[test]'") from None
    with tempfile.TemporaryDirectory(prefix="runq-bench-tls-") as tmp:
        ca = trustme.CA()
        cert, ca_file = str(Path(tmp) / "server.pem"), str(Path(tmp) / "ca.pem")
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
        ca.cert_pem.write_to_path(ca_file)
        yield [
            Mode("no token", [], {"token": "", "tls": False}),
            Mode("token", ["--token", TOKEN], {"token": TOKEN, "tls": False}),
            Mode("token+TLS", ["--token", TOKEN, "--tls-cert", cert, "--tls-key", cert], {"token": TOKEN, "tls": ca_file}),
        ]


class Figures:
    """What one mode measured, over all rounds."""

    def __init__(self) -> None:
        self.sequential: list[float] = []  # seconds per call
        self.sequential_wall = 0.0
        self.pipelined = 0
        self.pipelined_wall = 0.0
        self.pipelined_cpu = 0.0
        self.connects: list[float] = []


def sequential(address: str, kw: dict[str, Any], calls: int, into: Figures) -> None:
    with SyncClient(address, **kw) as c:
        for _ in range(50):  # warm-up
            c.enqueue("noop")
        t0 = time.perf_counter()
        for _ in range(calls):
            t = time.perf_counter()
            c.enqueue("noop")
            into.sequential.append(time.perf_counter() - t)
        into.sequential_wall += time.perf_counter() - t0


def pipelined(address: str, kw: dict[str, Any], n: int, inflight: int, server_pid: int, into: Figures) -> None:
    async def run() -> None:
        async with Client(address, **kw) as c:
            await asyncio.gather(*(c.enqueue("noop") for _ in range(inflight)))  # warm-up
            lanes = [n // inflight + (1 if i < n % inflight else 0) for i in range(inflight)]

            async def lane(count: int) -> None:
                for _ in range(count):
                    await c.enqueue("noop")

            cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
            await asyncio.gather(*(lane(k) for k in lanes))
            into.pipelined_wall += time.perf_counter() - t0
            into.pipelined_cpu += cpu_seconds(server_pid) - cpu0
            into.pipelined += n

    asyncio.run(run())


def connects(address: str, kw: dict[str, Any], m: int, into: Figures) -> None:
    for _ in range(m):
        t = time.perf_counter()
        SyncClient(address, **kw).close()
        into.connects.append(time.perf_counter() - t)


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="sequential enqueues per round (default %(default)s)")
    p.add_argument("--tasks", type=int, default=20_000, help="pipelined enqueues per round (default %(default)s)")
    p.add_argument("--inflight", type=int, default=256, help="pipelined: requests in flight (default %(default)s)")
    p.add_argument("--connects", type=int, default=50, help="connections per round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default %(default)s)")
    args = p.parse_args()
    with modes() as ms, ExitStack() as stack:
        servers = [stack.enter_context(server(extra=m.serve)) for m in ms]
        figures = [Figures() for _ in ms]
        for r in range(args.rounds):
            for i in range(len(ms)):
                k = (i + r) % len(ms)  # (rotated: each mode goes first in some round)
                (proc, address), kw, fig = servers[k], ms[k].client, figures[k]
                connects(address, kw, args.connects, fig)
                sequential(address, kw, args.calls, fig)
                pipelined(address, kw, args.tasks, args.inflight, proc.pid, fig)
        for m, (_, address), fig in zip(ms, servers, figures, strict=True):
            with SyncClient(address, **m.client) as c:  # (every acknowledged enqueue is there)
                expected = args.rounds * (args.calls + 50 + args.tasks + args.inflight)
                if c.stats()["enqueued"] != expected:
                    raise RuntimeError(f"{m.name}: {c.stats()['enqueued']} enqueued, expected {expected}")
            seq = fig.sequential
            print(f"sequential enqueue, {m.name}: p50 {_pct(seq, 50) * 1e6:.0f} us, p99 {_pct(seq, 99) * 1e6:.0f} us, "
                  f"{fmt(len(seq) / fig.sequential_wall)} calls/s (SyncClient, {fmt(len(seq))} calls)", flush=True)
            print(f"pipelined enqueue, {m.name}: {fmt(fig.pipelined / fig.pipelined_wall)} enqueues/s, server CPU "
                  f"{fig.pipelined_cpu / fig.pipelined * 1e6:.1f} us/enqueue (Client on asyncio, {args.inflight} in "
                  f"flight, {fmt(fig.pipelined)} enqueues)", flush=True)
            print(f"connect, {m.name}: p50 {_pct(fig.connects, 50) * 1e3:.2f} ms, p99 {_pct(fig.connects, 99) * 1e3:.2f} "
                  f"ms (SyncClient made and closed: TCP, TLS handshake when on, hello; {len(fig.connects)} times)",
                  flush=True)


if __name__ == "__main__":
    main()
