"""Which way of writing a group commit's rows is fastest on PostgreSQL: 10,000 new tasks in one transaction.

    python -m bench.pg_batch --db postgresql://user@host/dbname [--tasks 10000] [--rounds 7]

On a fresh table ``tasks`` in a schema of its own (``runq_bench``, dropped at the end) of the database given,
the same N ``NewTaskRecord`` rows (as the core makes them for an enqueue) are written in one transaction,
committed, by each way; the table is emptied between rounds and the ways take turns each round. Prints one
line per way: the median and best time of a commit, and rows/s at the median. The ways:

``unnest``        ONE ``INSERT ... SELECT * FROM unnest(%s::bigint[], ...)``, one array per column (the store's
                  below 64 rows)
``values``        ``INSERT ... VALUES (...), (...)`` in statements of up to 512 rows (as the SQLite store does)
``executemany``   ``cursor.executemany`` of a one-row INSERT (psycopg 3 pipelines it)
``copy``          ``COPY tasks (...) FROM STDIN`` (text format), ``write_row`` per row
``copy_binary``   the same in binary format, the column types given (the store's from 64 rows on)
``store``         ``PostgresStore.write_now`` of a ``Batch`` of the N new tasks (copy_binary, plus the term check)

With ``--lone R``, instead: R commits of ONE new task each (a lone enqueue's commit) through ``write_now``,
alternating the store's pipeline mode (2 round trips) and its plain transaction (4), and prints the median and
p90 of each; ``--no-sync`` runs them with ``synchronous_commit = off`` (no WAL flush: the round trips alone);
``--delay-ms D`` goes through a local proxy that adds D ms to every round trip (a network between runq and
PostgreSQL, as in production, where this machine has only loopback).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from runq.app.core.records import NEW_COLUMNS, NewTaskRecord
from runq.app.store import Batch
from runq.app.store.pg_schema import PG_MIGRATIONS, PG_TYPES
from runq.app.store.postgres import _INSERT_NEW, PostgresStore, _Unnest

COLS = ", ".join(f'"{c}"' for c in NEW_COLUMNS)


def rows(n: int) -> list[NewTaskRecord]:
    return [NewTaskRecord(i, "default", "noop", b"\x91" + i.to_bytes(4, "big"), 0, "ready", None, 60.0, 3, None,
                          1_700_000_000.0 + i / 1000, None) for i in range(1, n + 1)]


def unnest(cur: psycopg.Cursor[Any], data: list[NewTaskRecord]) -> None:
    _Unnest.run(_INSERT_NEW, cur, data)


def values(cur: psycopg.Cursor[Any], data: list[NewTaskRecord]) -> None:
    one = "(" + ", ".join(["%s"] * len(NEW_COLUMNS)) + ")"
    for i in range(0, len(data), 512):
        chunk = data[i:i + 512]
        cur.execute(f"INSERT INTO tasks ({COLS}) VALUES " + ", ".join([one] * len(chunk)),
                    [v for r in chunk for v in r])


def executemany(cur: psycopg.Cursor[Any], data: list[NewTaskRecord]) -> None:
    cur.executemany(f"INSERT INTO tasks ({COLS}) VALUES ({', '.join(['%s'] * len(NEW_COLUMNS))})", data)


def copy(cur: psycopg.Cursor[Any], data: list[NewTaskRecord]) -> None:
    with cur.copy(f"COPY tasks ({COLS}) FROM STDIN") as cp:
        for r in data:
            cp.write_row(r)


def copy_binary(cur: psycopg.Cursor[Any], data: list[NewTaskRecord]) -> None:
    with cur.copy(f"COPY tasks ({COLS}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types([PG_TYPES["tasks"][c] for c in NEW_COLUMNS])
        for r in data:
            cp.write_row(r)


WAYS: dict[str, Callable[[psycopg.Cursor[Any], list[NewTaskRecord]], None]] = {
    "unnest": unnest, "values": values, "executemany": executemany, "copy": copy, "copy_binary": copy_binary}


@contextlib.contextmanager
def delayed(url: str, delay: float) -> Iterator[str]:
    """``url`` through a TCP proxy on 127.0.0.1 that holds every chunk ``delay / 2`` seconds in each direction
    (a network's latency, not its bandwidth: chunks in flight overlap); yields the proxy's URL."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def pump(src: socket.socket, dst: socket.socket) -> None:
        q: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def send() -> None:
            while True:
                due, data = q.get()
                if not data:
                    dst.close()
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                dst.sendall(data)

        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            q.put((time.monotonic() + delay / 2, data))
            if not data:
                return

    def accept() -> None:
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            u = socket.create_connection((str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))))
            for a, b in ((c, u), (u, c)):
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(port))
    finally:
        lsock.close()


def lone(url: str, rounds: int, no_sync: bool, delay: float = 0.0) -> None:
    """One new task per commit, pipelined and plain in turns (see the module docstring)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS runq_bench CASCADE")
        conn.execute("CREATE SCHEMA runq_bench")
    opts = "-c search_path=runq_bench" + (" -c synchronous_commit=off" if no_sync else "")
    with contextlib.ExitStack() as stack:
        if delay:
            url = stack.enter_context(delayed(url, delay))
        _lone(url, opts, rounds, no_sync, delay)


def _lone(url: str, opts: str, rounds: int, no_sync: bool, delay: float) -> None:
    s = PostgresStore(psycopg.conninfo.make_conninfo(url, options=opts))
    times: dict[bool, list[float]] = {True: [], False: []}
    one = rows(1)[0]
    try:
        for i in range(1, 2 * rounds + 1):
            s.pipeline = bool(i % 2)
            batch = Batch(new_rows=[one._replace(id=i)])
            t0 = time.perf_counter()
            s.write_now(batch)
            times[s.pipeline].append(time.perf_counter() - t0)
    finally:
        s.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA runq_bench CASCADE")
    for way, ts in ((True, times[True]), (False, times[False])):
        ts.sort()
        print(f"lone commit, {'pipeline mode (2 round trips)' if way else 'plain transaction (4 round trips)':34s}: "
              f"median {statistics.median(ts) * 1e6:6.0f} us, p90 {ts[int(len(ts) * 0.9)] * 1e6:6.0f} us "
              f"(n={len(ts)}, synchronous_commit {'off' if no_sync else 'on'}"
              f"{f', {delay * 1000:g} ms added to each round trip' if delay else ''})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="a postgresql:// URL (a schema runq_bench is made and dropped)")
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lone", type=int, default=0, metavar="R", help="R lone commits each way, instead (docstring)")
    p.add_argument("--no-sync", action="store_true", help="--lone with synchronous_commit = off")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="--lone through a local proxy adding this latency to each round trip (a network)")
    a = p.parse_args()
    if a.lone:
        lone(a.db, a.lone, a.no_sync, a.delay_ms / 1000)
        return
    data = rows(a.tasks)
    times: dict[str, list[float]] = {w: [] for w in [*WAYS, "store"]}
    with psycopg.connect(a.db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS runq_bench CASCADE")
        conn.execute("CREATE SCHEMA runq_bench")
        conn.execute("SET search_path = runq_bench")
        conn.execute(PG_MIGRATIONS[0].split(";")[0])  # (the tasks table as the store makes it)
        try:
            for _ in range(a.rounds):
                for name, way in WAYS.items():
                    conn.execute("TRUNCATE tasks")
                    t0 = time.perf_counter()
                    with conn.transaction(), conn.cursor() as cur:
                        way(cur, data)
                    times[name].append(time.perf_counter() - t0)
                    (n,) = conn.execute("SELECT count(*) FROM tasks").fetchone() or (0,)
                    assert n == a.tasks, (name, n)
        finally:
            conn.execute("DROP SCHEMA runq_bench CASCADE")
    for _ in range(a.rounds):  # the whole store path, on a fresh database schema each round
        with psycopg.connect(a.db, autocommit=True) as conn:
            for t in ("tasks", "events", "queues", "meta", "requests", "limits", "breakers", "server_events",
                      "schedules", "runq_schema", "runq_writer"):
                conn.execute(f"DROP TABLE IF EXISTS {t}")
        s = PostgresStore(a.db)
        try:
            t0 = time.perf_counter()
            s.write_now(Batch(new_rows=data))
            times["store"].append(time.perf_counter() - t0)
        finally:
            s.close()
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:12s} {a.tasks} new tasks: median {med * 1000:7.1f} ms, best {min(ts) * 1000:7.1f} ms, "
              f"{a.tasks / med:>10,.0f} rows/s")


if __name__ == "__main__":
    main()
