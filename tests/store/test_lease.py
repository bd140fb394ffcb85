"""The writer lease's timing rules (runq/app/store/lease.py), driven by a fake clock: plain numbers."""

from __future__ import annotations

import math

import pytest

from runq.app.store.lease import TAKE_SLACK, LeaseTiming, WriterLease, may_take, standby_wait


def test_the_timing_of_a_five_second_lease() -> None:
    t = LeaseTiming()  # (the default: 5 s)
    assert (t.lease, t.renew_every, t.retry_every, t.margin) == (5.0, 5.0 / 3, 0.25, 0.5)
    short = LeaseTiming(1.0)
    assert (short.renew_every, short.retry_every, short.margin) == (1.0 / 3, 0.1, 0.25)
    assert LeaseTiming(60.0).margin == 6.0


@pytest.mark.parametrize("bad", [0.5, 0, -1, 3601, math.nan, math.inf, "5"])
def test_a_lease_out_of_bounds_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="lease must be between 1 and 3600 seconds"):
        LeaseTiming(bad)  # type: ignore[arg-type]


def test_the_holder_writes_until_its_last_renewal_start_plus_the_lease_less_the_margin() -> None:
    lease = WriterLease(LeaseTiming(5.0))
    assert not lease.check(0.0) and lease.lost is not None  # never taken: not held (and lost: no renewal)

    lease = WriterLease(LeaseTiming(5.0))
    lease.renewed(100.0)  # the take started at 100 (its answer may come much later)
    assert lease.next_renewal == 100.0 + 5.0 / 3 and lease.renewal_wait(100.5) == pytest.approx(5.0 / 3 - 0.5)
    assert lease.check(104.49) and lease.lost is None
    lease.renewed(101.7)  # a renewal that started at 101.7 moves the deadline to 101.7 + 4.5
    assert lease.check(106.19)
    assert not lease.check(106.2)  # the database's expiry is 106.7 at the earliest: 0.5 s before it, it stops
    assert lease.lost is not None and "no renewal of the lease succeeded for 4.5s" in lease.lost


def test_failed_renewals_are_tried_again_soon_and_a_lost_lease_stays_lost() -> None:
    lease = WriterLease(LeaseTiming(5.0))
    lease.renewed(0.0)
    lease.renew_failed(1.7)
    assert lease.next_renewal == pytest.approx(1.95)
    assert not lease.check(4.5)
    lease.renewed(4.6)  # a renewal that got through after the deadline does not make it valid again
    assert not lease.check(4.7) and lease.valid_until == 4.5


def test_a_moved_term_loses_the_lease_at_once_and_keeps_its_reason() -> None:
    lease = WriterLease(LeaseTiming(5.0))
    lease.renewed(0.0)
    lease.fenced("term moved")
    assert not lease.check(0.1) and lease.lost == "term moved"
    lease.fenced("again")
    assert lease.lost == "term moved"


def test_a_standby_may_take_a_free_or_expired_lease_only() -> None:
    assert may_take(None, None, legacy_alive=True)  # the last holder stopped cleanly
    assert may_take(None, 3.0, legacy_alive=False)
    assert not may_take("a", 0.001, legacy_alive=False)
    assert may_take("a", 0.0, legacy_alive=False) and may_take("a", -2.0, legacy_alive=True)
    assert not may_take("a", None, legacy_alive=True)  # a writer of a runq before the lease, connected
    assert may_take("a", None, legacy_alive=False)


def test_a_standby_sleeps_until_the_expiry_it_read_at_most_a_third_of_the_lease() -> None:
    t = LeaseTiming(6.0)
    assert standby_wait(0.5, t) == pytest.approx(0.5 + TAKE_SLACK)
    assert standby_wait(-3.0, t) == TAKE_SLACK
    assert standby_wait(5.9, t) == 2.0 and standby_wait(None, t) == 2.0
