"""The HTTP API against the TCP protocol on this machine, one summary line per measurement.

    python -m bench.http [--seconds S] [--connections K] [--tasks N] [--batch B] [--batches P] [--only NAME,...]

One real `runq serve` (synchronous=NORMAL, a fresh database in a temporary folder, removed afterwards)
serves both the TCP protocol and the HTTP API; all traffic is on 127.0.0.1.

- http_get: GET /api/tasks/{id} of one existing task for S seconds, on K keep-alive connections, one request
  in flight per connection (a minimal HTTP/1.1 client on trio sockets, so that the client costs little);
  every answer must be 200. Requests per second.
- tcp_get: the same read through the TCP protocol (`runq.Client.get`), K requests in flight on one
  connection, for S seconds. Requests per second.
- http_enqueue_batch: N tasks through POST /api/tasks/batch in bodies of B tasks, P requests in flight
  (httpx), each answered once committed. Tasks per second; the server must then count N enqueued.
- tcp_enqueue_batch: N tasks through `Client.enqueue_many` in batches of B, P in flight, acknowledged.

Every line ends with the CPU used by the server and by this process (the client) during the timed
window, as a share of one core.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from typing import Any

import httpx
import trio

from runq import Client

from .common import fmt, measured, server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- HTTP client
async def _read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from ``stream`` (``buf`` keeps the leftover)."""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    start = len(head) + 4
    while len(buf) < start + length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    body = bytes(buf[start:start + length])
    del buf[:start + length]
    return status, body


async def _http_get(port: int, path: str, seconds: float, connections: int) -> int:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    done = 0
    deadline = trio.current_time() + seconds

    async def lane() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        buf = bytearray()
        async with stream:
            while trio.current_time() < deadline:
                await stream.send_all(request)
                status, _ = await _read_response(stream, buf)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
                done += 1

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(lane)
    return done


# ---------------------------------------------------------------------------------------------- measurements
async def bench_http_get(address: str, url: str, port: int, args: argparse.Namespace, pid: int) -> str:
    async with httpx.AsyncClient(base_url=url) as c:
        tid = (await c.post("/api/tasks", json={"type": "noop", "data": {"x": 1}})).json()["task_id"]
    with measured("http_get", args.profile, pid) as cpu:
        t0 = time.perf_counter()
        n = await _http_get(port, f"/api/tasks/{tid}", args.seconds, args.connections)
        dt = time.perf_counter() - t0
    return f"http_get: {fmt(n / dt)} requests/s (GET /api/tasks/{{id}}, {args.connections} connections, " \
           f"{fmt(n)} in {dt:.1f}s); {cpu.report()}"


async def bench_tcp_get(address: str, url: str, port: int, args: argparse.Namespace, pid: int) -> str:
    async with Client(address) as c:
        tid = await c.enqueue("noop", {"x": 1})
        done = 0
        with measured("tcp_get", args.profile, pid) as cpu:
            t0 = time.perf_counter()
            deadline = trio.current_time() + args.seconds

            async def lane() -> None:
                nonlocal done
                while trio.current_time() < deadline:
                    await c.get(tid)
                    done += 1

            async with trio.open_nursery() as nursery:
                for _ in range(args.connections):
                    nursery.start_soon(lane)
            dt = time.perf_counter() - t0
    return f"tcp_get: {fmt(done / dt)} requests/s (Client.get, {args.connections} in flight on one connection, " \
           f"{fmt(done)} in {dt:.1f}s); {cpu.report()}"


async def bench_http_batch(address: str, url: str, port: int, args: argparse.Namespace, pid: int) -> str:
    n, b = args.tasks, args.batch
    bodies = [{"tasks": [{"type": "noop", "data": {"i": i + j}} for j in range(min(b, n - i))]}
              for i in range(0, n, b)]
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=args.batches)) as c:
        before = (await c.get("/api/stats")).json()["totals"]["enqueued"]
        todo = list(bodies)
        with measured("http_enqueue_batch", args.profile, pid) as cpu:
            t0 = time.perf_counter()

            async def lane() -> None:
                while todo:
                    body = todo.pop()
                    r = await c.post("/api/tasks/batch", json=body)
                    if r.status_code != 201:
                        raise RuntimeError(f"POST /api/tasks/batch answered {r.status_code}: {r.text[:200]}")

            async with trio.open_nursery() as nursery:
                for _ in range(args.batches):
                    nursery.start_soon(lane)
            dt = time.perf_counter() - t0
        after = (await c.get("/api/stats")).json()["totals"]["enqueued"]
    if after - before != n:
        raise RuntimeError(f"server counts {after - before} enqueued, expected {n}")
    return f"http_enqueue_batch: {fmt(n / dt)} tasks/s (POST /api/tasks/batch, {b} per body, {args.batches} in " \
           f"flight, {fmt(n)} tasks); {cpu.report()}"


async def bench_tcp_batch(address: str, url: str, port: int, args: argparse.Namespace, pid: int) -> str:
    n, b = args.tasks, args.batch
    batches = [[{"type": "noop", "payload": {"i": i + j}} for j in range(min(b, n - i))] for i in range(0, n, b)]
    async with Client(address) as c:
        before = (await c.stats())["enqueued"]
        with measured("tcp_enqueue_batch", args.profile, pid) as cpu:
            t0 = time.perf_counter()

            async def lane() -> None:
                while batches:
                    await c.enqueue_many(batches.pop())

            async with trio.open_nursery() as nursery:
                for _ in range(args.batches):
                    nursery.start_soon(lane)
            dt = time.perf_counter() - t0
        after = (await c.stats())["enqueued"]
    if after - before != n:
        raise RuntimeError(f"server counts {after - before} enqueued, expected {n}")
    return f"tcp_enqueue_batch: {fmt(n / dt)} tasks/s (Client.enqueue_many, {b} per batch, {args.batches} in " \
           f"flight, {fmt(n)} tasks); {cpu.report()}"


BENCHES: dict[str, Any] = {
    "http_get": bench_http_get, "tcp_get": bench_tcp_get,
    "http_enqueue_batch": bench_http_batch, "tcp_enqueue_batch": bench_tcp_batch,
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per read measurement (default 5)")
    p.add_argument("--connections", type=int, default=16, help="connections (HTTP) / requests in flight (TCP)")
    p.add_argument("--tasks", type=int, default=50_000, help="tasks per enqueue measurement (default 50,000)")
    p.add_argument("--batch", type=int, default=1000, help="tasks per body / batch (default 1,000)")
    p.add_argument("--batches", type=int, default=4, help="bodies / batches in flight (default 4)")
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--profile", default=None, help="py-spy profiles into this folder")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(BENCHES)
    if unknown:
        p.error(f"unknown measurement(s): {sorted(unknown)}")
    port = _free_port()
    os.environ["RUNQ_HTTP_PORT"] = str(port)  # read by the `runq serve` that bench.common starts
    with server() as (proc, address):
        url = f"http://127.0.0.1:{port}"
        for name in names:
            print(trio.run(BENCHES[name], address, url, port, args, proc.pid), flush=True)


if __name__ == "__main__":
    main()
