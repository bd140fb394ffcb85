"""JSON in and out: request bodies and query parameters checked, tasks and events made JSON.

Task payloads, results and progress values travel as msgpack bytes inside runq (the
SDK encodes them, the server never looks inside). Over HTTP they are JSON values: a
request's ``data`` is msgpack-encoded with the SDK's own ``encode_value`` (so a Python
worker receives exactly what a ``Client.enqueue`` would have sent), and ``result`` /
``progress`` are decoded for the answer. A value JSON cannot carry (msgpack bytes, or
bytes that are not msgpack at all) is given as ``{"base64": "..."}``.

Input checks happen before anything reaches the core: a body must be strict JSON
(no NaN or Infinity), every integer must fit in 64 bits and every string must be
encodable as UTF-8 (a lone surrogate would fail the database commit of a whole group).
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any

import msgpack

from ...protocol.errors import ProtocolError
from ...protocol.messages import ScheduleSpec, TaskSpec, parse_schedule, parse_task_spec
from ...protocol.values import decode_value, encode_value
from .errors import ApiError

__all__ = [
    "ALIASES",
    "MAX_DEPTH",
    "MAX_ID",
    "SCHEDULE_FIELDS",
    "SPEC_FIELDS",
    "check_id",
    "dumps",
    "event_json",
    "jsonable",
    "parse_json",
    "pick",
    "query_float",
    "query_int",
    "query_set",
    "query_str",
    "schedule_from_json",
    "schedule_json",
    "spec_from_json",
    "task_json",
]

MAX_ID = 2**63 - 1
#: Deepest nesting of arrays and objects in a request body, and in a value given as JSON in an answer
#: (a deeper result or progress value from a worker is given as base64).
MAX_DEPTH = 128
_MIN_INT = -(2**63)
#: The fields of a task in a POST body (``payload``, as any JSON value; ``data`` is its alias, the seed's REST
#: name: docs/http.md).
SPEC_FIELDS = ("type", "payload", "data", "queue", "priority", "delay", "run_at", "timeout", "retries", "key",
               "requires", "retry_policy", "coalesce_key", "coalesce", "limit_key")
#: The seed's REST names that the HTTP API accepts beside the canonical ones (canonical -> alias).
ALIASES = {"payload": "data", "state": "status", "attempt": "attempts"}
_SPEC_FIELD_SET = frozenset(SPEC_FIELDS)
_NIL = b"\xc0"
_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_NUMBER_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
#: A filter of queue or type names: 1 to 200 characters each, comma-separated (OpenAPI ``pattern``).
NAMES_PATTERN = "^[^,]{1,200}(,[^,]{1,200})*$"
#: A filter of task ids, comma-separated.
IDS_PATTERN = "^[1-9][0-9]{0,17}(,[1-9][0-9]{0,17})*$"
NAMES_RE = re.compile(NAMES_PATTERN.replace("$", "\\Z"))
IDS_RE = re.compile(IDS_PATTERN.replace("$", "\\Z"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes | str, ints: bool = True) -> Any:
    """Parse a request body as strict JSON and check its numbers and strings.

    Args:
        ints: refuse integers beyond 64 bits anywhere (False: the caller checks them, see ``spec_from_json``).

    Raises:
        ApiError: ``bad_request`` naming what is wrong.
    """
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError("bad_request", f"the body is not valid JSON: {str(exc)[:200]}") from None
    _check(value, ints)
    return value


def _check(value: Any, ints: bool = True) -> None:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            _check_str(v)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if ints and not _MIN_INT <= v <= MAX_ID:
                raise ApiError("bad_request", "integers must fit in 64 bits")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ApiError("bad_request", "numbers must be finite")
        elif isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise ApiError("bad_request", f"arrays and objects may be nested at most {MAX_DEPTH} levels deep")
            if isinstance(v, dict):
                for k, item in v.items():
                    _check_str(k)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in v)


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError("bad_request", "strings must be valid Unicode (no lone surrogates)") from None


def spec_from_json(obj: Any, where: str = "task") -> TaskSpec:
    """Validate one task of a POST body into the ``TaskSpec`` the TCP protocol uses too.

    Raises:
        ApiError: ``bad_request`` for a body that is not an object, has unknown fields, or a field of the
            wrong type or out of range (the validation shared with the TCP protocol).
    """
    if not isinstance(obj, dict):
        raise ApiError("bad_request", f"{where} must be a JSON object")
    unknown = set(obj) - _SPEC_FIELD_SET
    if unknown:
        raise ApiError("bad_request", f"{where}: unknown field(s) {sorted(unknown)}; allowed: {list(SPEC_FIELDS)}")
    if "type" not in obj:
        raise ApiError("bad_request", f"{where}: missing field 'type'")
    nulls = sorted(k for k, v in obj.items() if v is None and k not in ("payload", "data"))
    if nulls:
        raise ApiError("bad_request", f"{where}: {nulls} must not be null (leave a field out for its default)")
    rp = obj.get("retry_policy")
    if isinstance(rp, dict) and any(v is None for v in rp.values()):
        raise ApiError("bad_request", f"{where}: the fields of 'retry_policy' must not be null (leave one out)")
    d = {k: v for k, v in obj.items() if k not in ("payload", "data")}
    for v in d.values():
        _check(v)
    value = pick(obj, "payload", "data", where)
    d["payload"] = _encode_data(value, where) if "payload" in obj or "data" in obj else _NIL
    try:
        return parse_task_spec(d)
    except ProtocolError as exc:  # the TCP wording names the message ("enqueue: ..."): name the task instead
        text = str(exc).removeprefix("enqueue: ").removeprefix("task: ")
        raise ApiError("bad_request", f"{where}: {text}") from exc


def pick(obj: Any, name: str, alias: str, where: str) -> Any:
    """``obj[name]``, else ``obj[alias]`` (None when neither is there).

    Raises:
        ApiError: ``bad_request`` when both are there with different values.
    """
    if alias in obj:
        if name in obj and _same(obj[name]) != _same(obj[alias]):
            raise ApiError("bad_request", f"{where}: {name!r} and its alias {alias!r} are both given, with "
                                          "different values: give one")
        return obj[alias]
    return obj.get(name)


def _same(value: Any) -> str:
    """A JSON value as a text that tells apart what ``==`` does not (``1``, ``1.0`` and ``true``)."""
    return json.dumps(value, sort_keys=True)


def _encode_data(data: Any, where: str) -> bytes:
    """msgpack of a task's ``payload``; integers beyond 64 bits become floats (as JavaScript reads JSON)."""
    try:
        return encode_value(data)
    except (OverflowError, TypeError):  # msgpack: an int beyond 64 bits
        try:
            return encode_value(_floats(data))
        except (OverflowError, TypeError):
            raise ApiError("bad_request", f"{where}: a number in the payload is too large") from None


def _floats(v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and not _MIN_INT <= v <= 2**64 - 1:
        return float(v)
    if isinstance(v, list):
        return [_floats(x) for x in v]
    if isinstance(v, dict):
        return {k: _floats(x) for k, x in v.items()}
    return v


def jsonable(value: Any, depth: int = 1) -> Any:
    """``value`` with everything JSON cannot carry replaced (bytes as base64, NaN as null).

    Raises:
        ValueError: arrays and maps nested deeper than ``MAX_DEPTH`` (the caller gives the bytes as base64).
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (dict, list, tuple)) and depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(jsonable(k, depth + 1)): jsonable(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "base64": base64.b64encode(value.data).decode("ascii")}
    return str(value)


def _value(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return jsonable(decode_value(data))
    except (ValueError, TypeError, msgpack.UnpackException):  # not msgpack (another language may store
        # anything), or nested too deep to answer with
        return {"base64": base64.b64encode(data).decode("ascii")}


def task_json(t: dict[str, Any]) -> dict[str, Any]:
    """The HTTP view of a task map (``Task.as_dict()``): the canonical names, and the seed's REST names
    ``data``, ``status``, ``attempts`` as aliases (docs/http.md)."""
    payload = _value(t["payload"])
    return {
        "id": t["id"], "type": t["type"], "queue": t["queue"], "state": t["state"], "status": t["state"],
        "priority": t["priority"], "payload": payload, "data": payload, "result": _value(t["result"]),
        "error": t["error"], "progress": _value(t["progress"]), "attempt": t["attempt"], "attempts": t["attempt"],
        "max_retries": t["max_retries"], "timeout": t["timeout"], "key": t["key"], "worker": t["worker"],
        "created_at": t["created_at"], "run_at": t["run_at"], "started_at": t["started_at"],
        "finished_at": t["finished_at"], "requires": t.get("requires"), "retry_policy": t.get("retry_policy"),
        "coalesce_key": t.get("coalesce_key"), "limit_key": t.get("limit_key"), "owner": t.get("owner"),
    }


def event_json(msg: dict[str, Any]) -> dict[str, Any]:
    """A live event as JSON (the server shares one map between subscribers: copied, not changed)."""
    out = dict(msg)
    for f in ("result", "progress"):
        if f in out:
            out[f] = _value(out[f])
    return out


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------- path and query
def check_id(n: int) -> int:
    """A task id from the URL path (the route only matches digits).

    Raises:
        ApiError: ``not_found`` when no task can have it.
    """
    if not 1 <= n <= MAX_ID:
        raise ApiError("not_found", f"no task {n}")
    return n


def query_str(args: Any, name: str, max_len: int = 200) -> str | None:
    """A string query parameter (``None`` when absent; an empty one is refused)."""
    v = args.get(name)
    if v is None:
        return None
    if v == "":
        raise ApiError("bad_request", f"query parameter {name!r} must not be empty")
    if len(v) > max_len:
        raise ApiError("bad_request", f"query parameter {name!r} is longer than {max_len} characters")
    _check_str(v)
    return str(v)


def query_int(args: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter within ``lo..hi`` (JSON's integer syntax)."""
    v = query_str(args, name, 30)
    if v is None:
        return default
    if not _INT_RE.match(v):
        raise ApiError("bad_request", f"query parameter {name!r} must be an integer")
    n = int(v)
    if not lo <= n <= hi:
        raise ApiError("bad_request", f"query parameter {name!r} must be between {lo} and {hi}")
    return n


def query_float(args: Any, name: str, lo: float, hi: float) -> float | None:
    """A number query parameter within ``lo..hi`` (JSON's number syntax)."""
    v = query_str(args, name, 30)
    if v is None:
        return None
    if not _NUMBER_RE.match(v):
        raise ApiError("bad_request", f"query parameter {name!r} must be a number")
    x = float(v)
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ApiError("bad_request", f"query parameter {name!r} must be between {lo:g} and {hi:g}")
    return x


def query_set(args: Any, name: str, pattern: re.Pattern[str] = NAMES_RE) -> frozenset[str] | None:
    """A list query parameter: comma-separated, the whole value matching ``pattern``."""
    given = args.getlist(name)
    if not given:
        return None
    for v in given:
        if not pattern.match(v):
            raise ApiError("bad_request", f"query parameter {name!r} must be a comma-separated list "
                                          f"(matching {pattern.pattern})")
        _check_str(v)
    return frozenset(p for v in given for p in v.split(","))


#: The fields of a ``PUT /api/schedules/{name}`` body (the name is the path's; ``data`` is the tasks' argument).
SCHEDULE_FIELDS = ("type", "data", "queue", "priority", "timeout", "retries", "cron", "tz", "every", "missed",
                   "max_missed", "paused")
_SCHEDULE_FIELD_SET = frozenset(SCHEDULE_FIELDS)


def schedule_from_json(name: str, obj: Any) -> ScheduleSpec:
    """Decode a schedule's JSON body (its fields' types; the operations layer checks the values).

    Raises:
        ApiError: ``bad_request`` for a body that is not an object, has unknown or null fields, or a field of
            the wrong type.
    """
    if not isinstance(obj, dict):
        raise ApiError("bad_request", "the body must be a JSON object (a schedule)")
    unknown = set(obj) - _SCHEDULE_FIELD_SET
    if unknown:
        raise ApiError("bad_request", f"schedule: unknown field(s) {sorted(unknown)}; allowed: {list(SCHEDULE_FIELDS)}")
    nulls = sorted(k for k, v in obj.items() if v is None and k != "data")
    if nulls:
        raise ApiError("bad_request", f"schedule: {nulls} must not be null (leave a field out for its default)")
    d = {k: v for k, v in obj.items() if k != "data"}
    for v in d.values():
        _check(v)
    d["name"] = name
    d["payload"] = _encode_data(obj["data"], "schedule") if "data" in obj else _NIL
    try:
        return parse_schedule(d, "schedule")
    except ProtocolError as exc:
        raise ApiError("bad_request", str(exc)) from exc


def schedule_json(s: dict[str, Any]) -> dict[str, Any]:
    """The HTTP view of a schedule map (``Schedule.as_dict()``): the payload as ``data``."""
    out = {k: v for k, v in s.items() if k != "payload"}
    out["data"] = _value(s["payload"])
    return out
