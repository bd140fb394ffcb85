"""Settings of ``runq serve`` and the server's clock."""

from __future__ import annotations

import ipaddress
import ssl
import time
from dataclasses import dataclass, field

import trio

from ...protocol.address import parse_address
from ...protocol.frames import DEFAULT_MAX_FRAME, max_reply
from ..core import CoreConfig
from ..errors import ConfigError
from ..store.lease import DEFAULT_LEASE, LeaseTiming

#: The range of ``max_frame``: a small hello fits the smallest; with the largest, ``max_reply`` (4 x max_frame +
#: 64 KiB) is still under 4 GiB, the most a frame's length can say.
MIN_FRAME, MAX_FRAME = 256, 2**30 - 65536

__all__ = ["MAX_FRAME", "MIN_FRAME", "Clock", "ConfigError", "ServerConfig", "is_loopback"]


class Clock:
    """Wall-clock time that advances with trio's clock (so MockClock drives it in tests).

    Args:
        wall: the wall time at the moment the clock is created (default ``time.time()``).
    """

    def __init__(self, wall: float | None = None) -> None:
        self._wall0 = time.time() if wall is None else wall
        self._trio0 = trio.current_time()

    def __call__(self) -> float:
        return self._wall0 + (trio.current_time() - self._trio0)


@dataclass
class ServerConfig:
    """Settings of ``runq serve``.

    Attributes:
        db: SQLite file path.
        host: address to listen on (TCP protocol and HTTP); anything but loopback requires ``token`` (checked
            by ``check``, before anything is bound).
        port: TCP protocol port (0 picks a free one).
        http_port: HTTP API port (0 picks a free one; None: no HTTP API).
        token: shared secret every client and worker must present (HTTP: a Bearer token).
        synchronous: ``NORMAL`` or ``FULL``.
        max_frame: largest accepted frame body, bytes.
        hello_timeout: seconds a new connection has to send hello; with TLS, also the seconds it has to
            complete the TLS handshake (TCP protocol and HTTP API), before that.
        retention: seconds finished tasks are kept before pruning.
        prune_interval: seconds between prune passes.
        subscriber_backlog: bytes (TCP) or events (HTTP streams) queued for a live-event subscriber
            before its events are dropped.
        max_subscribers: live-event subscribers (TCP ``subscribe`` and HTTP streams together) served at
            once; one more is refused with ``busy``. Each may buffer up to its backlog: this bounds memory.
        idempotency_window: seconds the answer to an enqueue is kept by its idempotency token (memory and
            database), so that the same request sent again (after a lost acknowledgement, a server restart)
            is answered with the first ids instead of enqueued twice (docs/clients.md). Must be longer than
            the clients' ``retry_for``.
        inline_commit: with synchronous=NORMAL, commit a small batch in the trio thread when the writer
            thread is idle (two thread wake-ups fewer per lone request; server.py says more).
        tls_cert: a PEM file holding the server's TLS certificate (and the chain up to the CA): the TCP
            protocol and the HTTP API then speak TLS only (docs/tls.md). Requires ``tls_key``.
        tls_key: the PEM file of the certificate's private key (unencrypted; it may be ``tls_cert`` itself).
        keys_file: the access-token signing keys (docs/security.md: one per line, the first signs); None: a
            key generated on first start and kept in the database.
        access_ttl: seconds an access token of an HTTP login is valid.
        refresh_ttl: seconds a refresh token of an HTTP login is valid (revocable at any time).
        principals_poll: seconds between two looks at whether users or API tokens changed in the database
            (``runq users`` / ``runq tokens`` change them from another process).
        lease: seconds of the writer lease on PostgreSQL (runq/app/store/lease.py): a standby takes over at
            most this long after the active server's last renewal (``--lease``, ``RUNQ_LEASE``).
        advertise: ``HOST:PORT`` clients and workers reach this server at, written with the lease so that a
            standby names the active server (default: the host and port it listens on).
        core: rules of the queue (leases, retries, backoff).
    """

    db: str = "runq.db"
    host: str = "127.0.0.1"
    port: int = 7700
    http_port: int | None = None
    token: str | None = None
    synchronous: str = "NORMAL"
    max_frame: int = DEFAULT_MAX_FRAME
    hello_timeout: float = 5.0
    retention: float = 7 * 86400.0
    prune_interval: float = 3600.0
    subscriber_backlog: int = 4 << 20
    max_subscribers: int = 256
    idempotency_window: float = 300.0
    inline_commit: bool = True
    tls_cert: str | None = None
    tls_key: str | None = None
    keys_file: str | None = None
    access_ttl: float = 900.0
    refresh_ttl: float = 30 * 86400.0
    principals_poll: float = 1.0
    lease: float = DEFAULT_LEASE
    advertise: str | None = None
    core: CoreConfig = field(default_factory=CoreConfig)

    @property
    def max_reply(self) -> int:
        """The largest frame body the server sends (announced in ``welcome``): 4 x ``max_frame`` + 64 KiB."""
        return max_reply(self.max_frame)

    def check(self) -> None:
        """Raise ``ConfigError`` for settings that must not be served."""
        if not self.idempotency_window > 0:
            raise ConfigError(f"idempotency_window must be > 0 seconds, not {self.idempotency_window}")
        if not MIN_FRAME <= self.max_frame <= MAX_FRAME:  # (max_reply must fit a frame's 4-byte length)
            raise ConfigError(f"max_frame must be between {MIN_FRAME} and {MAX_FRAME} bytes, not {self.max_frame}")
        if self.max_subscribers < 0:
            raise ConfigError(f"max_subscribers must be 0 or more, not {self.max_subscribers}")
        try:
            LeaseTiming(self.lease)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.advertise is not None:
            try:
                parse_address(self.advertise)
            except ValueError as exc:
                raise ConfigError(f"advertise: {exc}") from None
        if not is_loopback(self.host) and not self.token:
            # (authentication before anything is reachable from another machine; TLS alone authenticates no one)
            raise ConfigError(f"listening on {self.host} (beyond loopback) requires authentication: set a shared "
                              "token with --token SECRET or RUNQ_TOKEN (clients and workers then send the same "
                              "one), or listen on 127.0.0.1 (docs/security.md)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both a certificate and its key: --tls-cert FILE and --tls-key FILE "
                              "(RUNQ_TLS_CERT, RUNQ_TLS_KEY)")

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS settings from ``tls_cert`` and ``tls_key`` (None: no TLS); TLS 1.2 at least.

        Raises:
            ConfigError: a file that cannot be read, or a key that does not match the certificate.
        """
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError: not PEM, a key of another certificate)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"cannot load the TLS certificate {self.tls_cert!r} with the key {self.tls_key!r}: "
                              f"{why}") from None
        return ctx


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
