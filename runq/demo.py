"""``runq demo``: a server with its database, local workers and sample tasks, shown flowing."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from .protocol.client import Client
from .protocol.errors import RunqError

__all__ = ["run_demo", "start_server", "stop_process"]

TEXTS = [
    "the quick brown fox jumps over the lazy dog and the dog sleeps",
    "to be or not to be that is the question whether tis nobler in the mind to suffer",
    "a task queue that runs as one process with workers that join from any machine",
    "it was the best of times it was the worst of times it was the age of wisdom",
]

_STATE_COLOR = {"succeeded": "32", "dead": "31", "cancelled": "33", "running": "36", "retry_scheduled": "35"}


def start_server(db: str, port: int = 0, extra: list[str] | None = None, timeout: float = 15.0,
                 on_start: Callable[[subprocess.Popen[bytes]], None] | None = None, stderr: Any = None,
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``runq serve`` on ``db``; return the process and its bound port.

    ``on_start(proc)`` runs as soon as the process exists (before it serves), with SIGTERM held back.
    ``stderr``: where its log goes (default: this process's stderr).

    Raises:
        RunqError: it exited before serving (its own error line, on its stderr, says why), or did not start.
    """
    port_file = db + ".port"
    if os.path.exists(port_file):
        os.unlink(port_file)
    with _holding_sigterm():
        proc = subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "serve", "--db", db,
                                 "--port", str(port), "--port-file", port_file, *(extra or [])], stderr=stderr)
        if on_start is not None:
            on_start(proc)
    deadline = time.monotonic() + timeout
    while not os.path.exists(port_file):
        if proc.poll() is not None:
            raise RunqError(f"its server (runq serve --port {port}) could not start (exit {proc.returncode}; "
                            "its error is above)")
        if time.monotonic() > deadline:
            proc.kill()
            raise RunqError("its server (runq serve) did not start in time")
        time.sleep(0.02)
    with open(port_file) as f:
        return proc, int(f.read())


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _line(ev: dict[str, Any], t0: float, colour: bool = False) -> str:
    kind = str(ev.get("kind"))
    color = _STATE_COLOR.get(kind, _STATE_COLOR.get(str(ev.get("state")), "0"))
    extra = ""
    if kind == "progress" and ev.get("progress") is not None:
        extra = f" {ev['progress']}"
    elif kind == "succeeded":
        r = repr(ev.get("result"))
        extra = f" result={r[:70]}{'...' if len(r) > 70 else ''}"
    elif ev.get("detail"):
        extra = f" ({str(ev['detail'])[:70]})"
    worker = f" on {ev['worker']}" if ev.get("worker") else ""
    shown = f"\x1b[{color}m{kind:<16}\x1b[0m" if colour else f"{kind:<16}"
    return (f"{time.monotonic() - t0:7.3f}s  task {ev['id']:>3} {ev['type']:<21} "
            f"{shown} attempt {ev.get('attempt')}{worker}{extra}")


async def _drive(address: str, n: int, t0: float, workers: int) -> dict[str, int]:
    rng = random.Random(7)
    async with Client(address) as watcher, Client(address) as client:
        with anyio.move_on_after(20):  # every worker gets a share (the first to join would take them all)
            while len(await client.workers()) < workers:
                await anyio.sleep(0.05)
        events = await watcher.subscribe()
        specs = _specs(n, rng)
        specs.append({"type": "simulate_backup", "payload": {"files": 5, "seconds": 2.5}, "queue": "default"})
        specs.append({"type": "flaky", "payload": {"url": "https://payments.example.invalid"}})
        specs.append({"type": "slow", "payload": {"seconds": 5}, "retries": 0})
        specs.append({"type": "word_count", "payload": {"text": "scheduled for later"}, "delay": 2.0})
        ids = await client.enqueue_many(specs)
        print(f"enqueued {len(ids)} tasks (ids {ids[0]}..{ids[-1]}) in one batch; "
              f"showing every event of the slow/flaky/backup tasks and the first quick results\n")
        pending = set(ids)
        shown = 0
        colour = sys.stdout.isatty()  # no escape codes in a pipe or a file
        with anyio.move_on_after(60):
            async for ev in events:
                if ev.get("id") not in pending and ev.get("kind") != "dropped":
                    continue
                if ev.get("state") in ("succeeded", "dead", "cancelled"):
                    pending.discard(ev["id"])
                quick = ev.get("type") in ("word_count", "calculate_statistics")
                if not quick or (ev.get("kind") == "succeeded" and shown < 12):
                    print(_line(ev, t0, colour))
                    shown += quick
                if not pending:
                    break
        counts: dict[str, int] = {}
        for tid in ids:
            st = (await client.get(tid))["state"]
            counts[st] = counts.get(st, 0) + 1
        flaky_id = ids[n + 1]
        print(f"\ntimeline of the flaky task {flaky_id} (runq events {flaky_id}):")
        for e in await client.events(flaky_id):
            print(f"  {e['kind']:<16} -> {e['state']:<10} attempt {e['attempt']}  {e.get('detail') or ''}")
        stats = await client.stats()
        print(f"\nstates: {counts}; server: {stats['succeeded']} succeeded, {stats['dead']} dead, "
              f"{stats['commits']} group commits for {stats['commit_batches']} batches")
        return counts


def _specs(n: int, rng: random.Random) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    for i in range(n):
        if i % 2:
            specs.append({"type": "word_count", "payload": {"text": rng.choice(TEXTS)}})
        else:
            specs.append({"type": "calculate_statistics",
                          "payload": {"numbers": [rng.randint(1, 100) for _ in range(20)]},
                          "priority": rng.choice([0, 0, 5])})
    return specs


def _feed(address: str, n: int, stop: threading.Event) -> None:
    """Enqueue the demo's tasks, then a few more every second until ``stop`` (for the dashboard to show)."""
    from .protocol.sync_client import SyncClient

    rng = random.Random(7)
    try:
        with SyncClient(address) as client:
            client.enqueue_many(_specs(n, rng))
            client.enqueue_many([
                {"type": "simulate_backup", "payload": {"files": 5, "seconds": 2.5}},
                {"type": "flaky", "payload": {"url": "https://payments.example.invalid"}},
                {"type": "slow", "payload": {"seconds": 5}, "retries": 0},
                {"type": "word_count", "payload": {"text": "scheduled for later"}, "delay": 2.0},
            ])
            while not stop.wait(1.0):
                batch = _specs(rng.randint(1, 6), rng)
                if rng.random() < 0.15:
                    batch.append({"type": "simulate_backup", "payload": {"files": 4, "seconds": rng.uniform(1, 4)}})
                if rng.random() < 0.05:
                    batch.append({"type": "flaky", "payload": {"url": "https://payments.example.invalid"}})
                client.enqueue_many(batch)
    except (RunqError, OSError) as exc:  # the dashboard shows the server; a feeder failure must not end the demo
        print(f"runq demo: task feeder stopped: {exc}", file=sys.stderr)


def _run_dashboard(address: str, n: int) -> int:
    from .tui import LiveSource, RunqDashboard

    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(address, n, stop), daemon=True)
    feeder.start()
    try:
        RunqDashboard(LiveSource(address)).run()
    finally:
        stop.set()
        feeder.join(10)
    return 0


def run_demo(db: str | None = None, port: int = 0, workers: int = 2, tasks: int = 40, keep: bool = False,
             tui: bool = False) -> int:
    """Run the demo; return an exit code (0 when every task ended as expected).

    With ``tui``, open the dashboard on the demo's server (tasks keep arriving until it is closed)
    instead of printing the events.
    """
    # its lines as they happen, also into a pipe (`runq demo | tee demo.log`, a test reading them): block
    # buffering held "started 2 worker processes" back until the buffer filled, at a random later point
    if isinstance(sys.stdout, io.TextIOWrapper) and not sys.stdout.line_buffering:
        sys.stdout.reconfigure(line_buffering=True)
    # SIGTERM (kill, a service manager) stops the demo as Ctrl-C does: its server and workers with it
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_demo(db, port, workers, tasks, keep, tui)
    finally:
        if not _Sigterm.received:
            signal.signal(signal.SIGTERM, previous)
        # else SIGTERM stays ignored: the process is on its way out, and a second SIGTERM landing after this
        # line would otherwise kill it with the signal instead of letting it end with 130 as interrupted


def _interrupt(signum: int, frame: Any) -> None:
    _Sigterm.received = True
    if _Sigterm.holding:
        _Sigterm.pending = True
        return
    raise KeyboardInterrupt


def _run_demo(db: str | None, port: int, workers: int, tasks: int, keep: bool, tui: bool) -> int:
    tmp = None
    if db is None:
        tmp = tempfile.mkdtemp(prefix="runq-demo-")
        db = os.path.join(tmp, "demo.db")
    t0 = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []  # every process started so far, the server first
    # under the dashboard, the processes' log lines (the flaky task's failures...) would be written over it
    log_path = db + ".log" if tui else None
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed in the finally below
    try:
        # (SIGTERM is held back while a process starts, so that none is started without being in `procs`)
        try:
            _, bound = start_server(db, port, on_start=procs.append, stderr=log)
        except RunqError:
            if log is not None and log_path is not None:  # its error went to the log: show it
                log.flush()
                with open(log_path, "rb") as f:
                    sys.stderr.write(f.read().decode(errors="replace"))
            raise
        address = f"127.0.0.1:{bound}"
        print(f"runq demo: server on {address}, database {db}")
        for _ in range(workers):
            with _holding_sigterm():
                procs.append(subprocess.Popen([sys.executable, "-m", "runq.cli", "--log-level", "WARNING", "worker",
                                               "runq.demo_tasks:worker", "--server", address], stderr=log))
        print(f"started {workers} worker processes (runq worker runq.demo_tasks:worker --server {address})")
        if tui:
            return _run_dashboard(address, tasks)
        counts = anyio.run(_drive, address, tasks, t0, workers)
        if keep:
            print(f"\nserver still running on {address}; try: runq tasks -s {address}   (Ctrl-C stops)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        # a second SIGTERM or Ctrl-C must not cut this short (what is not stopped here would be orphaned)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for p in reversed(procs):  # the workers, then the server
                stop_process(p)
        finally:
            signal.signal(signal.SIGINT, previous_int)
        if log is not None:
            log.close()
        if tui:
            print(f"runq demo: stopped; the database stays at {db} (runq tui --db {db} opens it offline); the "
                  f"server's and workers' log is {log_path}")
    ok = counts.get("succeeded", 0) == tasks + 2 and counts.get("dead", 0) == 2
    print("demo " + ("finished: every task ended as expected" if ok else f"ended unexpectedly: {counts}"))
    return 0 if ok else 1


class _Sigterm:
    """State of the demo's SIGTERM handler: held back while a child process starts (not with the signal mask,
    which the child would inherit), then raised as KeyboardInterrupt."""

    holding = 0
    pending = False
    received = False


@contextlib.contextmanager
def _holding_sigterm() -> Iterator[None]:
    """Hold a SIGTERM back while a child process starts and is recorded; it takes effect at the end."""
    _Sigterm.holding += 1
    try:
        yield
    finally:
        _Sigterm.holding -= 1
        if not _Sigterm.holding and _Sigterm.pending:
            _Sigterm.pending = False
            raise KeyboardInterrupt
