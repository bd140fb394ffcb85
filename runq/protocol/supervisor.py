"""``runq worker --processes N`` and ``--reload``: worker processes kept running by one supervisor.

Theory of operation
-------------------
The supervisor is a small trio program that runs no handler itself. It starts ``processes`` children,
each ``python -m runq.cli worker ...`` with the same options (less ``--processes`` and ``--reload``), so
each child is an ordinary worker with its own connection, concurrency and event loop: N processes give
CPU-bound plain-function handlers N cores, which threads in one process (one GIL) cannot.

* A child that exits while the supervisor is not stopping is started again after ``first_backoff``
  seconds; while it keeps dying within ``MIN_UPTIME`` seconds of its start the delay doubles (up to
  ``max_backoff``), so a worker that crashes at start-up does not spin. The delays are the SDK's
  ``calls.Backoff`` (one per child slot), the policy the clients and workers reconnect with: each delay is
  jittered to between half and all of it, so children that die together do not come back in step.
* A child that exits with ``EXIT_CANNOT_START`` (its module does not import, the server refuses its
  token or its hello) would fail the same way again: without ``--reload`` the supervisor stops every
  child and exits with that code; with ``--reload`` it waits for the next code change.
* SIGTERM or SIGINT: every child gets SIGTERM and stops gracefully (it finishes its running tasks within
  its grace and hands the rest back); given the children's ``grace``, the supervisor waits
  ``grace + KILL_MARGIN`` seconds for them, then SIGKILLs what is left (without it, a child stops by itself
  once its own grace is over). A second signal SIGKILLs them at once.
* A child stops gracefully when the supervisor dies, even by SIGKILL (``stop_with_parent``).
* A child that an operator drained (``runq drain``) exits with ``EXIT_DRAINED`` and is not started again
  (restarting it would undo the drain); the supervisor ends when no child is left.
* ``--reload`` (development): watchfiles watches the given folders for changed ``.py`` files; on a change
  every child gets SIGTERM and is started again as soon as it has exited, importing the new code.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence

import trio

from .calls import Backoff

__all__ = ["EXIT_CANNOT_START", "EXIT_DRAINED", "KILL_MARGIN", "MIN_UPTIME", "SUPERVISOR_PID_ENV", "Supervisor", "stop_with_parent"]

log = logging.getLogger("runq.supervisor")

#: The exit code of a worker that cannot start (bad module, refused token or hello): restarting it is useless.
EXIT_CANNOT_START = 3
#: The exit code of a worker that an operator drained (``runq drain``): it is not started again.
EXIT_DRAINED = 4
#: A child that ran at least this many seconds before exiting is restarted after the first delay again.
MIN_UPTIME = 5.0
#: Seconds beyond the children's grace before the supervisor SIGKILLs a child that has not stopped.
KILL_MARGIN = 10.0
#: Set in each child's environment to the supervisor's pid.
SUPERVISOR_PID_ENV = "RUNQ_SUPERVISOR_PID"


def stop_with_parent(stop: Callable[[], None], interval: float = 1.0) -> threading.Thread | None:
    """In a child of a supervisor: call ``stop`` (a graceful stop) once the supervisor is gone.

    A supervisor killed with SIGKILL (or crashing) cannot stop its children; without this they would go on
    working, unsupervised, and a new supervisor would start a second set beside them. A daemon thread
    checks every ``interval`` seconds whether this process's parent is still the supervisor (an orphan is
    re-parented). Not ``PR_SET_PDEATHSIG``: that fires when the parent's *thread* that spawned the child
    exits, and trio spawns from a cached thread that ends after 10 s idle. Does nothing outside a supervisor.

    Returns:
        The thread, or None outside a supervisor.
    """
    pid = os.environ.get(SUPERVISOR_PID_ENV)
    if not pid:
        return None
    parent = int(pid)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("the supervisor (pid %d) is gone: stopping", parent)
        stop()

    thread = threading.Thread(target=watch, name="runq-parent-watch", daemon=True)
    thread.start()
    return thread


class Supervisor:
    """Keep ``processes`` worker processes running until SIGTERM or SIGINT.

    Args:
        worker_args: the arguments of each child after ``python -m runq.cli`` (``["worker", "mod:attr", ...]``).
        processes: how many children run at once.
        reload: restart the children when a ``.py`` file under ``watch`` changes.
        watch: folders watched with ``reload`` (default: the current folder).
        grace: the children's grace period (``--grace``): how long they may take to stop; ``None`` when
            it is the Worker's own (unknown here: the supervisor does not import the user's module).
        env: the children's environment (default: this process's).
        first_backoff: the first restart delay of a child that keeps dying (before jitter).
        max_backoff: the longest restart delay (before jitter).
        rng: randomness for the jitter (a seeded ``random.Random`` in tests).
    """

    def __init__(self, worker_args: Sequence[str], processes: int = 1, *, reload: bool = False,
                 watch: Sequence[str] = (), grace: float | None = None, env: dict[str, str] | None = None,
                 first_backoff: float = 0.5, max_backoff: float = 30.0, rng: random.Random | None = None) -> None:
        if processes < 1:
            raise ValueError(f"processes must be 1 or more, not {processes}")
        self.worker_args = list(worker_args)
        self.processes = processes
        self.reload = reload
        self.watch = [os.path.abspath(w) for w in watch] or [os.getcwd()]
        self._watch_default = not watch
        self.grace = grace
        self.env = env
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        Backoff(first_backoff, max_backoff)  # (checks them now: 0 < first_backoff <= max_backoff)
        self.rng = rng or random.Random()
        self.exit_code = 0
        self._procs: list[trio.Process | None] = [None] * processes
        self._stopping = trio.Event()
        self._generation = 0  # bumped by every reload: a child of an older generation is restarted at once
        self._changed = trio.Event()

    @property
    def pids(self) -> list[int]:
        """The pids of the children running now."""
        return [p.pid for p in self._procs if p is not None and p.returncode is None]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until stopped; return the exit code (0, or ``EXIT_CANNOT_START``)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals)
            if self.reload:
                await nursery.start(self._watch)
            async with trio.open_nursery() as slots:
                for slot in range(self.processes):
                    slots.start_soon(self._slot, slot)
                task_status.started()
            nursery.cancel_scope.cancel()
        return self.exit_code

    def stop(self) -> None:
        """Stop every child gracefully (SIGTERM), and the supervisor once they are gone."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for proc in self._procs:
            if proc is not None and proc.returncode is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:  # (exited since the check)
                    pass

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for sig in sigs:
                if not self._stopping.is_set():
                    log.info("signal %d: stopping %d worker process(es) gracefully", sig, len(self.pids))
                    self.stop()
                else:
                    log.warning("signal %d again: killing the worker processes", sig)
                    self._signal_all(signal.SIGKILL)

    async def _slot(self, slot: int) -> None:
        backoff = Backoff(self.first_backoff, self.max_backoff, self.rng)
        while not self._stopping.is_set():
            generation = self._generation
            env = dict(os.environ if self.env is None else self.env)
            env[SUPERVISOR_PID_ENV] = str(os.getpid())  # (the child stops if this process dies: stop_with_parent)
            proc = await trio.lowlevel.open_process([sys.executable, "-m", "runq.cli", *self.worker_args], env=env)
            self._procs[slot] = proc
            started = trio.current_time()
            log.info("worker process %d started (pid %d)", slot, proc.pid)
            try:
                with trio.CancelScope(shield=True):  # (a child is reaped, never left behind)
                    await self._wait(proc)
            finally:
                self._procs[slot] = None
            code = proc.returncode
            if self._stopping.is_set():
                log.info("worker process %d (pid %d) stopped (exit %s)", slot, proc.pid, code)
                return
            if generation != self._generation:
                backoff.reset()  # stopped by a reload: new code, start again at once
                continue
            if code == EXIT_DRAINED:  # an operator asked that worker to leave: starting another would undo it
                log.warning("worker process %d (pid %d) was drained (runq drain): not started again", slot, proc.pid)
                return
            if code == EXIT_CANNOT_START:
                if not self.reload:
                    log.error("worker process %d (pid %d) cannot start (exit %d): stopping", slot, proc.pid, code)
                    self.exit_code = EXIT_CANNOT_START
                    self.stop()
                    return
                log.error("worker process %d (pid %d) cannot start (exit %d): waiting for a code change",
                          slot, proc.pid, code)
                await self._until(None)
                backoff.reset()
                continue
            if trio.current_time() - started >= MIN_UPTIME:
                backoff.reset()  # it ran a while: a new failure, not the same one again
            delay = backoff.next()
            log.warning("worker process %d (pid %d) exited (exit %s); starting another in %.2fs", slot, proc.pid,
                        code, delay)
            await self._until(delay)

    async def _wait(self, proc: trio.Process) -> None:
        """Wait for ``proc`` to exit; once stopping, SIGKILL it after the grace period and the margin."""
        async with trio.open_nursery() as nursery:
            async def kill_late() -> None:
                await self._stopping.wait()
                if self.grace is None:
                    return
                await trio.sleep(self.grace + KILL_MARGIN)
                log.warning("worker process %d still running %gs after SIGTERM: SIGKILL", proc.pid,
                            self.grace + KILL_MARGIN)
                proc.kill()

            nursery.start_soon(kill_late)
            await proc.wait()
            nursery.cancel_scope.cancel()

    async def _until(self, delay: float | None) -> None:
        """Sleep ``delay`` seconds (for ever if None), or less: until a stop or a code change."""
        with trio.move_on_after(delay if delay is not None else float("inf")):
            async with trio.open_nursery() as nursery:
                async def on(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on, self._stopping)
                nursery.start_soon(on, self._changed)

    async def _watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from watchfiles import PythonFilter, awatch

        python = PythonFilter()
        log.info("watching %s%s for changes to %s files (not under %s)", ", ".join(self.watch),
                 " (the current folder; --reload-dir to choose)" if self._watch_default else "",
                 ", ".join("*" + ext for ext in python.extensions), ", ".join(python.ignore_dirs))
        # (yield_on_timeout: awatch sets up its watcher before the first yield; started() after that
        # means a change made once run() has started is seen)
        changes_seen = awatch(*self.watch, watch_filter=python, rust_timeout=100, yield_on_timeout=True)
        first = True
        async for changes in changes_seen:
            if first:
                task_status.started()
                first = False
            if not changes:
                continue
            paths = sorted({os.path.relpath(path) for _, path in changes})
            log.info("changed: %s; restarting the worker process(es)", ", ".join(paths[:5])
                     + (f" and {len(paths) - 5} more" if len(paths) > 5 else ""))
            self._generation += 1
            changed, self._changed = self._changed, trio.Event()
            changed.set()
            self._signal_all(signal.SIGTERM)
