"""The runq dashboard (``runq tui``): a Textual app over a live server or a database file.

It talks to a server only through the public client SDK (``runq.protocol.client``)
and reads a database file with its own read-only SQL: it never imports ``runq.app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .app import RefreshStats, RunqDashboard
from .live import LiveSource
from .model import DashboardState
from .offline import OfflineError, OfflineSource
from .source import NotConnected, ReadOnly, Source

if TYPE_CHECKING:
    from ..protocol.tls import TLSOption

__all__ = [
    "DashboardState",
    "LiveSource",
    "NotConnected",
    "OfflineError",
    "OfflineSource",
    "ReadOnly",
    "RefreshStats",
    "RunqDashboard",
    "Source",
    "run_tui",
]


def run_tui(*, server: str | None = None, token: str | None = None, db: str | None = None,
            tls: TLSOption = None) -> int:
    """Run the dashboard in this terminal until the user quits; return an exit code.

    Args:
        server: ``HOST:PORT`` of a running server (live mode).
        token: the server's shared secret.
        db: a database file to open read-only instead (offline mode).
        tls: TLS to the server, as ``Client``'s (docs/tls.md).
    """
    source: Source
    if db is not None:
        OfflineSource.check(db)
        source = OfflineSource(db)
    else:
        source = LiveSource(server or "127.0.0.1:7700", token=token, tls=tls)
    RunqDashboard(source).run()
    return 0
