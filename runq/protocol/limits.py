"""Rate strings and the messages of the limits and breakers ops, shared by ``Client``, ``SyncClient``, the CLI
and task definitions (docs/limits.md, docs/protocol.md 5.4).

Rules of this file
------------------
* Pure functions, no I/O. The server checks every value again (``runq.app.ops.inputs``); these only build the
  message and read a rate written for people (``"10/s"``, ``"600/m"``, ``"5/2s"``).
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["PERIODS", "breaker_message", "limit_message", "parse_rate"]

#: a rate's unit -> seconds
PERIODS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*/\s*([0-9]*\.?[0-9]*)\s*([a-z]+)\s*$")


def parse_rate(text: str) -> tuple[float, float]:
    """``"10/s"`` -> ``(10.0, 1.0)``: tasks and period in seconds. Units ``s``, ``m``, ``h``, ``d`` (``sec``,
    ``min`` too), with an optional count (``"5/2s"``: 5 per 2 seconds).

    Raises:
        ValueError: not of that form, or a rate or period that is not > 0.
    """
    m = _RATE_RE.match(text)
    if m is None or m.group(3) not in PERIODS:
        raise ValueError(f"rate {text!r}: write tasks per period, as '10/s', '600/m', '5/2s' (units s, m, h, d)")
    rate = float(m.group(1))
    period = (float(m.group(2)) if m.group(2) else 1.0) * PERIODS[m.group(3)]
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(period) and period > 0):
        raise ValueError(f"rate {text!r}: the count and the period must be > 0")
    return rate, period


def limit_message(scope: str, name: str, *, rate: float | str | None = None, period: float | None = None,
                  burst: int | None = None, concurrency: int | None = None, key: str = "") -> dict[str, Any]:
    """The ``set_limit`` message. ``rate`` may be a string (``"10/s"``: then no ``period``)."""
    msg: dict[str, Any] = {"op": "set_limit", "scope": scope, "name": name}
    if key:
        msg["key"] = key
    if isinstance(rate, str):
        if period is not None:
            raise ValueError("give the period in the rate string ('10/m') or as period=, not both")
        rate, period = parse_rate(rate)
    for field, v in (("rate", rate), ("period", period), ("burst", burst), ("concurrency", concurrency)):
        if v is not None:
            msg[field] = v
    return msg


def breaker_message(type: str, *, threshold: float | None = None, window: float | None = None,
                    min_calls: int | None = None, cooldown: float | None = None,
                    probes: int | None = None) -> dict[str, Any]:
    """The ``set_breaker`` message (a setting left None: the server's default)."""
    msg: dict[str, Any] = {"op": "set_breaker", "type": type}
    for field, v in (("threshold", threshold), ("window", window), ("min_calls", min_calls), ("cooldown", cooldown),
                     ("probes", probes)):
        if v is not None:
            msg[field] = v
    return msg
