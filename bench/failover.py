"""Failover time: ``kill -9`` of the active server to the first task the standby accepts, over repeated kills.

    python -m bench.failover [--db postgresql://USER@HOST:PORT/DBNAME] [--kills 10] [--lease 5]

Two ``runq serve`` processes on one fresh PostgreSQL database (made in the database of ``--db``, dropped
after; without ``--db``, a throwaway PostgreSQL server is started as the tests start theirs,
tests/pg_server.py), each on a fixed port of 127.0.0.1, the second one a standby. A producer thread enqueues
no-op tasks one after another through a client given both addresses (reconnection backoff 10-50 ms, so that
its own waiting adds little). Each round: the producer's tasks are acknowledged by the active server; it is
killed with SIGKILL; the failover time is from just before the kill to the first acknowledgement that comes
from the other server; the killed one is started again (it waits as a standby) and the roles swap for the
next round. Prints each time, then one summary line: p50 and max over the kills, and how many were within
the issue's bound (lease + 1 s).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from runq import SyncClient
from runq.protocol.calls import Backoff

from .common import ROOT, _env, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One ``runq serve`` on a fixed port, its output in a file."""

    def __init__(self, db: str, port: int, lease: float, tmp: str, name: str) -> None:
        self.db, self.port, self.lease, self.tmp, self.name = db, port, lease, tmp, name
        self.address = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.log = os.path.join(self.tmp, f"{self.name}-{self.starts}.log")
        port_file = os.path.join(self.tmp, f"{self.name}.port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "serve", "--db", self.db, "--host",
                 "127.0.0.1", "--port", str(self.port), "--http-port", "0", "--lease", str(self.lease),
                 "--port-file", port_file], stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 60
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runq serve did not start: {self.output()}")
            time.sleep(0.01)
        while "runq serving on" not in self.output() and "runq standby on" not in self.output():
            time.sleep(0.01)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


class Producer:
    """Enqueues one no-op task after another; notes which server acknowledged each, and when."""

    def __init__(self, addresses: str) -> None:
        self.acks: list[tuple[float, str]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.client = SyncClient(addresses, retry_for=120, backoff=Backoff(0.01, 0.05))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.client as c:
                i = 0
                while not self.stop.is_set():
                    c.enqueue("noop", i)
                    self.acks.append((time.perf_counter(), c.address))
                    i += 1
                    time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def first_from(self, address: str, after: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"the producer failed: {self.error!r}")
            found = [at for at, addr in self.acks[-5000:] if at >= after and addr == address]
            if found:
                return found[0]
            time.sleep(0.002)
        raise RuntimeError(f"no task was acknowledged by {address} within {timeout}s")


def run(db_url: str, kills: int, lease: float) -> list[float]:
    import psycopg

    name = f"runq_failover_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    db = db_url.rsplit("/", 1)[0] + "/" + name
    tmp = tempfile.mkdtemp(prefix="runq-failover-")
    nodes = [Node(db, free_port(), lease, tmp, "a"), Node(db, free_port(), lease, tmp, "b")]
    times: list[float] = []
    producer: Producer | None = None
    try:
        nodes[0].start()
        nodes[1].start()
        assert "runq standby on" in nodes[1].output(), nodes[1].output()
        producer = Producer(",".join(n.address for n in nodes))
        active, standby = nodes
        for k in range(kills):
            t = time.perf_counter()
            producer.first_from(active.address, t, 60)  # the active one serves the producer now
            time.sleep(0.2 + 0.37 * (k % 5) % lease)  # (the kill lands at different points of the renewal cycle)
            killed_at = time.perf_counter()
            active.kill9()
            first = producer.first_from(standby.address, killed_at, lease + 60)
            times.append(first - killed_at)
            print(f"kill {k + 1}: {active.name} killed, {standby.name} accepted a task {times[-1]:.3f}s later",
                  flush=True)
            active.start()  # back as a standby
            if "runq standby on" not in active.output():
                raise RuntimeError(f"the restarted server did not wait as a standby: {active.output()}")
            active, standby = standby, active
    finally:
        if producer is not None:
            producer.stop.set()
            producer.thread.join(30)
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                stop_process(n.proc)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="a postgresql:// URL of a database where this may create one")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--lease", type=float, default=5.0)
    args = ap.parse_args()
    pg = None
    url = args.db
    if url is None:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        import pg_server

        pg = pg_server.PgServer()
        url = pg.dsn()
    try:
        times = run(url, args.kills, args.lease)
    finally:
        if pg is not None:
            pg.stop()
    within = sum(1 for t in times if t <= args.lease + 1.0)
    print(f"failover (kill -9 to first task accepted by the standby), lease {args.lease:g}s, {len(times)} kills: "
          f"p50 {statistics.median(times):.3f}s, max {max(times):.3f}s, min {min(times):.3f}s; "
          f"{within}/{len(times)} within lease + 1 s")


if __name__ == "__main__":
    main()
