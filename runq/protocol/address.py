"""Where the SDK connects: server addresses and the token, from arguments or the environment.

Every SDK entry point (``Client``, ``SyncClient``, ``Worker``) and the CLI resolve their defaults here, so
``RUNQ_SERVER`` and ``RUNQ_TOKEN`` mean the same everywhere. ``RUNQ_SERVER`` may name several servers,
comma-separated (``host1:7700,host2:7700``): a client tries them in order and follows the one that answers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = ["DEFAULT_ADDRESS", "format_address", "parse_address", "server_addresses", "server_token"]

DEFAULT_ADDRESS = "127.0.0.1:7700"
DEFAULT_PORT = 7700


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); a bare host gets port 7700.

    Raises:
        ValueError: the port is not a number from 0 to 65535, or the address is a URL.
    """
    address = address.strip()
    if "://" in address:
        scheme = address.split("://", 1)[0]
        hint = " (that is the HTTP API; the runq TCP port is 7700 by default)" if scheme.startswith("http") else ""
        raise ValueError(f"bad server address {address!r}: give HOST:PORT, not a URL{hint}")
    if address.count(":") > 1 and not address.startswith("["):  # a bare IPv6 address (its port needs [...])
        return address, DEFAULT_PORT
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            host, port_text = address, ""
        host = host or "127.0.0.1"
    if not port_text:
        return host, DEFAULT_PORT
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"bad server address {address!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"bad server address {address!r}: the port must be between 0 and 65535")
    return host, port


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_addresses(spec: str | Sequence[str] | None = None) -> list[tuple[str, int]]:
    """The servers to try, in order.

    Args:
        spec: ``HOST:PORT``, several of them comma-separated, or a sequence of them; ``None`` reads
            ``RUNQ_SERVER`` (default ``127.0.0.1:7700``).

    Raises:
        ValueError: no address, or a malformed one.
    """
    if spec is None:
        spec = os.environ.get("RUNQ_SERVER") or DEFAULT_ADDRESS
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    out = [parse_address(p) for p in parts if p.strip()]
    if not out:
        raise ValueError(f"no server address in {spec!r}")
    return out


def server_token(token: str | None = None) -> str | None:
    """``token``, or ``RUNQ_TOKEN`` when it is ``None`` (an empty string means no token)."""
    if token is None:
        token = os.environ.get("RUNQ_TOKEN")
    return token or None
