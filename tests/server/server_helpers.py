"""Virtual time for the server tests: trio's MockClock, moved on only when nothing is at work.

A test that asks for the ``virtual_clock`` fixture (conftest.py) runs on it (pytest-trio passes any ``Clock`` fixture to ``trio.run``)
and calls ``virtual_clock.follow(nursery, server)`` once the server has started. From then on, whenever
every task is blocked, no thread works for a followed server and no thread of trio's default limiter
runs, the clock jumps to the next deadline: a lease of 10 s expires at once, and exactly at its deadline.

Why not ``autojump_clock`` (a jump whenever every task is blocked)? The server works in threads: the
SQLite writer commits, reads run in ``trio.to_thread``. While a thread works every task is blocked, and a
plain autojump moves the clock to the next deadline then: a ``c.events(tid)`` (a read in a thread) jumped
over the lease it was meant to see running, or straight to the test's ``fail_after``. A real-time
threshold (``autojump_threshold=0.01``) makes each jump wait that long (a worker's loop watcher ticks
every 0.1 s: 100 jumps per virtual second) and still jumps when a thread is descheduled for longer.

Sockets need no guard: on loopback, bytes sent are readable on the other side when ``send`` returns. A
short real-time cushion before each jump covers a kernel that is slower than that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.abc
import trio.testing

from runq.app.server import Server


class VirtualClock(trio.abc.Clock):
    """A ``MockClock`` (rate 0; it cannot be subclassed, so it is held) that jumps to the next deadline once
    the test and its servers are idle.

    Args:
        cushion: real seconds every task must have been blocked before a jump.
        stuck_after: real seconds a server may stay busy without any task running; beyond that the test
            fails (a thread that never reports would otherwise hold the clock, and the test's
            ``fail_after``, for ever).
    """

    def __init__(self, cushion: float = 0.002, stuck_after: float = 10.0) -> None:
        self.mock = trio.testing.MockClock()
        self.cushion = cushion
        self.stuck_after = stuck_after
        self.servers: list[Server] = []
        self.jumps = 0
        self._jumper_started = False

    def start_clock(self) -> None:
        self.mock.start_clock()

    def current_time(self) -> float:
        return self.mock.current_time()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return self.mock.deadline_to_sleep_time(deadline)

    def follow(self, nursery: trio.Nursery, server: Server) -> None:
        """Jump when idle from now on, never while ``server`` has a thread at work."""
        self.servers.append(server)
        if not self._jumper_started:
            self._jumper_started = True
            nursery.start_soon(self._jump_when_idle)

    def busy(self) -> bool:
        """Whether a thread works for a followed server (a commit or a read) or for trio's default limiter."""
        if trio.to_thread.current_default_thread_limiter().borrowed_tokens:
            return True
        return any(s._committed_count < s._submitted or s._reader_lock.borrowed_tokens for s in self.servers)

    async def _jump_when_idle(self) -> None:
        busy_since: float | None = None
        while True:
            await trio.testing.wait_all_tasks_blocked(self.cushion)
            if self.busy():
                busy_since = busy_since if busy_since is not None else time.perf_counter()
                if time.perf_counter() - busy_since > self.stuck_after:
                    raise RuntimeError(f"a server stayed busy for {self.stuck_after}s (real) with every task "
                                       f"blocked: {self.servers}")
                continue
            busy_since = None
            step = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if 0 < step < math.inf:
                self.mock.jump(step)
                self.jumps += 1


async def until(server: Server, predicate: Callable[[], Any], poll: float = 1.0) -> None:
    """Return once ``predicate()`` is true: checked after each of ``server``'s commits (every change of a
    task commits) and changes of its workers and queues, and every ``poll`` seconds for anything else. Bound
    it with the test's ``fail_after``."""
    changed = trio.Event()

    def seen(*_: Any) -> None:
        changed.set()

    server.commit_listeners.append(seen)
    server.change_listeners.append(seen)
    try:
        while not predicate():
            with trio.move_on_after(poll):
                await changed.wait()
            changed = trio.Event()  # (before the predicate is read again: no change is missed)
    finally:
        server.commit_listeners.remove(seen)
        server.change_listeners.remove(seen)


def writer_has_taken_all(server: Server) -> bool:
    """Whether the store's writer thread holds every batch handed over and not yet reported (none waits
    for the committer or in the writer's queue): with the database locked, it waits for the lock with them."""
    store = server.store
    assert store is not None
    return server._submitted > server._committed_count and not server._pending and store._q.empty()
