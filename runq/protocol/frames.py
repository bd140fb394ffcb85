"""Sans-IO framing of the runq wire protocol.

Theory of operation
-------------------
A runq stream is a sequence of frames. A frame is a 4-byte big-endian unsigned
length N followed by N bytes holding exactly one msgpack value, which must be a
map (a *message*) whose ``op`` key names it. ``Connection`` touches no socket:

- ``receive_data(data)`` appends bytes read from the peer (``b""`` means EOF);
- ``next_message()`` returns the next complete message, or ``None`` when more
  bytes are needed, and raises ``ProtocolError`` for a malformed frame;
- ``send(message)`` / ``send_many(messages)`` return the bytes to write.

Rules of this file:

1. The length header is checked against ``max_frame`` *before* any body byte is
   buffered for it: an oversized frame raises ``FrameTooLarge`` at once, so a
   peer cannot make us allocate more than ``max_frame`` plus one read. The
   error names the ``rid`` of the message when the body bytes already read show
   it (a map whose first keys are ``op`` and ``rid``, as every runq peer writes
   them), so that the peer can be told which request it was, or a client which
   of its requests that answer was for.
2. After a ``ProtocolError`` the connection is dead: every later call raises
   the same error. The caller sends an error frame and closes.
3. Bytes inside messages stay bytes (msgpack bin); strings are UTF-8 str.
4. With ``strict_keys`` (the server's side), a frame holding a map whose key is not a str or bin (an int,
   nil, an array, ...), anywhere in it, is not an error of the stream: it is returned as the message
   ``{"op": INVALID_OP, "rid": <its rid>, "message": <what is wrong>}``, which the server answers with
   ``bad_request`` (docs/protocol.md section 0). The frame is decoded again, loosely, only then: a valid
   frame costs nothing more.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import msgpack

from .errors import FrameTooLarge, ProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "DEFAULT_MAX_REPLY", "HEADER", "INVALID_OP", "Connection", "encode_frame", "max_reply",
           "reply_limit"]

#: Default hard limit on one frame's body, in bytes (16 MiB).
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: What a task map holds besides its four application values (ids, names, key, times), with room to spare.
REPLY_SLACK = 64 * 1024


def max_reply(max_frame: int) -> int:
    """The largest frame body a server with ``max_frame`` sends (docs/protocol.md section 1): a task's payload,
    result, progress and error each came in a frame of at most ``max_frame`` bytes."""
    return 4 * max_frame + REPLY_SLACK


#: The largest frame body a server with the default ``max_frame`` sends.
DEFAULT_MAX_REPLY = max_reply(DEFAULT_MAX_FRAME)


def reply_limit(welcome: dict[str, Any], cap: int | None = None) -> int:
    """The largest frame body a peer reads from the server of ``welcome``: its ``max_reply`` (from its
    ``max_frame`` when it announced none), at most ``cap`` when given."""
    limit = welcome.get("max_reply")
    if type(limit) is not int or limit <= 0:
        max_frame = welcome.get("max_frame")
        limit = max_reply(max_frame if type(max_frame) is int and max_frame > 0 else DEFAULT_MAX_FRAME)
    return limit if cap is None else min(limit, cap)

HEADER = struct.Struct(">I")
#: The ``op`` of a message that ``Connection(strict_keys=True)`` could not accept as it came (rule 4).
INVALID_OP = "\x00invalid"

_packb = msgpack.Packer(use_bin_type=True).pack


def encode_frame(message: dict[str, Any]) -> bytes:
    """Return one frame (header + msgpack body) for ``message``."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return HEADER.pack(len(body)) + body


#: body bytes of an oversized frame looked at for its ``rid`` (rule 1)
_PEEK = 64


def _peek_rid(head: bytes) -> Any:
    """The ``rid`` among the first few keys of the map that ``head`` begins, or None."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(head)
    try:
        for _ in range(min(unpacker.read_map_header(), 3)):
            if unpacker.unpack() == "rid":
                rid = unpacker.unpack()
                return rid if rid is None or isinstance(rid, (int, str)) else None
            unpacker.skip()
    except Exception:  # noqa: BLE001 - cut short, not a map, ...: no rid to tell
        return None
    return None


class Connection:
    """One side of a runq byte stream, with no I/O.

    Args:
        max_frame: the largest body accepted from the peer, in bytes.
        strict_keys: map keys must be str (or bin); see rule 4.
    """

    __slots__ = ("_buf", "_eof", "_error", "_pos", "frames_in", "frames_out", "max_frame", "strict_keys")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, strict_keys: bool = False) -> None:
        self.max_frame = max_frame
        self.strict_keys = strict_keys
        self._buf = bytearray()
        self._pos = 0
        self._error: ProtocolError | None = None
        self._eof = False
        self.frames_in = 0
        self.frames_out = 0

    # ---- incoming -------------------------------------------------------
    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the peer; ``b""`` marks the end of the stream."""
        if self._error is not None:
            raise self._error
        if not data:
            self._eof = True
            return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def eof(self) -> bool:
        """True once the peer closed its side and every whole frame was read."""
        return self._eof

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def next_message(self) -> dict[str, Any] | None:
        """Return the next whole message, or ``None`` if more bytes are needed.

        Raises:
            FrameTooLarge: the header announced more than ``max_frame`` bytes.
            ProtocolError: the body is not msgpack, or not a map with a str ``op``;
                or the stream ended inside a frame.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            if self._eof and avail:
                self._fail(ProtocolError("stream ended inside a frame header", "bad_frame"))
            return None
        (size,) = HEADER.unpack_from(buf, pos)
        if size > self.max_frame:
            error = FrameTooLarge(f"frame of {size} bytes exceeds max_frame {self.max_frame}")
            error.size = size
            error.rid = _peek_rid(bytes(buf[pos + 4:pos + 4 + _PEEK]))  # (what has come of the body: not waited for)
            self._fail(error)
        if avail < 4 + size:
            if self._eof:
                self._fail(ProtocolError("stream ended inside a frame body", "bad_frame"))
            return None
        start = pos + 4
        end = start + size
        try:
            message = msgpack.unpackb(
                memoryview(buf)[start:end], raw=False, strict_map_key=self.strict_keys, use_list=True
            )
        except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated classes
            message = self._loose(memoryview(buf)[start:end], exc)
        self._pos = end
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif self._pos > 1 << 20:
            del buf[: self._pos]
            self._pos = 0
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            self._fail(ProtocolError("a frame must hold a map with a str 'op'", "bad_frame"))
        self.frames_in += 1
        return message  # type: ignore[no-any-return]

    def _loose(self, body: memoryview, exc: Exception) -> dict[str, Any]:
        """The message of a frame that strict decoding refused (rule 4), or the stream's end (``_fail``)."""
        if self.strict_keys and isinstance(exc, ValueError) and "map key" in str(exc):
            why = str(exc).replace(" when strict_map_key=True", "")
            try:
                loose = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
            except Exception:  # noqa: BLE001 - a key msgpack cannot even hash (an array, a map)
                loose = {"op": "?"}
            if isinstance(loose, dict) and isinstance(loose.get("op"), str):
                return {"op": INVALID_OP, "rid": loose.get("rid"),
                        "message": f"{loose['op']}: every map key must be a str ({why})"}
        return self._fail(ProtocolError(f"frame body is not one msgpack value: {exc}", "bad_frame"))  # type: ignore[no-any-return]

    def messages(self) -> list[dict[str, Any]]:
        """Return every whole message buffered now (maybe none)."""
        out = []
        while (m := self.next_message()) is not None:
            out.append(m)
        return out

    def _fail(self, error: ProtocolError) -> Any:
        self._error = error
        raise error

    # ---- outgoing -------------------------------------------------------
    def send(self, message: dict[str, Any]) -> bytes:
        """Return the frame bytes for one message."""
        body: bytes = _packb(message)
        self.frames_out += 1
        return HEADER.pack(len(body)) + body

    def send_many(self, messages: Iterable[dict[str, Any]]) -> bytes:
        """Return the frames for several messages, joined for one write."""
        parts = []
        pack = _packb
        hdr = HEADER.pack
        for m in messages:
            body = pack(m)
            parts.append(hdr(len(body)))
            parts.append(body)
        self.frames_out += len(parts) // 2
        return b"".join(parts)
