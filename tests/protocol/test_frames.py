"""The sans-IO framing: round trips at any split, and malformed, truncated and oversized frames."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runq.protocol.errors import FrameTooLarge, ProtocolError
from runq.protocol.frames import Connection, encode_frame

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=50), st.binary(max_size=50))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=5)),
                      max_leaves=20)
messages = st.builds(lambda op, body: {**body, "op": op}, st.text(min_size=1, max_size=12),
                     st.dictionaries(st.text(max_size=10), values, max_size=6))


def feed_in_pieces(conn: Connection, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        conn.receive_data(data[a:b])
        out.extend(conn.messages())
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_split_anywhere(msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    sender, receiver = Connection(), Connection()
    data = sender.send_many(msgs)
    assert data == b"".join(encode_frame(m) for m in msgs)
    assert feed_in_pieces(receiver, data, cuts) == msgs
    assert receiver.buffered == 0 and receiver.frames_in == len(msgs) and sender.frames_out == len(msgs)


@settings(max_examples=100, deadline=None)
@given(messages, st.integers(1, 200))
def test_truncated_frame_then_eof_is_an_error(msg: dict[str, Any], cut: int) -> None:
    data = encode_frame(msg)
    conn = Connection()
    conn.receive_data(data[: len(data) - min(cut, len(data) - 1)])  # 1 byte at least, never all
    assert conn.next_message() is None
    conn.receive_data(b"")
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"


def test_clean_eof_between_frames_is_not_an_error() -> None:
    conn = Connection()
    conn.receive_data(encode_frame({"op": "ping"}))
    conn.receive_data(b"")
    assert conn.next_message() == {"op": "ping"} and conn.next_message() is None and conn.eof


@pytest.mark.parametrize("body", [
    b"\xc1",                                  # never-used msgpack byte
    b"\x92\x01",                              # array announced 2 items, has 1
    b"\x01\x02",                              # two values in one frame
    msgpack.packb([1, 2]),                    # not a map
    msgpack.packb("hello"),                   # not a map
    msgpack.packb({"type": "x"}),             # no op
    msgpack.packb({"op": 5}),                 # op not a str
    b"",                                      # empty body
])
def test_malformed_bodies(body: bytes) -> None:
    conn = Connection()
    conn.receive_data(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"
    # the connection stays dead: every later call raises the same error
    with pytest.raises(ProtocolError):
        conn.next_message()
    with pytest.raises(ProtocolError):
        conn.receive_data(encode_frame({"op": "ping"}))


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    conn = Connection(max_frame=1024)
    try:
        conn.receive_data(data)
        while conn.next_message() is not None:
            pass
        conn.receive_data(b"")
        conn.next_message()
    except ProtocolError:
        pass


def test_oversized_header_is_refused_before_the_body_arrives() -> None:
    conn = Connection(max_frame=1024)
    conn.receive_data(struct.pack(">I", 1025))  # only the header: no body byte was sent
    with pytest.raises(FrameTooLarge) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "frame_too_large" and "1025" in str(exc_info.value)
    with pytest.raises(FrameTooLarge):
        conn.receive_data(b"x")


def test_frame_at_the_limit_is_accepted() -> None:
    body = msgpack.packb({"op": "x", "pad": b"a" * 100})
    conn = Connection(max_frame=len(body))
    conn.receive_data(struct.pack(">I", len(body)) + body)
    assert conn.next_message() == {"op": "x", "pad": b"a" * 100}


def test_large_streams_compact_their_buffer() -> None:
    conn = Connection()
    frame = encode_frame({"op": "x", "pad": b"a" * 1000})
    for _ in range(3000):
        conn.receive_data(frame + frame[:10])
        assert conn.next_message() is not None
        conn.receive_data(frame[10:])
        assert conn.next_message() is not None
    assert len(conn._buf) < 3 * len(frame)  # noqa: SLF001 - the point of the test
