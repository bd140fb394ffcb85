"""The writer lease's timing rules: when the active server renews, when it gives up, when a standby may take over.

Theory of operation
-------------------
On PostgreSQL one server at a time writes the database: the one whose lease in the ``runq_writer`` row has
not expired (docs/operations.md, "Failover"). The row holds ``term``, ``holder`` and ``expires_at``, a time
on the DATABASE's clock: the holder sets it to ``clock_timestamp() + lease`` at every renewal, and a standby
compares it with ``clock_timestamp()`` too, so the two servers' clocks never meet. Durations do cross from one
clock to the other (the lease's length, a wait): every clock involved runs at the same rate within far less
than the margin below, an assumption every lease makes.

The holder's side (``WriterLease``) runs on its own MONOTONIC clock:

- it renews every ``lease / 3`` (``renew_every``), again after ``retry_every`` when a renewal failed;
- a renewal that succeeded and STARTED at local time ``s`` gives it the right to write until
  ``s + lease - margin`` (``valid_until``): the database set ``expires_at`` no earlier than ``s`` (the
  statement ran after it was sent), so the holder's right ends ``margin`` before any standby's can begin,
  whatever the network did to the answer;
- past ``valid_until`` with no renewal, the lease is LOST for good (``check``): the server stops accepting
  writes and steps down, even if a later renewal would have succeeded (its core may be out of step with a
  successor that took over meanwhile). A renewal that finds the term moved (``fenced``) loses it too.

The standby's side (``may_take``, ``standby_wait``): a row with no holder (a clean stop) or an expires_at at
or before the database's now may be taken, with ``term + 1``; a row of a runq before the lease (no
expires_at) while the connection it names is alive may not. A standby sleeps until the expiry it read plus
``TAKE_SLACK``, at most ``renew_every`` (a renewal it did not see moves the expiry on; it reads again).

Rules of this file:

1. Pure: no I/O and no clock read; every time is an argument (tests/store/test_lease.py drives it with a
   fake clock).
2. ``valid`` never answers True after ``check`` said lost, and no renewal makes a lost lease valid again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULT_LEASE", "MAX_LEASE", "MIN_LEASE", "TAKE_SLACK", "LeaseTiming", "WriterLease", "may_take",
           "standby_wait"]

#: the lease's default length, seconds (``runq serve --lease``, ``RUNQ_LEASE``)
DEFAULT_LEASE = 5.0
#: the bounds of a lease: below 1 s a renewal's round trip and a loaded machine's pauses eat the margin; above
#: an hour a dead server holds the database for longer than anyone waits
MIN_LEASE, MAX_LEASE = 1.0, 3600.0
#: what a standby waits past the expiry it read before it tries to take the lease
TAKE_SLACK = 0.05


@dataclass(frozen=True)
class LeaseTiming:
    """The timing of a lease of ``lease`` seconds.

    Raises:
        ValueError: ``lease`` outside ``MIN_LEASE`` .. ``MAX_LEASE`` (or not a number).
    """

    lease: float = DEFAULT_LEASE

    def __post_init__(self) -> None:
        if not (isinstance(self.lease, (int, float)) and MIN_LEASE <= self.lease <= MAX_LEASE):
            raise ValueError(f"the lease must be between {MIN_LEASE:g} and {MAX_LEASE:g} seconds, not {self.lease!r}")

    @property
    def renew_every(self) -> float:
        """Seconds between two renewals that succeed."""
        return self.lease / 3

    @property
    def retry_every(self) -> float:
        """Seconds before another try after a renewal failed."""
        return min(0.25, self.lease / 10)

    @property
    def margin(self) -> float:
        """How long before the database's expiry the holder stops writing: a tenth of the lease, at least
        0.25 s, at most a quarter of it."""
        return min(max(self.lease / 10, 0.25), self.lease / 4)


class WriterLease:
    """The holder's view of its lease, on its monotonic clock (module docstring).

    Attributes:
        timing: the lease's timing.
        valid_until: the local time until which the holder may write (-inf: not held).
        next_renewal: the local time of the next renewal.
        lost: why the lease was lost for good, or None.
    """

    def __init__(self, timing: LeaseTiming) -> None:
        self.timing = timing
        self.valid_until = -math.inf
        self.next_renewal = math.inf
        self.lost: str | None = None

    def renewed(self, started: float) -> None:
        """A take or a renewal that started at local time ``started`` succeeded (ignored once lost)."""
        if self.lost is not None:
            return
        t = self.timing
        self.valid_until = max(self.valid_until, started + t.lease - t.margin)
        self.next_renewal = started + t.renew_every

    def renew_failed(self, now: float) -> None:
        """A renewal failed at ``now`` (the database did not answer): try again soon."""
        self.next_renewal = now + self.timing.retry_every

    def fenced(self, why: str) -> None:
        """The term moved on: another server holds the lease now."""
        if self.lost is None:
            self.lost = why

    def check(self, now: float) -> bool:
        """Whether the holder may write at ``now``; past ``valid_until`` the lease is lost for good."""
        if self.lost is None and now >= self.valid_until:
            t = self.timing
            self.lost = (f"no renewal of the lease succeeded for {t.lease - t.margin:g}s (lease {t.lease:g}s "
                         f"less a margin of {t.margin:g}s): PostgreSQL did not answer in time")
        return self.lost is None

    def renewal_wait(self, now: float) -> float:
        """Seconds from ``now`` until the next renewal."""
        return max(0.0, self.next_renewal - now)


def may_take(holder: str | None, expires_in: float | None, legacy_alive: bool) -> bool:
    """Whether a standby may take the lease now.

    Args:
        holder: the row's holder (None: nobody, the last one stopped cleanly).
        expires_in: ``expires_at - clock_timestamp()`` in seconds, read in one statement on the database (None:
            the row has no expiry: written by a runq that knew no lease).
        legacy_alive: for a row with no expiry, whether the connection it names is alive.
    """
    if holder is None:
        return True
    if expires_in is None:
        return not legacy_alive
    return expires_in <= 0


def standby_wait(expires_in: float | None, timing: LeaseTiming) -> float:
    """Seconds a standby sleeps before it tries to take the lease again, ``expires_in`` being what it read
    (None: no expiry to wait for, a row of a runq before the lease)."""
    if expires_in is None:
        return timing.renew_every
    return min(max(expires_in, 0.0) + TAKE_SLACK, timing.renew_every)
