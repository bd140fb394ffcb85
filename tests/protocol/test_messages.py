"""Validation of hello and task specs."""

from __future__ import annotations

from typing import Any

import pytest

from runq.protocol.errors import ProtocolError
from runq.protocol.messages import Hello, TaskSpec, parse_hello, parse_task_spec


def test_hello_defaults_and_versions() -> None:
    assert parse_hello({"op": "hello", "version": 1, "role": "client"}) == Hello(version=1, role="client")
    h = parse_hello({"op": "hello", "versions": [3, 1, 2], "role": "worker", "queues": ["a", "b"],
                     "concurrency": 4, "token": "t", "name": "n", "host": "h", "pid": 9})
    assert h == Hello(1, "worker", "t", "n", "h", 9, ("a", "b"), 4)


@pytest.mark.parametrize(("msg", "code", "text"), [
    ({"op": "enqueue", "version": 1, "role": "client"}, "hello_required", "first frame must be hello"),
    ({"op": "hello", "version": 2, "role": "client"}, "version", "no common protocol version"),
    ({"op": "hello", "versions": [], "role": "client"}, "version", "no common"),
    ({"op": "hello", "versions": "1", "role": "client"}, "bad_message", "list of int"),
    ({"op": "hello", "role": "client"}, "bad_message", "missing field 'version'"),
    ({"op": "hello", "version": True, "role": "client"}, "bad_message", "must be int"),
    ({"op": "hello", "version": 1, "role": "admin"}, "bad_message", "role must be one of"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": []}, "bad_message", "non-empty list"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": [""]}, "bad_message", "non-empty list"),
    ({"op": "hello", "version": 1, "role": "worker", "concurrency": 0}, "bad_message", ">= 1"),
    ({"op": "hello", "version": 1, "role": "client", "token": 5}, "bad_message", "'token' must be str"),
])
def test_bad_hellos(msg: dict[str, Any], code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        parse_hello(msg)
    assert exc_info.value.code == code and text in str(exc_info.value)


def test_task_spec_fields() -> None:
    assert parse_task_spec({"type": "t"}) == TaskSpec("t")
    s = parse_task_spec({"type": "t", "payload": b"\x01", "queue": "q", "priority": -3, "delay": 2,
                         "timeout": 1.5, "retries": 0, "key": "k"})
    assert s == TaskSpec("t", b"\x01", "q", -3, 2.0, None, 1.5, 0, "k")
    assert parse_task_spec({"type": "t", "run_at": 1e9}).run_at == 1e9


@pytest.mark.parametrize(("entry", "code", "text"), [
    ("not a map", "bad_message", "must be a map"),
    ({"payload": b""}, "bad_message", "missing field 'type'"),
    ({"type": 5}, "bad_message", "'type' must be str"),
    ({"type": ""}, "bad_request", "non-empty"),
    ({"type": "t", "payload": "text"}, "bad_message", "must be bin"),
    ({"type": "t", "priority": True}, "bad_message", "'priority' must be int"),
    ({"type": "t", "priority": 2**40}, "bad_request", "32 bits"),
    ({"type": "t", "delay": -1}, "bad_request", "'delay' must be >= 0"),
    ({"type": "t", "delay": 1, "run_at": 5}, "bad_request", "not both"),
    ({"type": "t", "timeout": 0}, "bad_request", "'timeout' must be > 0"),
    ({"type": "t", "retries": -1}, "bad_request", "'retries'"),
    ({"type": "t", "retries": 1.5}, "bad_message", "'retries' must be int"),
    ({"type": "t", "key": ""}, "bad_request", "'key'"),
    ({"type": "t", "queue": 7}, "bad_message", "'queue' must be str"),
])
def test_bad_task_specs(entry: Any, code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        parse_task_spec(entry)
    assert exc_info.value.code == code and text in str(exc_info.value)


def test_the_spec_example_frame_is_what_we_send() -> None:
    import re
    from pathlib import Path

    from runq.protocol.frames import encode_frame

    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    block = doc.split("is 35 bytes:\n\n```\n", 1)[1].split("```", 1)[0]
    hex_bytes = ""
    for line in block.splitlines():
        for token in line.split():
            if not re.fullmatch(r"[0-9a-f]{2}", token):
                break  # the rest of the line is the comment
            hex_bytes += token
    assert bytes.fromhex(hex_bytes) == encode_frame({"op": "hello", "version": 1, "role": "client"})
