"""writer.py's ``GroupWriter`` on its own (both stores run it; their suites test it through them): how
``_stop_writer`` treats a writer thread that does not end."""

from __future__ import annotations

import threading

from runq.app.store.base import Batch, Notify
from runq.app.store.writer import GroupWriter


class _Blocking(GroupWriter):
    """A writer whose commit blocks until released (a connection PostgreSQL does not answer)."""

    def __init__(self) -> None:
        self._init_writer(None)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.committed: list[int] = []

    def commit(self, batches: list[Batch], notify: Notify | None = None) -> BaseException | None:
        self.entered.set()
        self.release.wait(60)
        self.committed.append(len(batches))
        return None


def test_stop_writer_without_a_timeout_commits_what_is_queued_and_joins() -> None:
    w = _Blocking()
    w.release.set()
    w.start()
    w.submit(Batch())
    assert w._stop_writer() is True
    assert w.committed == [1] and w._thread is None


def test_stop_writer_with_a_timeout_leaves_a_stuck_thread_and_says_so() -> None:
    w = _Blocking()
    w.start()
    w.submit(Batch())
    assert w.entered.wait(30)
    thread = w._thread
    assert thread is not None
    assert w._stop_writer(0.05) is False  # still in its commit: not waited for, reported as not stopped
    assert w._thread is None and thread.is_alive()
    w.release.set()
    thread.join(30)
    assert not thread.is_alive() and w.committed == [1]
