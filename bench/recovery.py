"""Restart time and memory with many queued tasks, and the idle server's footprint.

    python -m bench.recovery [--tasks 1000000]

Builds a database holding N ready tasks (written directly through runq's Store, as a server would have
written them, one 'enqueued' event each), then times `runq serve` from launch until it serves (the port
file appears and a client's get() of the last task answers), and reads the server's RSS (/proc VmRSS)
while it holds them. Then the same for an empty database: idle RSS and start-to-serving time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from runq import SyncClient
from runq.app.core import State, Task
from runq.app.store import Batch, Store

from .common import fmt, rss_mb, server


def build(db: str, n: int, chunk: int = 50_000) -> None:
    store = Store(db)
    now = time.time()
    tid = 1
    while tid <= n:
        rows, events = [], []
        for i in range(tid, min(n, tid + chunk - 1) + 1):
            t = Task(i, "default", "noop", b"\xc0", 0, State.READY, None, 600.0, 3, 0, None, None, None, None, now)
            rows.append(t.row())
            events.append((i, now, "enqueued", "ready", None, 0, None))
        store.write_now(Batch(rows=rows, events=events))
        tid += chunk
    store.close()


def measure(db: str, last_id: int | None) -> tuple[float, float]:
    t0 = time.perf_counter()
    with server(db) as (proc, address):
        with SyncClient(address) as c:
            if last_id is not None:
                assert c.get(last_id)["state"] == "ready"
            else:
                c.ping()
            serving = time.perf_counter() - t0
            time.sleep(0.5)
            return serving, rss_mb(proc.pid)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1_000_000)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="runq-recovery-")
    db = os.path.join(tmp, "big.db")
    t0 = time.perf_counter()
    build(db, args.tasks)
    built = time.perf_counter() - t0
    serving, rss = measure(db, args.tasks)
    print(f"restart: serving {serving:.2f} s after launch with {fmt(args.tasks)} queued tasks "
          f"(database {os.path.getsize(db) / 2**20:,.0f} MiB, built in {built:.1f} s)", flush=True)
    print(f"memory: server RSS {rss:,.0f} MiB holding {fmt(args.tasks)} queued tasks", flush=True)
    idle_serving, idle_rss = measure(os.path.join(tmp, "empty.db"), None)
    print(f"idle: server RSS {idle_rss:,.0f} MiB, serving {idle_serving:.2f} s after launch (empty database)",
          flush=True)


if __name__ == "__main__":
    main()
