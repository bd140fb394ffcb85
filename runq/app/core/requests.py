"""Enqueue answers by idempotency token: an enqueue sent again is answered, not enqueued twice.

Theory of operation
-------------------
A client stamps every ``enqueue`` with a token, the pair (``client_id``, ``seq``), the same on every
resend (docs/protocol.md section 5.2). ``Requests`` remembers the answer given to each token, the list of
``(task id, created)``, so that a resend is answered with the first ids:

- while the first request's commit is pending, the resend waits for it (``Entry.waiters``);
- once committed, it is answered at once;
- if that commit failed, the entry is gone (the first request was refused) and the resend is a new
  request.

Each entry is also stored in the store's ``requests`` table, written in the same commit as the tasks it
names (``take_rows``), so that a token survives a server crash between the commit and the
acknowledgement; ``recover`` reads the rows back at start. One row holds a run of entries: consecutive
seqs of one client whose answers are consecutive created ids of the same count each (the usual case: a
client's single enqueues pipelined on one connection), so a commit writes a row per client, not per
request. A row is ``(id, client_id, seq, at, answer, seqs, digests)``: the ``seqs`` requests from ``seq``
on, the j-th answered like ``answer`` with every id moved up by j times its length, and ``digests`` the
``DIGEST_SIZE`` bytes of each one's ``digest`` in turn (None in rows of a runq that wrote none).

Each entry keeps the ``digest`` of its request's tasks: a resend carries the same tasks, so a request under a
known token whose tasks differ is not a resend but another request that reused the token (two processes
forked from one client object, a client's bug), and it is refused (``bad_request``) rather than answered with
the ids of tasks it never asked for.

Rules of this file:

1. Entries live at most ``window`` seconds after their request arrived (``expire(now)``), and less when the
   client says it has the answers: ``done_below`` in a request forgets that client's entries numbered
   below it (``forget_below``). So memory and rows hold what is in flight plus the last ``window`` of
   clients that went away, not the last ``window`` of traffic.
2. Entries are numbered in the order they are made; a row takes the number of its first entry (the
   numbers of the others in it are never used for a row). The store deletes the rows below the row of
   the oldest entry still held (``take_delete``), a range: cheap, and only every ``DELETE_EVERY``
   entries. An answer changed before its commit (``rewrite``) gets a row of its own under a new number;
   at start a later row wins over an earlier one for the same token.
3. Pure: no clock reads (``now`` is passed in), no I/O.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable

import msgpack

from ...protocol.messages import TaskSpec
from .records import REQUEST_COLUMNS, RequestRecord

__all__ = ["DIGEST_SIZE", "REQUEST_COLUMNS", "Entry", "Requests", "decode_answer", "digest", "encode_answer"]

#: bytes of a request's ``digest``
DIGEST_SIZE = 4

_pack = msgpack.Packer(use_bin_type=True).pack


def digest(specs: list[TaskSpec]) -> bytes:
    """What tells the tasks of two requests apart: the CRC-32 of their specs, packed (the same in every process,
    unlike ``hash``: it is stored with the token). Two requests that differ have the same one about once in
    four billion: enough to catch a token used twice, at well under a microsecond for a request of one task."""
    return zlib.crc32(_pack(specs)).to_bytes(DIGEST_SIZE, "big")

Answer = list[tuple[int, bool]]
Tell = Callable[[Answer, BaseException | None], None]


def encode_answer(res: Answer) -> str:
    """``"12+3"`` for three created tasks 12, 13, 14; else ids comma-separated, ``!`` before one not created."""
    if res and all(created for _, created in res):
        first = res[0][0]
        if all(tid == first + i for i, (tid, _) in enumerate(res)):
            return f"{first}+{len(res)}"
    return ",".join(str(tid) if created else f"!{tid}" for tid, created in res)


def decode_answer(text: str) -> Answer:
    """The inverse of ``encode_answer``."""
    if "+" in text:
        first, n = text.split("+")
        return [(int(first) + i, True) for i in range(int(n))]
    if not text:
        return []
    return [(int(p[1:]), False) if p.startswith("!") else (int(p), True) for p in text.split(",")]


def _digests(digests: list[bytes]) -> bytes | None:
    """The ``digests`` column of a row of entries with these digests (None when one is not known)."""
    if all(len(d) == DIGEST_SIZE for d in digests):
        return digests[0] if len(digests) == 1 else b"".join(digests)
    return None


def _width(res: Answer) -> int:
    """How many tasks ``res`` names when they are all created with consecutive ids (a row may hold a run of
    such answers), else 0."""
    n = len(res)
    if n == 1:
        return 1 if res[0][1] else 0
    if not n or not all(created for _, created in res):
        return 0
    first = res[0][0]
    return n if all(tid == first + i for i, (tid, _) in enumerate(res)) else 0


class Entry:
    """The answer to one token. ``res`` is the list the first request was answered with (shared).

    ``number`` orders entries; ``row`` is the id of the row that holds its answer (0 while none is made);
    ``hold`` the id of the first row that held it (the rows from there on are kept while it is).
    """

    __slots__ = ("at", "client_id", "committed", "digest", "dropped", "hold", "number", "queued", "res", "row",
                 "seq", "waiters")

    def __init__(self, client_id: str, seq: int, number: int, at: float, res: Answer, committed: bool,
                 row: int = 0, digest: bytes = b"") -> None:
        self.client_id = client_id
        self.seq = seq
        self.digest = digest  # of the request's tasks (b"": not known, e.g. read from an older row)
        self.number = number
        self.row = row
        self.hold = row or number
        self.at = at
        self.res = res
        self.committed = committed
        self.dropped = False
        self.queued = False  # in ``Requests._rows`` (a row to make with the next commit)
        self.waiters: list[Tell] = []


class Requests:
    """Answers by token for ``window`` seconds (see the module docstring).

    Args:
        window: seconds a token is known after its request arrived.
    """

    #: rows (rule 2) between two range deletes
    DELETE_EVERY = 1024

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self.clients: dict[str, dict[int, Entry]] = {}
        self.next_row = 1  # the number of the next entry (and of a rewritten row)
        self._order: deque[Entry] = deque()  # every entry held, in number order
        self._rows: list[Entry] = []  # to write with the next commit
        self._deleted_below = 1  # rows below this were asked to be deleted
        self._low: dict[str, int] = {}  # per client, the last ``done_below`` acted on

    def __len__(self) -> int:
        return len(self._order)

    def get(self, client_id: str, seq: int) -> Entry | None:
        """The entry of this token, if it is known."""
        mine = self.clients.get(client_id)
        return None if mine is None else mine.get(seq)

    def add(self, client_id: str, seq: int, res: Answer, now: float, digest: bytes = b"") -> Entry:
        """Remember the answer of a new request (not yet committed), and the ``digest`` of its tasks; its row
        goes with the next commit."""
        entry = Entry(client_id, seq, self.next_row, now, res, False, digest=digest)
        self.next_row += 1
        mine = self.clients.get(client_id)
        if mine is None:
            mine = self.clients[client_id] = {}
        mine[seq] = entry
        self._order.append(entry)
        entry.queued = True
        self._rows.append(entry)
        return entry

    def committed(self, entry: Entry, error: BaseException | None) -> list[Tell]:
        """The commit holding ``entry`` is over: return the resends waiting for it. On ``error`` the first
        request was refused: the entry is forgotten (a later resend is a new request)."""
        waiters, entry.waiters = entry.waiters, []
        if error is None:
            entry.committed = True
        else:
            self._drop(entry)
            self._advance()
        return waiters

    def rewrite(self, entry: Entry) -> None:
        """``entry.res`` changed before it was committed: write it again with the next commit (in a row of its
        own when it has one already: that row may hold others)."""
        if entry.dropped:
            return
        if entry.row:
            entry.row = self.next_row
            self.next_row += 1
        if not entry.queued:
            entry.queued = True
            self._rows.append(entry)

    def restore(self, rows: Iterable[RequestRecord]) -> None:
        """A commit failed: write again the rows of the entries still waiting for theirs."""
        again = []
        for row_id, client_id, seq, _, _, seqs, _ in rows:
            for j in range(seqs):
                entry = self.get(client_id, seq + j)
                if entry is not None and entry.row == row_id and not entry.committed and not entry.queued:
                    if row_id == entry.hold:
                        entry.row = 0  # (its first row: made again, maybe with others)
                    entry.queued = True
                    again.append(entry)
        self._rows[:0] = again

    def forget_below(self, client_id: str, low: int) -> None:
        """The client has the answers of its requests numbered below ``low`` (rule 1)."""
        mine = self.clients.get(client_id)
        if not mine:
            return
        before = self._low.get(client_id, 0)
        if low <= before:
            return
        self._low[client_id] = low
        if low - before <= len(mine):  # the usual step: look at the seqs it passed, not at every entry
            found = (mine.get(seq) for seq in range(before, low))
            gone = [e for e in found if e is not None and e.committed]
        else:  # a jump (the client gave up on calls): every entry, never more
            gone = [e for seq, e in mine.items() if seq < low and e.committed]
        for entry in gone:
            self._drop(entry)
        if gone:
            self._advance()

    def expire(self, now: float) -> None:
        """Forget the committed entries older than ``window`` (rule 1)."""
        order = self._order
        if order and order[0].at < now - self.window:
            cutoff = now - self.window
            while order and (order[0].dropped or (order[0].committed and order[0].at < cutoff)):
                self._drop(order.popleft())

    def take_rows(self) -> list[RequestRecord]:
        """The rows to write with the next commit (``REQUEST_COLUMNS``): the entries made or rewritten since
        the last call, runs of them in one row each (see the module docstring)."""
        if not self._rows:
            return []
        rows: list[RequestRecord] = []
        head: Entry | None = None  # the first entry of the row being made
        count = width = after = 0  # entries in it; tasks per answer (0: not a run); the next answer's first id
        digests: list[bytes] = []  # of the entries in it
        for e in self._rows:
            if not e.queued or e.dropped:
                continue
            e.queued = False
            if e.row:  # (rewritten after its row was made: a row of its own)
                rows.append(RequestRecord(e.row, e.client_id, e.seq, e.at, encode_answer(e.res), 1,
                                          _digests([e.digest])))
                continue
            res = e.res
            if (head is not None and width and e.number == head.number + count and e.seq == head.seq + count
                    and e.client_id == head.client_id and len(res) == width and res[0][0] == after and _width(res)):
                e.row = e.hold = head.number
                count += 1
                after += width
                digests.append(e.digest)
                continue
            if head is not None:
                rows.append(RequestRecord(head.number, head.client_id, head.seq, head.at, encode_answer(head.res),
                                          count, _digests(digests)))
            head = e
            e.row = e.hold = e.number
            count = 1
            width = _width(res)
            after = res[0][0] + width if width else 0
            digests = [e.digest]
        if head is not None:
            rows.append(RequestRecord(head.number, head.client_id, head.seq, head.at, encode_answer(head.res),
                                      count, _digests(digests)))
        self._rows = []
        return rows

    def take_delete(self, force: bool = False) -> int | None:
        """The row id below which every stored row may be deleted, when that moved by ``DELETE_EVERY`` rows
        (or at all, with ``force``) since the last time; else None."""
        below = self._order[0].hold if self._order else self.next_row
        if below > self._deleted_below and (force or below - self._deleted_below >= self.DELETE_EVERY):
            self._deleted_below = below
            return below
        return None

    def recover(self, rows: Iterable[RequestRecord], next_row: int, now: float) -> int:
        """Know again the tokens of the stored rows (``REQUEST_COLUMNS`` order, by id) younger than the
        window; return how many."""
        self.next_row = max(self.next_row, next_row)
        cutoff = now - self.window
        n = 0
        for row_id, client_id, seq, at, answer, seqs, digests in rows:
            if at < cutoff:
                continue
            res = decode_answer(answer)
            width = len(res)
            mine = self.clients.get(client_id)
            if mine is None:
                mine = self.clients[client_id] = {}
            known = digests if digests is not None and len(digests) == seqs * DIGEST_SIZE else b""
            for j in range(seqs):
                shifted = res if not j else [(tid + j * width, True) for tid, _ in res]
                entry = Entry(client_id, seq + j, row_id + j, at, shifted, True, row=row_id,
                              digest=known[j * DIGEST_SIZE:(j + 1) * DIGEST_SIZE])
                before = mine.get(seq + j)
                if before is not None:
                    before.dropped = True  # (a later row, a rewritten answer, wins)
                else:
                    n += 1
                mine[seq + j] = entry
                self._order.append(entry)
        self._advance()
        return n

    def _drop(self, entry: Entry) -> None:
        if entry.dropped:
            return
        entry.dropped = True
        mine = self.clients.get(entry.client_id)
        if mine is not None and mine.get(entry.seq) is entry:
            del mine[entry.seq]
            if not mine:
                del self.clients[entry.client_id]
                self._low.pop(entry.client_id, None)

    def _advance(self) -> None:
        order = self._order
        while order and order[0].dropped:
            order.popleft()
