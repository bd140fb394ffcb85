"""Validation of hello and task specs, and the op sets of each role."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runq.protocol.errors import ProtocolError
from runq.protocol.messages import (
    CLIENT_OPS,
    PROTOCOL_VERSION,
    ROLES,
    SUPPORTED_VERSIONS,
    WATCHER_OPS,
    WORKER_OPS,
    Hello,
    TaskSpec,
    TypeOptions,
    choose_version,
    optional,
    parse_hello,
    parse_task_spec,
    require,
)

HELLO = {"op": "hello", "version": 1, "role": "client"}


# ---------------------------------------------------------------- hello

def test_hello_defaults_and_versions() -> None:
    assert parse_hello(dict(HELLO)) == Hello(version=1, role="client")
    h = parse_hello({"op": "hello", "versions": [3, 1, 2], "role": "worker", "queues": ["a", "b"],
                     "concurrency": 4, "token": "t", "name": "n", "host": "h", "pid": 9})
    assert h == Hello(1, "worker", "t", "n", "h", 9, ("a", "b"), 4)
    h = parse_hello({**HELLO, "role": "worker", "types": ["send_email", "resize", "send_email"]})
    assert h.types == ("send_email", "resize")  # duplicates once, in order
    h = parse_hello({**HELLO, "role": "worker", "type_options": {"send_email": {"queue": "mail", "retries": 5},
                                                                 "resize": {"timeout": 30, "priority": -1}}})
    assert h.type_options == {"send_email": TypeOptions(queue="mail", retries=5),
                              "resize": TypeOptions(priority=-1, timeout=30.0)}


def test_hello_nil_means_default_and_unknown_fields_are_ignored() -> None:
    h = parse_hello({**HELLO, "token": None, "queues": None, "concurrency": None, "pid": None, "color": "red"})
    assert h == Hello(version=1, role="client")


@pytest.mark.parametrize("role", ROLES)
def test_every_role(role: str) -> None:
    assert parse_hello({**HELLO, "role": role}).role == role


def test_versions_wins_over_version() -> None:
    # 'version' is not even looked at when 'versions' is given
    assert parse_hello({"op": "hello", "versions": [1], "version": "junk", "role": "client"}).version == 1
    with pytest.raises(ProtocolError) as exc_info:
        parse_hello({"op": "hello", "versions": [7], "version": 1, "role": "client"})
    assert exc_info.value.code == "version"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 10), max_size=6))
def test_choose_version_is_the_highest_in_common(offered: list[int]) -> None:
    common = set(offered) & set(SUPPORTED_VERSIONS)
    assert choose_version(offered) == (max(common) if common else None)
    if common:
        assert parse_hello({"op": "hello", "versions": offered, "role": "client"}).version == max(common)
    else:
        with pytest.raises(ProtocolError) as exc_info:
            parse_hello({"op": "hello", "versions": offered, "role": "client"})
        assert exc_info.value.code == "version"


def test_the_server_speaks_version_1() -> None:
    assert PROTOCOL_VERSION == 1 and SUPPORTED_VERSIONS == (1,)


@pytest.mark.parametrize(("msg", "code", "text"), [
    ({"op": "enqueue", "version": 1, "role": "client"}, "hello_required", "first frame must be hello"),
    ({"op": "welcome", "version": 1}, "hello_required", "got 'welcome'"),
    ({"op": "hello", "version": 2, "role": "client"}, "version", "no common protocol version"),
    ({"op": "hello", "version": 0, "role": "client"}, "version", "server speaks [1]"),
    ({"op": "hello", "versions": [], "role": "client"}, "version", "no common"),
    ({"op": "hello", "versions": "1", "role": "client"}, "bad_message", "list of int"),
    ({"op": "hello", "versions": [1, "2"], "role": "client"}, "bad_message", "list of int"),
    ({"op": "hello", "versions": [1.0], "role": "client"}, "bad_message", "list of int"),
    ({"op": "hello", "role": "client"}, "bad_message", "missing field 'version'"),
    ({"op": "hello", "version": None, "role": "client"}, "bad_message", "must be int"),
    ({"op": "hello", "version": True, "role": "client"}, "bad_message", "must be int"),
    ({"op": "hello", "version": 1.0, "role": "client"}, "bad_message", "must be int"),
    ({"op": "hello", "version": "1", "role": "client"}, "bad_message", "must be int"),
    ({"op": "hello", "version": 1}, "bad_message", "missing field 'role'"),
    ({"op": "hello", "version": 1, "role": "admin"}, "bad_message", "role must be one of"),
    ({"op": "hello", "version": 1, "role": "Client"}, "bad_message", "role must be one of"),
    ({"op": "hello", "version": 1, "role": b"client"}, "bad_message", "'role' must be str"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": []}, "bad_message", "non-empty list"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": [""]}, "bad_message", "non-empty list"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": ["a", 1]}, "bad_message", "non-empty list"),
    ({"op": "hello", "version": 1, "role": "worker", "queues": "default"}, "bad_message", "'queues' must be list"),
    ({"op": "hello", "version": 1, "role": "client", "queues": []}, "bad_message", "non-empty list"),  # any role
    ({"op": "hello", "version": 1, "role": "worker", "concurrency": 0}, "bad_message", ">= 1"),
    ({"op": "hello", "version": 1, "role": "worker", "concurrency": -3}, "bad_message", ">= 1"),
    ({"op": "hello", "version": 1, "role": "worker", "concurrency": True}, "bad_message", "must be int"),
    ({"op": "hello", "version": 1, "role": "worker", "concurrency": 2.0}, "bad_message", "must be int"),
    ({"op": "hello", "version": 1, "role": "client", "token": 5}, "bad_message", "'token' must be str"),
    ({"op": "hello", "version": 1, "role": "client", "token": b"s3cret"}, "bad_message", "'token' must be str"),
    ({"op": "hello", "version": 1, "role": "worker", "pid": True}, "bad_message", "'pid' must be int"),
    ({"op": "hello", "version": 1, "role": "worker", "name": 1}, "bad_message", "'name' must be str"),
    ({"op": "hello", "version": 1, "role": "worker", "host": ["h"]}, "bad_message", "'host' must be str"),
    ({"op": "hello", "version": 1, "role": "worker", "types": "t"}, "bad_message", "'types' must be list"),
    ({"op": "hello", "version": 1, "role": "worker", "type_options": []}, "bad_message", "'type_options' must be dict"),
    ({"op": "hello", "version": 1, "role": "worker", "type_options": {"t": 1}}, "bad_message", "to maps"),
    ({"op": "hello", "version": 1, "role": "worker", "type_options": {"t": {"queue": 1}}}, "bad_message",
     "'queue' must be str"),
    ({"op": "hello", "version": 1, "role": "worker", "type_options": {"t": {"retries": 5000}}}, "bad_message",
     "'type_options' of 't': task: 'retries' must be between 0 and 1000"),
    ({"op": "hello", "version": 1, "role": "worker", "types": [""]}, "bad_message", "at most 1000 task types"),
    ({"op": "hello", "version": 1, "role": "worker", "types": ["x" * 201]}, "bad_message", "at most 200 chars"),
    ({"op": "hello", "version": 1, "role": "worker", "types": [1]}, "bad_message", "non-empty str"),
    ({"op": "hello", "version": 1, "role": "worker", "types": ["t"] * 1001}, "bad_message", "at most 1000"),
    ({"op": "hello", "version": 1, "role": "worker", "types": [f"{i:0>200}" for i in range(200)]}, "bad_message",
     "32768 chars in all"),
    # checked in the documented order: the version before the role
    ({"op": "hello", "version": 9, "role": "root"}, "version", "no common"),
])
def test_bad_hellos(msg: dict[str, Any], code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        parse_hello(msg)
    assert exc_info.value.code == code and text in str(exc_info.value)


@pytest.mark.parametrize("versions", [[True], [1, True], [2**64 + 1]], ids=["true", "1-and-true", "beyond-64-bits"])
def test_bool_in_versions_is_not_an_int(versions: list[Any]) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        parse_hello({"op": "hello", "versions": versions, "role": "client"})
    assert exc_info.value.code == "bad_message"


# ---------------------------------------------------------------- op sets

def test_op_sets_per_role() -> None:
    assert WATCHER_OPS < CLIENT_OPS
    # a watcher changes nothing
    assert CLIENT_OPS - WATCHER_OPS == {"enqueue", "cancel", "retry", "pause", "resume", "drain",
                                        "set_limit", "remove_limit", "set_breaker", "remove_breaker", "open_breaker",
                                        "close_breaker", "schedule_add", "schedule_remove", "schedule_pause",
                                        "schedule_resume", "schedule_run", "dead_retry", "dead_delete"}
    assert WORKER_OPS & CLIENT_OPS == {"ping"}
    assert "hello" not in CLIENT_OPS | WORKER_OPS | WATCHER_OPS


# ---------------------------------------------------------------- field helpers

@pytest.mark.parametrize(("value", "kind", "ok"), [
    (1, int, True), (True, int, False), (False, (int, float), False), (1.5, (int, float), True),
    (1, (int, float), True), (True, bool, True), (b"x", bytes, True), ("x", bytes, False), (None, int, False),
    # integers the server stores must fit in a signed 64-bit integer (section 0)
    (2**63 - 1, int, True), (-(2**63), int, True), (2**63, int, False), (-(2**63) - 1, int, False),
    (2**64 - 1, (int, float), False), (1e300, (int, float), True),
])
def test_require_types(value: Any, kind: Any, ok: bool) -> None:
    msg = {"op": "x", "f": value}
    if ok:
        assert require(msg, "f", kind) is value
    else:
        with pytest.raises(ProtocolError) as exc_info:
            require(msg, "f", kind)
        assert exc_info.value.code == "bad_message" and "'f'" in str(exc_info.value)


def test_optional_default_and_type() -> None:
    assert optional({"op": "x"}, "f", int, 7) == 7
    assert optional({"op": "x", "f": None}, "f", int, 7) == 7
    assert optional({"op": "x", "f": 0}, "f", int, 7) == 0
    with pytest.raises(ProtocolError, match="x: field 'f' must be int, got bool"):
        optional({"op": "x", "f": False}, "f", int, 7)


# ---------------------------------------------------------------- task specs

def test_task_spec_fields() -> None:
    assert parse_task_spec({"type": "t"}) == TaskSpec("t")
    assert TaskSpec("t").payload == b"\xc0"  # msgpack nil
    s = parse_task_spec({"type": "t", "payload": b"\x01", "queue": "q", "priority": -3, "delay": 2,
                         "timeout": 1.5, "retries": 0, "key": "k"})
    assert s == TaskSpec("t", b"\x01", "q", -3, 2.0, None, 1.5, 0, "k")
    assert type(s.delay) is float
    assert parse_task_spec({"type": "t", "run_at": 1e9}).run_at == 1e9
    assert parse_task_spec({"type": "t", "run_at": -5}).run_at == -5.0  # not range-checked: means now


def test_task_spec_nil_means_default_and_unknown_fields_are_ignored() -> None:
    s = parse_task_spec({"type": "t", "queue": None, "priority": None, "delay": None, "timeout": None,
                         "retries": None, "key": None, "colour": "red"})
    assert s == TaskSpec("t")


@pytest.mark.parametrize(("field", "value"), [
    ("type", "x" * 200), ("queue", "q" * 200), ("priority", 2**31 - 1), ("priority", -(2**31)),
    ("delay", 0), ("delay", 10 * 365 * 86400 - 1), ("timeout", 7 * 86400), ("timeout", 0.001),
    ("retries", 0), ("retries", 1000), ("key", "k" * 1000),
])
def test_task_spec_limits_accepted(field: str, value: Any) -> None:
    spec = {"type": "t", field: value}
    assert getattr(parse_task_spec(spec), field) == value


@pytest.mark.parametrize(("entry", "code", "text"), [
    ("not a map", "bad_message", "must be a map"),
    ([["type", "t"]], "bad_message", "must be a map"),
    ({"payload": b""}, "bad_message", "missing field 'type'"),
    ({"type": 5}, "bad_message", "'type' must be str"),
    ({"type": None}, "bad_message", "'type' must be str"),
    ({"type": ""}, "bad_request", "non-empty"),
    ({"type": "x" * 201}, "bad_request", "at most 200"),
    ({"type": "t", "payload": "text"}, "bad_message", "must be bin"),
    ({"type": "t", "payload": [1]}, "bad_message", "must be bin"),
    ({"type": "t", "run_at": float("nan")}, "bad_request", "'run_at'"),
    ({"type": "t", "run_at": float("inf")}, "bad_request", "'run_at'"),
    ({"type": "t", "queue": 7}, "bad_message", "'queue' must be str"),
    ({"type": "t", "queue": ""}, "bad_request", "'queue'"),
    ({"type": "t", "queue": "q" * 201}, "bad_request", "'queue'"),
    ({"type": "t", "priority": True}, "bad_message", "'priority' must be int"),
    ({"type": "t", "priority": 1.0}, "bad_message", "'priority' must be int"),
    ({"type": "t", "priority": 2**40}, "bad_request", "32 bits"),
    ({"type": "t", "priority": 2**31}, "bad_request", "32 bits"),
    ({"type": "t", "priority": -(2**31) - 1}, "bad_request", "32 bits"),
    ({"type": "t", "delay": -1}, "bad_request", "'delay' must be >= 0"),
    ({"type": "t", "delay": -0.001}, "bad_request", "'delay' must be >= 0"),
    ({"type": "t", "delay": 10 * 365 * 86400}, "bad_request", "ten years"),
    ({"type": "t", "delay": float("nan")}, "bad_request", "'delay'"),
    ({"type": "t", "delay": float("inf")}, "bad_request", "'delay'"),
    ({"type": "t", "delay": True}, "bad_message", "'delay' must be int or float"),
    ({"type": "t", "delay": "5"}, "bad_message", "'delay' must be int or float"),
    ({"type": "t", "delay": 1, "run_at": 5}, "bad_request", "not both"),
    ({"type": "t", "delay": 0, "run_at": 5}, "bad_request", "not both"),
    ({"type": "t", "run_at": False}, "bad_message", "'run_at' must be int or float"),
    ({"type": "t", "timeout": 0}, "bad_request", "'timeout' must be > 0"),
    ({"type": "t", "timeout": -1}, "bad_request", "'timeout' must be > 0"),
    ({"type": "t", "timeout": 7 * 86400 + 1}, "bad_request", "7 days"),
    ({"type": "t", "timeout": float("nan")}, "bad_request", "'timeout'"),
    ({"type": "t", "timeout": True}, "bad_message", "'timeout' must be int or float"),
    ({"type": "t", "retries": -1}, "bad_request", "'retries'"),
    ({"type": "t", "retries": 1001}, "bad_request", "'retries'"),
    ({"type": "t", "retries": 1.5}, "bad_message", "'retries' must be int"),
    ({"type": "t", "retries": True}, "bad_message", "'retries' must be int"),
    ({"type": "t", "key": ""}, "bad_request", "'key'"),
    ({"type": "t", "key": "k" * 1001}, "bad_request", "'key'"),
    ({"type": "t", "key": 5}, "bad_message", "'key' must be str"),
])
def test_bad_task_specs(entry: Any, code: str, text: str) -> None:
    with pytest.raises(ProtocolError) as exc_info:
        parse_task_spec(entry)
    assert exc_info.value.code == code and text in str(exc_info.value)


def test_the_fast_path_validates_too() -> None:
    # a spec with only a type (and payload) takes a shortcut: the same rules apply
    for entry, code in (({"type": ""}, "bad_request"), ({"type": "t", "payload": "x"}, "bad_message"),
                        ({"type": 1, "payload": b"\xc0"}, "bad_message")):
        with pytest.raises(ProtocolError) as exc_info:
            parse_task_spec(entry)
        assert exc_info.value.code == code
    assert parse_task_spec({"type": "t", "payload": b"\x01"}) == TaskSpec("t", b"\x01")


def test_a_nil_payload_is_the_default() -> None:
    """Section 0: nil and absent are the same (a nil payload was refused as 'must be bin' before issue 10)."""
    assert parse_task_spec({"type": "t", "payload": None}) == parse_task_spec({"type": "t"}) == TaskSpec("t", b"\xc0")
    assert parse_task_spec({"type": "t", "payload": None, "priority": 2}).payload == b"\xc0"
