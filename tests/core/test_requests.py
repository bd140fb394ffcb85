"""Enqueue answers by idempotency token (runq.app.core.requests): pure, with a fake ``now``."""

from __future__ import annotations

import zlib

import msgpack
import pytest

from runq.app.core import Requests
from runq.app.core.requests import DIGEST_SIZE, decode_answer, digest, encode_answer
from runq.protocol.messages import TaskSpec


@pytest.mark.parametrize(("res", "text"), [
    ([(12, True)], "12+1"),
    ([(12, True), (13, True), (14, True)], "12+3"),
    ([(12, True), (14, True)], "12,14"),
    ([(5, False), (12, True)], "!5,12"),
    ([], ""),
])
def test_an_answer_is_stored_as_short_text_and_read_back(res: list[tuple[int, bool]], text: str) -> None:
    assert encode_answer(res) == text
    assert decode_answer(text) == res


def test_a_token_is_known_once_added_and_its_row_goes_with_the_next_commit() -> None:
    r = Requests(window=60)
    e = r.add("c1", 0, [(7, True)], now=100.0)
    assert r.get("c1", 0) is e and r.get("c1", 1) is None and r.get("c2", 0) is None
    assert r.take_rows() == [(1, "c1", 0, 100.0, "7+1", 1, None)]
    assert r.take_rows() == []  # (taken once)
    told: list[object] = []
    e.waiters.append(lambda res, err: told.append((res, err)))
    waiting = r.committed(e, None)
    assert e.committed and len(waiting) == 1 and not e.waiters


def test_a_failed_commit_forgets_the_token_and_restores_the_rows_of_those_still_waiting() -> None:
    r = Requests(window=60)
    refused = r.add("c1", 0, [(1, True)], now=0.0)
    kept = r.add("c1", 1, [(2, True)], now=0.0)
    rows = r.take_rows()
    r.committed(refused, RuntimeError("disk full"))
    assert r.get("c1", 0) is None  # a resend of it is a new request
    assert rows == [(1, "c1", 0, 0.0, "1+1", 2, None)]  # (one row for both: seqs 0 and 1, ids 1 and 2)
    r.restore(rows)  # kept's request was not refused: its row goes with the next commit
    assert r.take_rows() == [(kept.number, "c1", 1, 0.0, "2+1", 1, None)]


def test_done_below_forgets_the_clients_answered_tokens_only() -> None:
    r = Requests(window=60)
    for seq in range(4):
        r.committed(r.add("c1", seq, [(seq + 1, True)], now=0.0), None)
    other = r.add("c2", 0, [(9, True)], now=0.0)
    r.committed(other, None)
    r.forget_below("c1", 2)
    assert [r.get("c1", s) is not None for s in range(4)] == [False, False, True, True]
    assert r.get("c2", 0) is other
    r.forget_below("c1", 4)
    assert "c1" not in r.clients and len(r) == 1


def test_tokens_expire_after_the_window_but_never_before_their_commit() -> None:
    r = Requests(window=60)
    old = r.add("c1", 0, [(1, True)], now=0.0)
    pending = r.add("c1", 1, [(2, True)], now=1.0)
    young = r.add("c2", 0, [(3, True)], now=50.0)
    r.committed(old, None)
    r.expire(59.9)
    assert r.get("c1", 0) is old  # (the window is not over)
    r.expire(100.0)
    assert r.get("c1", 0) is None
    assert r.get("c1", 1) is pending  # not committed yet: kept (and it holds back those behind it)
    r.committed(pending, None)
    r.committed(young, None)
    r.expire(100.0)
    assert r.get("c1", 1) is None and r.get("c2", 0) is young


def test_rows_below_the_oldest_token_held_are_deleted_in_ranges() -> None:
    r = Requests(window=60)
    r.DELETE_EVERY = 3
    entries = [r.add("c", s, [(s + 1, True)], now=0.0) for s in range(5)]
    for e in entries:
        r.committed(e, None)
    assert r.take_delete() is None  # nothing forgotten yet
    r.forget_below("c", 2)
    assert r.take_delete() is None  # rows 1, 2 may go, but that is fewer than DELETE_EVERY
    assert r.take_delete(force=True) == 3  # (the pruner forces it)
    r.forget_below("c", 5)
    assert r.take_delete() == 6  # every row: the next one made will be 6
    assert r.take_delete(force=True) is None


def test_recover_knows_again_the_stored_tokens_younger_than_the_window() -> None:
    r = Requests(window=60)
    n = r.recover([(1, "c1", 0, 10.0, "4+1", 1, None), (2, "c1", 1, 80.0, "!4,5", 1, None),
                   (3, "c2", 7, 90.0, "6+2", 1, None)],
                  next_row=4, now=100.0)
    assert n == 2
    assert r.get("c1", 0) is None
    e = r.get("c1", 1)
    assert e is not None and e.committed and e.res == [(4, False), (5, True)]
    assert r.get("c2", 7) is not None and r.get("c2", 7).res == [(6, True), (7, True)]  # type: ignore[union-attr]
    assert r.add("c3", 0, [], now=100.0).number == 4
    assert r.take_delete(force=True) == 2  # the expired row 1 goes


def test_a_run_of_consecutive_answers_of_one_client_is_one_row() -> None:
    r = Requests(window=60)
    for seq in range(3):  # seqs 5, 6, 7 answered with 10, 11, 12
        r.add("c1", 5 + seq, [(10 + seq, True)], now=1.0)
    r.add("c2", 0, [(13, True)], now=1.0)  # another client
    r.add("c1", 8, [(14, True), (15, True)], now=1.0)  # two tasks: another width
    r.add("c1", 9, [(16, True), (17, True)], now=1.0)
    r.add("c1", 10, [(3, False)], now=1.0)  # a unique-key hit: a row of its own
    r.add("c1", 11, [(18, True)], now=1.0)
    assert r.take_rows() == [(1, "c1", 5, 1.0, "10+1", 3, None), (4, "c2", 0, 1.0, "13+1", 1, None),
                             (5, "c1", 8, 1.0, "14+2", 2, None), (7, "c1", 10, 1.0, "!3", 1, None),
                             (8, "c1", 11, 1.0, "18+1", 1, None)]


def test_a_run_row_is_known_again_as_one_entry_per_seq_and_kept_while_any_of_them_is_held() -> None:
    r = Requests(window=60)
    r.DELETE_EVERY = 1
    n = r.recover([(1, "c1", 5, 90.0, "10+1", 3, None), (4, "c1", 8, 90.0, "14+2", 2, None)], next_row=6, now=100.0)
    assert n == 5
    assert [r.get("c1", s).res for s in range(5, 10)] == [  # type: ignore[union-attr]
        [(10, True)], [(11, True)], [(12, True)], [(14, True), (15, True)], [(16, True), (17, True)]]
    r.forget_below("c1", 7)  # seqs 5 and 6 answered; 7 still held: its row (id 1) stays
    assert r.take_delete() is None
    r.forget_below("c1", 8)
    assert r.take_delete() == 4  # row 1 (seqs 5-7) goes; row 4 (seqs 8, 9) stays
    assert r.add("c2", 0, [], now=100.0).number == 6


def test_an_answer_rewritten_after_its_row_was_made_gets_a_row_of_its_own_that_wins_at_start() -> None:
    r = Requests(window=60)
    a = r.add("c1", 0, [(1, True)], now=1.0)
    r.add("c1", 1, [(2, True)], now=1.0)
    rows = r.take_rows()
    assert rows == [(1, "c1", 0, 1.0, "1+1", 2, None)]
    a.res[0] = (9, True)  # (Server._enqueue_hits_again changes it in place)
    r.rewrite(a)
    again = r.take_rows()
    assert again == [(3, "c1", 0, 1.0, "9+1", 1, None)]
    back = Requests(window=60)
    back.recover(rows + again, next_row=4, now=2.0)
    assert back.get("c1", 0).res == [(9, True)] and back.get("c1", 1).res == [(2, True)]  # type: ignore[union-attr]
    assert len(back) == 2


def test_the_digest_of_a_request_is_the_crc32_of_its_specs_and_tells_other_tasks_apart() -> None:
    specs = [TaskSpec("t", b"\x01"), TaskSpec("t", b"\x02", queue="q")]
    packed = msgpack.packb([["t", b"\x01", *[None] * 12], ["t", b"\x02", "q", *[None] * 11]])
    assert digest(specs) == zlib.crc32(packed).to_bytes(4, "big") and DIGEST_SIZE == 4
    assert digest(list(specs)) == digest(specs)  # (a resend: the same tasks, the same digest)
    assert len({digest(specs), digest(specs[:1]), digest(specs[::-1]), digest([TaskSpec("t", b"\x01", key="k")]),
                digest([TaskSpec("t", b"\x01", requires={"region": "eu"})])}) == 5


def test_the_digests_of_a_run_go_in_its_row_one_after_the_other_and_come_back_per_entry() -> None:
    r = Requests(window=60)
    r.add("c1", 0, [(1, True)], now=1.0, digest=b"AAAA")
    r.add("c1", 1, [(2, True)], now=1.0, digest=b"BBBB")
    r.add("c2", 0, [(3, True)], now=1.0, digest=b"CCCC")
    r.add("c3", 0, [(4, True)], now=1.0, digest=b"DDDD")
    r.add("c3", 1, [(5, True)], now=1.0)  # (its digest not known: the row's are not either)
    rows = r.take_rows()
    assert rows == [(1, "c1", 0, 1.0, "1+1", 2, b"AAAABBBB"), (3, "c2", 0, 1.0, "3+1", 1, b"CCCC"),
                    (4, "c3", 0, 1.0, "4+1", 2, None)]
    back = Requests(window=60)
    assert back.recover(rows, next_row=6, now=2.0) == 5
    assert [back.get(c, s).digest for c, s in [("c1", 0), ("c1", 1), ("c2", 0), ("c3", 0), ("c3", 1)]] == [  # type: ignore[union-attr]
        b"AAAA", b"BBBB", b"CCCC", b"", b""]


def test_a_row_whose_digests_do_not_match_its_seqs_gives_entries_with_none() -> None:
    r = Requests(window=60)
    r.recover([(1, "c1", 0, 1.0, "1+1", 2, b"AAAA"), (3, "c2", 0, 1.0, "3+1", 1, None)], next_row=4, now=2.0)
    assert [r.get(c, s).digest for c, s in [("c1", 0), ("c1", 1), ("c2", 0)]] == [b"", b"", b""]  # type: ignore[union-attr]


def test_a_rewritten_answer_keeps_its_digest_in_its_own_row() -> None:
    r = Requests(window=60)
    a = r.add("c1", 0, [(1, True)], now=1.0, digest=b"AAAA")
    r.add("c1", 1, [(2, True)], now=1.0, digest=b"BBBB")
    r.take_rows()
    a.res[0] = (9, True)
    r.rewrite(a)
    assert r.take_rows() == [(3, "c1", 0, 1.0, "9+1", 1, b"AAAA")]
