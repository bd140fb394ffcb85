"""``runq serve`` (the server) and ``runq demo`` (a server, workers and sample tasks in one command)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from .options import CommandError, Settings, command, log_options, option, token_option

if TYPE_CHECKING:
    from ..app.server import Server

__all__ = ["DEFAULT_HTTP_PORT", "demo", "serve"]

DEFAULT_HTTP_PORT = 7701


#: The cyclic GC's thresholds in ``runq serve`` (Python's default: 700, 10, 10). The server holds every live task
#: as a tracked object, and makes several more per task it handles (its rows and events, which are named tuples
#: and so never untracked); with the default first threshold a collection runs every 700 of them, and each full
#: collection walks every task that arrived since the start. 50,000 makes the young collections 70 times rarer
#: (the garbage they find waits a little longer: a few MB at most); the older generations keep Python's ratios.
#: Measured: the server's CPU per task, ``python -m bench.throughput --only enqueue_batch --tasks 200000``,
#: 8.55-9.05 us with the default against 6.1-7.55 us with these (bench/README.md, issue 9).
GC_THRESHOLDS = (50_000, 20, 10)


@command("run the server (TCP protocol, SQLite database, HTTP API)")
@option("--db", envvar="RUNQ_DB", default="runq.db", metavar="FILE|URL",
        help="the SQLite database file, or a postgresql://user@host/dbname URL (pip install 'runq[postgres]')")
@option("--host", default="127.0.0.1", help="address to listen on (beyond loopback: --token required)")
@option("--port", type=int, default=7700, help="TCP port of the runq protocol (0 picks a free one)")
@option("--http-port", type=int, envvar="RUNQ_HTTP_PORT", default=None,
        show_default=f"{DEFAULT_HTTP_PORT}; a free one when --port is 0",
        help="HTTP API port (0 turns the HTTP API off)")
@token_option("shared secret every client and worker must send; required to listen beyond loopback")
@option("--synchronous", type=click.Choice(["NORMAL", "FULL"], case_sensitive=False), default="NORMAL",
        help="NORMAL survives a process crash, FULL survives power loss")
@option("--lease-timeout", type=float, default=10.0, metavar="SECONDS",
        help="seconds of worker silence before its tasks return")
@option("--backoff-base", type=click.FloatRange(0, 315_360_000, max_open=True), default=1.0, metavar="SECONDS",
        help="the default retry policy: seconds before the first retry, doubling per retry (docs/tasks.md)")
@option("--backoff-max", type=click.FloatRange(0, 315_360_000, min_open=True, max_open=True), default=3600.0,
        metavar="SECONDS", help="the default retry policy: the longest delay before a retry")
@option("--jitter", type=click.FloatRange(0, 1), default=0.25,
        help="the default retry policy: each delay times a random factor in [1 - jitter, 1 + jitter]")
@option("--retention", type=float, default=7 * 86400, metavar="SECONDS", show_default="7 days",
        help="seconds finished tasks are kept")
@option("--max-subscribers", type=int, default=256,
        help="live event streams (TCP subscribe and HTTP) served at once")
@option("--keys-file", default=None, metavar="FILE", show_default="a key kept in the database",
        help="signing keys of login access tokens, one per line, the first signs (docs/security.md)")
@option("--port-file", default=None, metavar="FILE",
        help="write the bound TCP port to this file once serving (or waiting as a standby)")
@option("--tls-cert", envvar="RUNQ_TLS_CERT", default=None, metavar="FILE", type=click.Path(dir_okay=False),
        help="serve TLS (TCP protocol and HTTP API) with this certificate (PEM, with its chain); needs --tls-key")
@option("--tls-key", envvar="RUNQ_TLS_KEY", default=None, metavar="FILE", type=click.Path(dir_okay=False),
        help="the private key of --tls-cert (PEM)")
@option("--lease", type=float, envvar="RUNQ_LEASE", default=5.0, metavar="SECONDS",
        help="PostgreSQL: the writer lease; a standby takes over at most this long after the active server's "
             "last renewal (1 to 3600)")
@option("--reclaim", type=float, default=None, metavar="SECONDS",
        show_default="--lease-timeout on PostgreSQL, 0 on SQLite",
        help="seconds a task found running at a start (a failover) waits for its worker to take it back and "
             "report it, before it runs again")
@option("--advertise", envvar="RUNQ_ADVERTISE", default=None, metavar="HOST:PORT",
        show_default="the host and port listened on",
        help="PostgreSQL: where clients reach this server, written with the lease (a standby names it)")
@log_options
@click.pass_obj
def serve(settings: Settings, db: str, host: str, port: int, http_port: int | None, synchronous: str,
          lease_timeout: float, backoff_base: float, backoff_max: float, jitter: float, retention: float,
          max_subscribers: int, keys_file: str | None, port_file: str | None, tls_cert: str | None,
          tls_key: str | None, lease: float, reclaim: float | None, advertise: str | None) -> int:
    """Run the server: the runq TCP protocol, the SQLite database and the HTTP API, in one process.

    SIGTERM or SIGINT stops it gracefully (what was acknowledged is committed).

    On PostgreSQL, a server started while another one holds the database's lease waits as a standby and takes
    over when that lease expires; a server that loses its lease steps down and exits with status 1
    (docs/operations.md, "Failover").
    """
    if backoff_max < backoff_base:
        raise click.UsageError(f"--backoff-max ({backoff_max:g}) must not be below --backoff-base ({backoff_base:g})")
    import trio

    from ..app.core import CoreConfig
    from ..app.server import Server, ServerConfig
    from ..app.store import POSTGRES_PREFIXES, describe_db

    if reclaim is None:
        reclaim = lease_timeout if db.startswith(POSTGRES_PREFIXES) else 0.0
    if not 0 <= reclaim <= 86400:
        raise click.BadParameter(f"must be between 0 and 86400 seconds, not {reclaim:g}", param_hint="--reclaim")
    cfg = ServerConfig(db=db, host=host, port=port, http_port=_http_port(http_port, port), token=settings.token,
                       synchronous=synchronous.upper(), retention=retention, max_subscribers=max_subscribers,
                       tls_cert=tls_cert, tls_key=tls_key, keys_file=keys_file, lease=lease, advertise=advertise,
                       core=CoreConfig(lease_timeout=lease_timeout, backoff_base=backoff_base,
                                       backoff_max=backoff_max, jitter=jitter, reclaim=reclaim))
    server = Server(cfg)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
                bound = await nursery.start(server.serve)
                # Everything alive now (imports, the recovered tasks) lives as long as the process: keep it out
                # of the cyclic GC's full collections, which otherwise walk it again and again.
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)
                # The SQLite writer thread releases the GIL inside each statement; with the default 5 ms switch
                # interval it then waits up to 5 ms for the busy loop thread to hand it back. 1 ms lets the two
                # threads overlap (bench.throughput enqueue_batch: server CPU 91% -> 100%, ~150k -> ~161k/s).
                sys.setswitchinterval(0.001)
                if port_file:
                    tmp = port_file + ".tmp"
                    await trio.Path(tmp).write_text(str(bound))
                    os.replace(tmp, port_file)
                http = (f", HTTP API on {_http_url(cfg.host, server.http_port, server.tls is not None)}"
                        if server.http_port is not None else "")
                tls = " with TLS" if server.tls is not None else ""
                if server.standby:
                    print(f"runq standby on {cfg.host}:{bound}{tls}{http} (database {describe_db(cfg.db)}): the "
                          f"active server is {server.active_server()}; taking over when its lease expires",
                          file=sys.stderr, flush=True)
                else:
                    print(f"runq serving on {cfg.host}:{bound}{tls}{http} (database {describe_db(cfg.db)})",
                          file=sys.stderr, flush=True)
                async for sig in sigs:
                    logging.getLogger("runq.server").info("signal %d: stopping", sig)
                    server.stopping.set()
                    break

    try:
        trio.run(run)
    except BaseException as exc:
        clash = _port_clash(exc, server, settings.token)
        if clash is not None:
            raise CommandError(clash) from None
        raise
    return 0


def _http_port(http_port: int | None, port: int) -> int | None:
    """The HTTP port to ask the server for (``ServerConfig.http_port``: 0 picks a free one, None is off)."""
    if http_port is None:
        if port == 0:
            return 0  # a throwaway TCP port (tests, benchmarks, the demo): a throwaway HTTP port too, no clash
        http_port = DEFAULT_HTTP_PORT
    return http_port or None


def _http_url(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _port_clash(exc: BaseException, server: Server, token: str | None) -> str | None:
    """The line for ``exc`` when it is a port already in use: which port, who holds it, what to do."""
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if not (isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE):
        return None
    cfg = server.config
    if server.port is None:  # the TCP listener is opened first: it is the one that failed
        return (f"port {cfg.port} on {cfg.host} is in use: {_who_listens(cfg.host, cfg.port, token)}; "
                f"stop it, or choose another port with --port")
    return (f"HTTP port {cfg.http_port} on {cfg.host} is in use: {_who_listens(cfg.host, cfg.http_port or 0, token)}; "
            f"choose another with --http-port (0 turns the HTTP API off)")


def _who_listens(host: str, port: int, token: str | None) -> str:
    """What answers on ``host:port``: another runq server, an HTTP server (another runq's HTTP API?)..."""
    from ..protocol.address import format_address
    from ..protocol.errors import NotRunqServer, RemoteError, RunqError
    from ..protocol.sync_client import SyncClient

    near = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        with SyncClient(format_address(near, port), token=token, connect_timeout=1.0, retry_for=0, tls=False):
            return "another runq server runs there"
    except RemoteError:  # (a wrong token, a server shutting down...: it speaks runq all the same)
        return "another runq server runs there"
    except NotRunqServer as exc:
        if exc.looks_like == "http":
            return "an HTTP server listens there (the HTTP API of another runq server?)"
        return "another program listens there"
    except (OSError, RunqError):
        return "another program holds it"


# ---------------------------------------------------------------------- demo
@command("a server, local workers and sample tasks, shown flowing")
@option("--db", default=None, metavar="FILE", show_default="a new temporary file", help="database file")
@option("--port", type=int, default=0, help="TCP port of the demo's server (0 picks a free one)")
@option("--workers", type=click.IntRange(min=1), default=2, help="worker processes")
@option("--tasks", type=click.IntRange(min=0), default=40, help="how many word_count/calculate_statistics tasks")
@option("--keep", is_flag=True, help="keep running after the demo tasks finished (Ctrl-C stops)")
@option("--http-port", type=int, default=DEFAULT_HTTP_PORT,
        help="HTTP API port of the demo's server (a free one if taken; 0 turns it off)")
@option("--no-tui", is_flag=True,
        help="print the events instead of opening the dashboard (the default when stdout is not a terminal)")
@log_options
def demo(db: str | None, port: int, workers: int, tasks: int, keep: bool, http_port: int, no_tui: bool) -> int:
    """Start a server, local workers and sample tasks, and show them flowing: in the dashboard on a
    terminal (q quits), else as a log of events."""
    from ..demo import run_demo

    if http_port:
        free = http_port if _port_free(http_port) else _port_free(0)
        os.environ["RUNQ_HTTP_PORT"] = str(free)  # read by the demo's `runq serve`
        print(f"runq demo: HTTP API on http://127.0.0.1:{free}/api/stats, docs on http://127.0.0.1:{free}/docs",
              flush=True)
    else:
        os.environ["RUNQ_HTTP_PORT"] = "0"
    tui = not no_tui and sys.stdout.isatty() and sys.stdin.isatty()
    return run_demo(db=db, port=port, workers=workers, tasks=tasks, keep=keep, tui=tui)


def _port_free(port: int) -> int:
    """Bind 127.0.0.1:``port`` for a moment; return the port bound (0 when ``port`` is taken)."""
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return 0
        return int(s.getsockname()[1])
