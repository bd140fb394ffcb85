"""The sans-IO framing: round trips at any split, and malformed, truncated and oversized frames."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runq.protocol.errors import FrameTooLarge, ProtocolError
from runq.protocol.frames import DEFAULT_MAX_FRAME, INVALID_OP, Connection, encode_frame

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    st.text(max_size=50), st.binary(max_size=50))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=10), inner, max_size=5)),
                      max_leaves=10)
messages = st.builds(lambda op, body: {**body, "op": op}, st.text(min_size=1, max_size=12),
                     st.dictionaries(st.text(max_size=10), values, max_size=6))


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def feed_in_pieces(conn: Connection, data: bytes, cuts: list[int]) -> list[dict[str, Any]]:
    out = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        conn.receive_data(data[a:b])
        out.extend(conn.messages())
    return out


def assert_dead(conn: Connection, code: str) -> None:
    """After an error, every call raises again, with the same code."""
    for _ in range(2):
        with pytest.raises(ProtocolError) as exc_info:
            conn.next_message()
        assert exc_info.value.code == code
    with pytest.raises(ProtocolError) as exc_info:
        conn.receive_data(encode_frame({"op": "ping"}))
    assert exc_info.value.code == code
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.messages()


# ---------------------------------------------------------------- round trips

@settings(max_examples=120, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_split_anywhere(msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    sender, receiver = Connection(), Connection()
    data = sender.send_many(msgs)
    assert data == b"".join(encode_frame(m) for m in msgs) == b"".join(Connection().send(m) for m in msgs)
    assert feed_in_pieces(receiver, data, cuts) == msgs
    assert receiver.buffered == 0 and receiver.frames_in == len(msgs) and sender.frames_out == len(msgs)
    assert not receiver.eof


@settings(max_examples=25, deadline=None)
@given(st.lists(messages, min_size=2, max_size=5))
def test_several_frames_in_one_chunk(msgs: list[dict[str, Any]]) -> None:
    conn = Connection()
    conn.receive_data(b"".join(encode_frame(m) for m in msgs))
    # one at a time, in order, then None: nothing is lost or merged
    got = [conn.next_message() for _ in msgs]
    assert got == msgs
    assert conn.next_message() is None and conn.buffered == 0


@settings(max_examples=30, deadline=None)
@given(messages)
def test_one_byte_at_a_time(msg: dict[str, Any]) -> None:
    conn = Connection()
    data = encode_frame(msg) * 2
    out = []
    for i in range(len(data)):
        conn.receive_data(data[i:i + 1])
        m = conn.next_message()
        if m is not None:
            out.append(m)
            # the message appears exactly when its last byte arrived
            assert i + 1 in (len(data) // 2, len(data))
    assert out == [msg, msg]


def test_bytes_and_strings_keep_their_msgpack_types() -> None:
    body = msgpack.packb({"op": "x", "b": b"\x00\xff", "s": "é", "n": None, "f": 1.5, "l": [1, -2]},
                         use_bin_type=True)
    assert Connection().send(msgpack.unpackb(body)) == frame_of(body)
    conn = Connection()
    conn.receive_data(frame_of(body))
    m = conn.next_message()
    assert m == {"op": "x", "b": b"\x00\xff", "s": "é", "n": None, "f": 1.5, "l": [1, -2]}
    assert type(m["b"]) is bytes and type(m["s"]) is str and type(m["l"]) is list


# ---------------------------------------------------------------- end of stream

@settings(max_examples=50, deadline=None)
@given(st.lists(messages, max_size=2), messages, st.integers(1, 200))
def test_truncated_frame_then_eof_is_an_error(whole: list[dict[str, Any]], msg: dict[str, Any], cut: int) -> None:
    data = encode_frame(msg)
    conn = Connection()
    # whole frames first, then a frame cut short (1 byte at least, never all of it)
    conn.receive_data(b"".join(encode_frame(m) for m in whole) + data[: len(data) - min(cut, len(data) - 1)])
    assert conn.messages() == whole
    assert conn.next_message() is None
    conn.receive_data(b"")
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"
    assert_dead(conn, "bad_frame")


def test_eof_inside_the_header() -> None:
    conn = Connection()
    conn.receive_data(b"\x00\x00")
    assert conn.next_message() is None
    conn.receive_data(b"")
    with pytest.raises(ProtocolError, match="inside a frame header") as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"


def test_clean_eof_between_frames_is_not_an_error() -> None:
    conn = Connection()
    conn.receive_data(encode_frame({"op": "ping"}))
    conn.receive_data(b"")
    assert conn.eof
    assert conn.next_message() == {"op": "ping"} and conn.next_message() is None and conn.next_message() is None


def test_eof_on_an_empty_stream() -> None:
    conn = Connection()
    conn.receive_data(b"")
    assert conn.eof and conn.next_message() is None


# ---------------------------------------------------------------- malformed bodies

@pytest.mark.parametrize("body", [
    b"\xc1",                                  # never-used msgpack byte
    b"\x92\x01",                              # array announced 2 items, has 1
    b"\x81\xa2op",                            # map announced 1 pair, has a key only
    b"\x01\x02",                              # two values in one frame
    msgpack.packb({"op": "a"}) + b"\x00",     # a valid message and one extra byte
    msgpack.packb([1, 2]),                    # not a map
    msgpack.packb("hello"),                   # not a map
    msgpack.packb(None),                      # not a map
    msgpack.packb({"type": "x"}),             # no op
    msgpack.packb({"op": 5}),                 # op not a str
    msgpack.packb({"op": b"hello"}),          # op is bin, not str
    msgpack.packb({"op": None}),              # op nil
    b"",                                      # empty body
])
def test_malformed_bodies(body: bytes) -> None:
    conn = Connection()
    conn.receive_data(frame_of(body))
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"
    assert type(exc_info.value) is ProtocolError
    assert_dead(conn, "bad_frame")


def test_a_bad_frame_after_good_ones_fails_only_when_reached() -> None:
    conn = Connection()
    conn.receive_data(encode_frame({"op": "a"}) + frame_of(b"\xc1") + encode_frame({"op": "b"}))
    assert conn.next_message() == {"op": "a"}
    with pytest.raises(ProtocolError):
        conn.next_message()
    assert_dead(conn, "bad_frame")


non_maps = st.one_of(scalars, st.lists(scalars, max_size=4))


@settings(max_examples=100, deadline=None)
@given(non_maps)
def test_any_value_that_is_not_a_map_is_a_bad_frame(value: Any) -> None:
    conn = Connection()
    conn.receive_data(frame_of(msgpack.packb(value, use_bin_type=True)))
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"


_ABSENT = object()


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), scalars, max_size=4),
       st.one_of(st.just(_ABSENT), scalars.filter(lambda v: not isinstance(v, str))))
def test_a_map_without_a_str_op_is_a_bad_frame(body: dict[str, Any], op: Any) -> None:
    body = {k: v for k, v in body.items() if k != "op"}
    if op is not _ABSENT:
        body["op"] = op
    conn = Connection()
    conn.receive_data(frame_of(msgpack.packb(body, use_bin_type=True)))
    with pytest.raises(ProtocolError) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "bad_frame"


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_give_messages_or_a_protocol_error(data: bytes) -> None:
    conn = Connection(max_frame=1024)
    try:
        conn.receive_data(data)
        while (m := conn.next_message()) is not None:
            assert isinstance(m, dict) and isinstance(m["op"], str)
        conn.receive_data(b"")
        conn.next_message()
    except ProtocolError as exc:
        assert exc.code in ("bad_frame", "frame_too_large")


# ---------------------------------------------------------------- size limit

def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_FRAME == 16 * 1024 * 1024 == Connection().max_frame


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4096), st.integers(1, 2**32 - 1))
def test_oversized_header_is_refused_before_the_body_arrives(max_frame: int, excess: int) -> None:
    size = min(max_frame + excess, 2**32 - 1)
    conn = Connection(max_frame=max_frame)
    conn.receive_data(struct.pack(">I", size))  # only the header: no body byte was sent
    with pytest.raises(FrameTooLarge) as exc_info:
        conn.next_message()
    assert exc_info.value.code == "frame_too_large" and str(size) in str(exc_info.value)
    assert conn.buffered == 4  # nothing was allocated for the body
    assert_dead(conn, "frame_too_large")


def test_oversized_header_after_good_frames() -> None:
    conn = Connection(max_frame=64)
    conn.receive_data(encode_frame({"op": "a"}) + struct.pack(">I", 65))
    assert conn.next_message() == {"op": "a"}
    with pytest.raises(FrameTooLarge):
        conn.next_message()


def test_frame_at_the_limit_is_accepted() -> None:
    body = msgpack.packb({"op": "x", "pad": b"a" * 100})
    conn = Connection(max_frame=len(body))
    conn.receive_data(frame_of(body))
    assert conn.next_message() == {"op": "x", "pad": b"a" * 100}
    conn = Connection(max_frame=len(body) - 1)
    conn.receive_data(frame_of(body))
    with pytest.raises(FrameTooLarge):
        conn.next_message()


def test_the_limit_is_only_on_incoming_frames() -> None:
    conn = Connection(max_frame=16)
    data = conn.send({"op": "x", "pad": b"a" * 100})
    assert len(data) > 100 and conn.frames_out == 1


def test_a_buffer_never_read_to_its_end_is_compacted() -> None:
    """Reads that always end inside a frame never empty the buffer (it is cleared only when a read ends on
    a frame boundary): the bytes already returned as messages are dropped once they pass 1 MiB, so the
    buffer stays near that instead of growing with the stream (3 MB here)."""
    conn = Connection()
    frame = encode_frame({"op": "x", "pad": b"a" * 1000})
    chunk = 4096
    count = 3000
    # (an odd frame length and reads of 2**12 bytes: the first read to end on a frame boundary would be read
    # number len(frame), past the end of the stream)
    assert len(frame) % 2 == 1 and len(frame) * chunk > count * len(frame)
    stream = frame * count
    got = 0
    largest = 0
    for i in range(0, len(stream), chunk):
        conn.receive_data(stream[i:i + chunk])
        got += len(conn.messages())
        assert conn.buffered > 0 or i + chunk >= len(stream)  # a partly read frame is always left
        largest = max(largest, len(conn._buf))
    assert got == count and conn.buffered == 0
    assert largest <= (1 << 20) + chunk + len(frame), largest


def test_strict_keys_turn_a_non_str_key_into_an_invalid_message_and_keep_the_stream() -> None:
    """Rule 4: with strict_keys (the server), a map key that is not a str, at any depth, makes the frame an
    INVALID_OP message carrying its rid; the next frame is read as usual. Without it (the SDK), such keys pass."""
    frames = [{"op": "get", "rid": 5, 1: 2}, {"op": "enqueue", "tasks": [{"type": "t", None: 1}]},
              {"op": "ping", "rid": 6}]
    data = b"".join(encode_frame(m) for m in frames)
    strict = Connection(strict_keys=True)
    strict.receive_data(data)
    got = strict.messages()
    assert [(m["op"], m["rid"]) for m in got] == [(INVALID_OP, 5), (INVALID_OP, None), ("ping", 6)]
    assert got[0]["message"] == "get: every map key must be a str (int is not allowed for map key)"
    loose = Connection()
    loose.receive_data(data)
    assert loose.messages() == frames
    for not_a_message in ([{1: 2}], {"rid": 1, 2: 3}):  # (not a map with a str op: the stream ends, as before)
        conn = Connection(strict_keys=True)
        conn.receive_data(encode_frame(not_a_message))  # type: ignore[arg-type]
        with pytest.raises(ProtocolError) as err:
            conn.next_message()
        assert err.value.code == "bad_frame"
