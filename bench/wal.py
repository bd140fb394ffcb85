"""How large the SQLite write-ahead log grows while big tasks are enqueued with a dashboard-style reader open.

    python -m bench.wal [--tasks N] [--size KB] [--producers P]

A real `runq serve` (a fresh database in a temporary folder); P producer threads, each a SyncClient
enqueuing one task of ``size`` KB at a time (N in all); beside them, a read-only SQLite connection that
reads the tasks table as `runq tui --db` does (a query every 50 ms, its own short transactions). A sampler
watches the size of the `-wal` file every 10 ms. Prints one line: the largest -wal size seen, its size at
the end, the enqueue rate, and the payload bytes written (the -wal should stay a bounded multiple of the
checkpoint interval, not a fraction of everything written).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time

from runq import SyncClient

from .common import fmt, server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=2000, help="N (default %(default)s)")
    p.add_argument("--size", type=int, default=256, help="payload KB per task (default %(default)s)")
    p.add_argument("--producers", type=int, default=4, help="producer threads P (default %(default)s)")
    args = p.parse_args()
    payload = os.urandom(args.size * 1024)
    with tempfile.TemporaryDirectory(prefix="runq-bench-wal-") as tmp:
        db = os.path.join(tmp, "bench.db")
        wal = db + "-wal"
        with server(db) as (_, address):
            stop = threading.Event()
            peak = [0]

            def sample() -> None:
                while not stop.is_set():
                    try:
                        peak[0] = max(peak[0], os.stat(wal).st_size)
                    except FileNotFoundError:
                        pass
                    time.sleep(0.01)

            def read() -> None:  # (as runq.tui.offline: read-only, a query now and then)
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                try:
                    while not stop.is_set():
                        conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
                        conn.execute("SELECT id, type, length(payload) FROM tasks ORDER BY id DESC LIMIT 50").fetchall()
                        time.sleep(0.05)
                finally:
                    conn.close()

            def produce(n: int) -> None:
                with SyncClient(address) as c:
                    for _ in range(n):
                        c.enqueue("big", payload)

            helpers = [threading.Thread(target=sample), threading.Thread(target=read)]
            for t in helpers:
                t.start()
            share = [args.tasks // args.producers + (1 if i < args.tasks % args.producers else 0)
                     for i in range(args.producers)]
            producers = [threading.Thread(target=produce, args=(n,)) for n in share]
            t0 = time.perf_counter()
            for t in producers:
                t.start()
            for t in producers:
                t.join()
            dt = time.perf_counter() - t0
            time.sleep(0.5)  # (what the server does once the producers are done)
            stop.set()
            for t in helpers:
                t.join()
            end = os.stat(wal).st_size if os.path.exists(wal) else 0
        mb = 1024 * 1024
        print(f"wal: peak -wal {peak[0] / mb:.1f} MB, {end / mb:.1f} MB at the end "
              f"({fmt(args.tasks)} tasks of {args.size} KB = {args.tasks * args.size / 1024:.0f} MB of payload, "
              f"{args.producers} producers, a read-only reader open; {fmt(args.tasks / dt)} enqueues/s)", flush=True)


if __name__ == "__main__":
    main()
