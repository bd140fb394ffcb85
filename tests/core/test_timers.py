"""The core's one timer heap (``runq.app.core.timers``), with made-up kinds and plain float times.

A kind here is a dict of the deadlines it means at the moment (key -> when), as a rule of the core would
keep them: the check reads it, so the test can move or drop a deadline behind the heap's back, as the core's
state does, and watch the heap skip or re-arm the entry.
"""

from __future__ import annotations

from typing import Any

import pytest

from runq.app.core.timers import TimerHeap


class Kind:
    """A made-up timer kind: ``deadlines`` is its truth, ``fired`` what it did."""

    def __init__(self, heap: TimerHeap, number: int, fired: list[tuple[Any, ...]]) -> None:
        self.number = number
        self.deadlines: dict[str, float] = {}
        self.fired = fired
        self.then: list[tuple[float, str]] = []  # (delay, key): arm these when one of ours fires
        heap.register(number, self.check, self.fire)
        self.heap = heap

    def set(self, key: str, when: float) -> None:
        self.deadlines[key] = when
        self.heap.arm((when, self.number, key))

    def check(self, entry: tuple[Any, ...]) -> float | None:
        return self.deadlines.get(entry[2])

    def fire(self, entry: tuple[Any, ...], now: float) -> None:
        del self.deadlines[entry[2]]
        self.fired.append((now, self.number, entry[2]))
        for delay, key in self.then:
            self.set(key, now + delay)
        self.then = []


def make() -> tuple[TimerHeap, Kind, Kind, list[tuple[Any, ...]]]:
    heap = TimerHeap()
    fired: list[tuple[Any, ...]] = []
    return heap, Kind(heap, 0, fired), Kind(heap, 1, fired), fired


def test_entries_fire_in_time_order_then_kind_order() -> None:
    heap, a, b, fired = make()
    b.set("x", 5.0)
    a.set("y", 5.0)
    a.set("z", 7.0)
    b.set("w", 3.0)
    heap.run(4.999)
    assert fired == [(4.999, 1, "w")]
    heap.run(10.0)
    # at 5.0 kind 0 comes before kind 1, whatever the order they were armed in
    assert fired[1:] == [(10.0, 0, "y"), (10.0, 1, "x"), (10.0, 0, "z")]
    assert heap.next_deadline() is None and len(heap) == 0


def test_a_stale_entry_is_dropped_without_firing() -> None:
    heap, a, _, fired = make()
    a.set("x", 5.0)
    del a.deadlines["x"]  # the deadline stopped mattering (the task finished, say): the entry stays
    assert len(heap) == 1
    heap.run(6.0)
    assert fired == [] and len(heap) == 0


def test_a_moved_deadline_is_re_armed_in_place_not_fired_early() -> None:
    heap, a, _, fired = make()
    a.set("x", 5.0)
    a.deadlines["x"] = 9.0  # heard from since (a worker's silence): the same entry now means 9.0
    heap.run(6.0)
    assert fired == [] and heap.heap == [(9.0, 0, "x")]
    heap.run(9.0)
    assert fired == [(9.0, 0, "x")]


def test_next_deadline_settles_the_top_first() -> None:
    heap, a, b, _ = make()
    a.set("gone", 1.0)
    a.set("moved", 2.0)
    b.set("stands", 4.0)
    del a.deadlines["gone"]
    a.deadlines["moved"] = 6.0
    assert heap.next_deadline() == 4.0
    assert sorted(heap.heap) == [(4.0, 1, "stands"), (6.0, 0, "moved")]


def test_a_fire_may_arm_entries_due_at_once_and_run_takes_them() -> None:
    heap, a, _, fired = make()
    a.set("x", 5.0)
    a.then = [(0.0, "again"), (3.0, "later")]
    heap.run(5.0)
    assert fired == [(5.0, 0, "x"), (5.0, 0, "again")]
    assert heap.next_deadline() == 8.0


def test_arm_many_is_one_heap() -> None:
    heap, a, _, fired = make()
    a.deadlines.update({"c": 3.0, "a": 1.0, "b": 2.0})
    heap.arm_many([(3.0, 0, "c"), (1.0, 0, "a"), (2.0, 0, "b")])
    heap.run(3.0)
    assert [f[2] for f in fired] == ["a", "b", "c"]


def test_a_kind_is_registered_once() -> None:
    heap, a, _, _ = make()
    with pytest.raises(ValueError, match="registered already"):
        heap.register(0, a.check, a.fire)
