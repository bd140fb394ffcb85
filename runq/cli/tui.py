"""``runq tui``: the terminal dashboard, live on a server or offline on a database file (docs/tui.md)."""

from __future__ import annotations

import click

from .options import Settings, command, log_options, option, server_options

__all__ = ["tui"]


@command("the terminal dashboard: a server live, or a database file offline")
@server_options
@option("--db", default=None, metavar="FILE", help="open this database file read-only instead (offline, no server)")
@log_options
@click.pass_obj
def tui(settings: Settings, db: str | None) -> int:
    """Open the terminal dashboard: follow a server live (--server), or a database file read-only (--db)."""
    from ..tui import run_tui
    from .login import resolve_token

    return run_tui(server=settings.server, token=resolve_token(settings) if db is None else None, db=db,
                   tls=settings.tls_option)
