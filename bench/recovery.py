"""Restart time and memory with many queued tasks, and the idle server's footprint.

    python -m bench.recovery [--tasks 1000000] [--profile DIR]

Builds a database holding N ready tasks in the queue `default` (written directly through runq's SQLiteStore,
exactly the rows an enqueue writes: the short first insert and no event row, since the timeline's
`enqueued` event of a task ready at once is synthesised from the row; each task has its own small msgpack
payload {"n": i}), then times `runq serve` from launch until it serves: its
port file appears AND a client's get() of the last task answers. Half a second later it reads the
server's RSS (VmRSS in /proc/PID/status) while it holds them. Then the same on an empty database: the
idle server's RSS and start-to-serving time. The temporary folder is removed at the end.

--profile DIR samples the server with py-spy from its launch until it serves (the first ~50 ms, while
py-spy attaches, are missed; sampling slows the start a little).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import msgpack

from runq import SyncClient
from runq.app.core import State, Task
from runq.app.store import Batch, SQLiteStore

from .common import Spy, fmt, rss_mb, start_server, stop_process


def build(db: str, n: int, chunk: int = 100_000) -> None:
    """Write ``n`` ready tasks (ids 1..n) as the server writes enqueued ones."""
    store = SQLiteStore(db)
    try:
        now = time.time()
        ready = State.READY
        for start in range(1, n + 1, chunk):
            ids = range(start, min(n, start + chunk - 1) + 1)
            new_rows = [Task(i, "default", "noop", msgpack.packb({"n": i}), 0, ready, None, 600.0, 3, 0, None,
                             None, None, None, now).new_row() for i in ids]
            store.write_now(Batch(new_rows=new_rows))
    finally:
        store.close()


def measure(db: str, last_id: int | None, settle: float = 0.5, profile: str | None = None,
            name: str = "") -> tuple[float, float]:
    """Seconds from launching `runq serve` on ``db`` to serving, and its RSS in MiB once serving."""
    spies: list[Spy] = []

    def attach(pid: int) -> None:
        if profile is not None:
            spies.append(Spy(profile, name, pid))

    proc, port, t0 = start_server(db, on_spawn=attach)
    try:
        with SyncClient(f"127.0.0.1:{port}") as c:
            if last_id is not None:
                task = c.get(last_id)
                if task["state"] != "ready":
                    raise RuntimeError(f"task {last_id} is {task['state']}, expected ready")
            else:
                c.ping()
            serving = time.perf_counter() - t0
            for spy in spies:
                spy.stop()
            if last_id is not None:
                live = c.stats()["tasks_live"]
                if live != last_id:
                    raise RuntimeError(f"server holds {live} live tasks, expected {last_id}")
            time.sleep(settle)
            return serving, rss_mb(proc.pid)
    finally:
        for spy in spies:
            spy.signal_stop()
        stop_process(proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=1_000_000, help="queued tasks N (default %(default)s)")
    p.add_argument("--profile", metavar="DIR", default=None,
                   help="sample the server with py-spy from launch to serving; write DIR/restart-server.txt")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="runq-recovery-")
    try:
        db = os.path.join(tmp, "big.db")
        t0 = time.perf_counter()
        build(db, args.tasks)
        built = time.perf_counter() - t0
        size = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))
        serving, rss = measure(db, args.tasks, profile=args.profile, name="restart-server")
        idle_serving, idle_rss = measure(os.path.join(tmp, "empty.db"), None)
        print(f"restart: serving {serving:.2f} s after launch with {fmt(args.tasks)} queued tasks "
              f"(database {size / 2**20:,.0f} MiB, built in {built:.1f} s)", flush=True)
        print(f"memory: server RSS {rss:,.0f} MiB holding {fmt(args.tasks)} queued tasks "
              f"({(rss - idle_rss) * 2**20 / max(1, args.tasks):,.0f} bytes/task above the idle server)", flush=True)
        print(f"idle: server RSS {idle_rss:,.0f} MiB, serving {idle_serving:.2f} s after launch (empty database)",
              flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
