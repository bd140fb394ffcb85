"""What a store's commit costs in-process, without a server: lone batches and groups of batches.

    python -m bench.store_commit [--db FILE|URL] [--commits 3000] [--group 32] [--rounds 5]

On a fresh SQLite file in a temporary folder (or the PostgreSQL database ``--db`` names, whose runq tables must
not exist yet), rounds of: ``--commits`` commits of ONE batch (one new task, as a lone enqueue makes: SQLite
through ``commit_here``, the server's inline path; PostgreSQL through ``write_now``), then ``--commits`` /
``--group`` commits of ``--group`` batches each (one new task and one finished task with two events per batch,
merged into one transaction as the writer thread does). Prints the median over the rounds of the time per
commit and per batch. Made to compare two versions of the store code in one run (run it from each checkout in
turns): it is the store's share of ``bench.throughput``'s ``enqueue_single`` and ``drain``, with no server,
workers or sockets to add noise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from runq.app.core import EventRecord, State, Task
from runq.app.store import Batch, open_store

T0 = 1_700_000_000.0


def task(tid: int) -> Task:
    return Task(tid, "default", "noop", b"\x90", 0, State.READY, None, 60.0, 3, 0, None, None, None, None, T0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=None, help="a postgresql:// URL (default: a SQLite file in a temporary folder)")
    p.add_argument("--commits", type=int, default=3000)
    p.add_argument("--group", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="runq-bench-")
    s = open_store(a.db or os.path.join(tmp, "bench.db"))
    lone: list[float] = []
    grouped: list[float] = []
    next_id = 1
    event_id = 1
    inline = getattr(s, "commit_here", None) if a.db is None else None
    try:
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for _ in range(a.commits):
                b = Batch(new_rows=[task(next_id).new_row()])
                next_id += 1
                if inline is not None:
                    assert inline([b])
                else:
                    s.write_now(b)
            lone.append((time.perf_counter() - t0) / a.commits)
            t0 = time.perf_counter()
            n = a.commits // a.group
            for _ in range(n):
                batches = []
                for _ in range(a.group):
                    done = task(next_id - a.commits)  # (a task of the lone commits, finished)
                    done.state, done.attempt, done.finished_at = State.SUCCEEDED, 1, T0 + 1
                    batches.append(Batch(new_rows=[task(next_id).new_row()], rows=[done.row()],
                                         events=[EventRecord(done.id, T0, "started", "running", "w", 1, None, event_id),
                                                 EventRecord(done.id, T0 + 1, "succeeded", "succeeded", "w", 1, None,
                                                             event_id + 1)]))
                    next_id += 1
                    event_id += 2
                err = s.commit(batches)  # type: ignore[attr-defined]
                assert err is None, err
            grouped.append((time.perf_counter() - t0) / n)
    finally:
        s.close()
        shutil.rmtree(tmp, ignore_errors=True)
    lm, gm = statistics.median(lone), statistics.median(grouped)
    print(f"store_commit ({'PostgreSQL' if a.db else 'SQLite'}): lone batch {lm * 1e6:.1f} us/commit; groups of "
          f"{a.group} batches {gm * 1e6:.0f} us/commit = {gm / a.group * 1e6:.1f} us/batch (median of {a.rounds} "
          f"rounds; best {min(lone) * 1e6:.1f} / {min(grouped) * 1e6:.0f} us)")


if __name__ == "__main__":
    main()
