"""The HTTP API: Quart-Trio on Hypercorn, inside the server's trio nursery.

``serve_http(server)`` is started by ``Server.serve`` when ``ServerConfig.http_port``
is not None. It reads the live core directly (no second process, no copy of state):
routes in ``routes``, JSON checks in ``encoding``, error bodies in ``errors``, live
streams in ``events``, ``/metrics`` and statistics in ``metrics``, the OpenAPI
document and ``/docs`` in ``openapi``. docs/http.md describes the API.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

from .events import StreamHub
from .metrics import Meter
from .openapi import SPEC, docs_html, spec_routes
from .routes import create_app

if TYPE_CHECKING:
    from ..server import Server

__all__ = ["SPEC", "Meter", "StreamHub", "create_app", "docs_html", "serve_http", "spec_routes"]

log = logging.getLogger("runq.http")

#: Seconds open requests get to finish once the server stops (event streams end at once).
GRACEFUL_TIMEOUT = 2.0


def hypercorn_config(host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None,
                     handshake_timeout: float = 5.0) -> Config:
    """Hypercorn settings for the API on ``host:port`` (no access log; its error log is ``runq.http``); with
    ``tls_cert`` and ``tls_key``, HTTPS only, each TLS handshake bounded by ``handshake_timeout`` seconds."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log  # Hypercorn's own lines follow runq's logging setup
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.keep_alive_timeout = 75.0
    if tls_cert is not None and tls_key is not None:  # (ServerConfig.tls_context checked the files before binding)
        config.certfile = tls_cert
        config.keyfile = tls_key
        config.ssl_handshake_timeout = handshake_timeout  # (Hypercorn's 60 s: a silent peer held a slot that long)
    return config


class _OneConnectionTCPServer(TCPServer):
    """Hypercorn's connection handler, with an error on one connection ending that connection only.

    Hypercorn 0.18 lets h11's ``LocalProtocolError`` escape a connection when a WebSocket
    upgrade request is followed at once by more bytes on the same connection (its WebSocket
    stream answers them with a second HTTP response). Escaping ``trio.serve_listeners``, that
    ended the whole server, TCP port included, at the request of any client.
    """

    async def run(self) -> None:
        try:
            await super().run()
        except Exception as exc:  # noqa: BLE001 - any error of one connection (Cancelled is a BaseException)
            log.warning("HTTP connection closed after an error in Hypercorn: %s", _first_line(exc))

    async def _close(self) -> None:
        # Shielded: Hypercorn's close awaits send_eof (a checkpoint) before aclose, so a close made while the
        # connection's tasks are being cancelled (a response given before the request's body was read) raised
        # Cancelled before the socket was closed, and the client waited for ever on an open connection.
        with trio.CancelScope(shield=True):
            await super()._close()


def _first_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {str(exc)[:200]}"


# worker_serve (called by hypercorn.trio.serve) builds its connection handlers from this module attribute
hypercorn_run.TCPServer = _OneConnectionTCPServer  # type: ignore[attr-defined]


async def serve_http(server: Server, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the HTTP API for ``server`` until it stops; report the bound port through ``task_status``."""
    port = server.config.http_port
    assert port is not None
    meter = Meter(server)
    hub = StreamHub(server)
    app = create_app(server, meter, hub)
    cfg = server.config
    config = hypercorn_config(cfg.host, port, cfg.tls_cert, cfg.tls_key, cfg.hello_timeout)

    async def stopping() -> None:
        await server.stopping.wait()
        hub.close_all()  # open event streams end now instead of holding the shutdown

    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(serve, app, config, shutdown_trigger=stopping))
            bound = int(binds[0].rsplit(":", 1)[1])
            nursery.start_soon(_sampler, meter, server.stopping)
            task_status.started(bound)
            # Hypercorn returns once the server stops and its connections are done (GRACEFUL_TIMEOUT at most)
    finally:
        hub.detach()
        meter.detach()
        server.http_idle.set()


async def _sampler(meter: Meter, stopping: trio.Event) -> None:
    """Sample the queues' counts every second (for rates) until the server stops."""
    while not stopping.is_set():
        with trio.move_on_after(1.0):
            await stopping.wait()
        meter.sample()

