"""Application values on the wire: payloads, results and progress are msgpack, encoded by the SDK.

The server never decodes them; a client in another language may put any msgpack value there.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import msgpack

__all__ = ["decode_task", "decode_value", "encode_value", "model_kind"]


def encode_value(value: Any) -> bytes:
    """msgpack-encode an application value (payload, result, progress)."""
    data: bytes = msgpack.packb(value, use_bin_type=True, datetime=False, default=_default)
    return data


def _default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, datetime):
        return obj.isoformat()
    kind = type(obj)
    model = model_kind(kind)
    if model == "pydantic":  # its JSON form
        return obj.model_dump(mode="json")
    if model == "msgspec":
        import msgspec

        return msgspec.to_builtins(obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)  # type: ignore[arg-type]
    raise TypeError(f"cannot encode {kind.__name__} in a task payload; use msgpack-able values "
                    "(maps, arrays, str, bytes, numbers, bool, None; dataclasses and pydantic or msgspec models)")


def model_kind(cls: type) -> str | None:
    """``"pydantic"`` for a pydantic model class, ``"msgspec"`` for a msgspec ``Struct``, else ``None`` (found
    without importing either library: both are optional)."""
    for base in cls.__mro__:
        if base.__name__ == "BaseModel" and base.__module__.startswith("pydantic"):
            return "pydantic"
        if base.__name__ == "Struct" and base.__module__.startswith("msgspec"):
            return "msgspec"
    return None


def decode_value(data: bytes | None) -> Any:
    """Decode an application value (``None`` stays ``None``)."""
    if data is None:
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def decode_task(task: dict[str, Any]) -> dict[str, Any]:
    """Decode a task map's msgpack-encoded fields into Python values (in place)."""
    for f in ("payload", "result", "progress"):
        v = task.get(f)
        if isinstance(v, bytes):
            try:
                task[f] = decode_value(v)
            except ValueError:  # not msgpack (a client in another language wrote raw bytes): left as bytes
                pass
    return task
