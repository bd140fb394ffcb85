"""TLS on the client side of the runq TCP protocol: what ``tls=`` means, and wrapping a connection in it.

``Client`` and ``Worker`` (anyio streams) and ``SyncClient`` (a blocking socket) open a TCP connection as
before, then hand it to ``wrap_stream`` or ``wrap_socket`` here, which make the TLS handshake and give back
the connection to speak the protocol over. Nothing else in the SDK knows about TLS.

Rules of this file
------------------
1. ``tls=`` is read once, when the client is made (``client_context``): ``None`` reads the environment
   (``RUNQ_TLS_CA``: a CA file, TLS on and the server verified against it; else ``RUNQ_TLS`` set to
   ``1``/``true``/``yes``/``on``: TLS verified against the system's CAs; else plain TCP), ``False`` is plain
   TCP, ``True`` is TLS verified against the system's CAs, a path names a CA file (PEM), and an
   ``ssl.SSLContext`` is used as given (its own verification settings).
2. Verified by default: the server's certificate must chain to a trusted CA and be valid for the host
   of the address connected to (a name, or an IP address in its subjectAltName). TLS 1.2 at least.
3. The handshake is bounded by the caller's connect timeout, like the TCP connect and the hello.
4. Every handshake failure is one ``TLSError`` line naming the address and the likely fix: a certificate
   not trusted (which CA to give), a certificate for another host (which name to connect by), or a peer that does not speak TLS (a runq server without
   ``--tls-cert``). A runq server with TLS that receives a plain hello answers ``tls_required`` in plain
   text itself (docs/protocol.md section 1.1), which the plain client raises as a ``RemoteError``.
5. Over TLS nothing writes to the raw socket (``is_tls``): the client's direct writes are for plain TCP.
   The TLS session ends by closing the TCP connection (no close_notify exchange: the protocol's own
   frames say where a message ends, so a truncated stream is a lost connection either way).
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import TypeAlias

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from .errors import TLSError

__all__ = ["TLSOption", "client_context", "is_tls", "wrap_socket", "wrap_stream"]

#: What ``tls=`` accepts (rule 1).
TLSOption: TypeAlias = "bool | str | os.PathLike[str] | ssl.SSLContext | None"

_TRUE = frozenset({"1", "true", "yes", "on"})
#: OpenSSL's verify codes for a certificate of another host: X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_, _IP_ADDRESS_
_NAME_MISMATCH = frozenset({62, 63, 64})
#: the end of the message for a peer that does not answer the handshake as a TLS server does
_NOT_TLS = ("is it a runq server without TLS? Connect to it without TLS, or start it with --tls-cert and "
            "--tls-key")


def client_context(tls: TLSOption = None) -> ssl.SSLContext | None:
    """The ``ssl.SSLContext`` to connect with for ``tls`` (rule 1), or ``None`` for plain TCP.

    Raises:
        TLSError: a CA file that cannot be read or holds no certificate.
        TypeError: ``tls`` of another type.
    """
    if tls is None:
        ca = os.environ.get("RUNQ_TLS_CA")
        if ca:
            tls = ca
        else:
            tls = os.environ.get("RUNQ_TLS", "").strip().lower() in _TRUE
    if isinstance(tls, ssl.SSLContext):
        return tls
    if tls is False:
        return None
    if tls is True:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if isinstance(tls, (str, os.PathLike)):
        path = os.fspath(tls)
        try:
            return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=path)
        except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError: a file that holds no certificate)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise TLSError("", f"cannot load the CA file {path!r}: {why}") from None
    raise TypeError(f"tls must be a bool, a CA file path or an ssl.SSLContext, not {type(tls).__name__}")


def is_tls(stream: anyio.abc.ByteStream) -> bool:
    """True for a stream made by ``wrap_stream`` (its raw socket must not be written to: rule 5)."""
    return isinstance(stream, TLSStream)


async def wrap_stream(stream: anyio.abc.ByteStream, context: ssl.SSLContext, host: str,
                      address: str) -> anyio.abc.ByteStream:
    """``stream`` (a TCP connection to ``address``) after a TLS handshake with ``host`` as the server's
    name; on failure ``stream`` is closed and ``TLSError`` raised (rule 4). The caller bounds the time."""
    try:
        return await TLSStream.wrap(stream, server_side=False, hostname=host, ssl_context=context, standard_compatible=False)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)
        if isinstance(exc, (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)):
            raise handshake_error(address, exc) from exc
        raise


def wrap_socket(sock: socket.socket, context: ssl.SSLContext, host: str, address: str) -> ssl.SSLSocket:
    """``sock`` (a blocking TCP connection to ``address``, with a timeout that bounds the handshake) after
    a TLS handshake with ``host`` as the server's name; on failure ``TLSError`` (rule 4) and ``sock`` is
    closed. A timeout stays a ``TimeoutError``."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except TimeoutError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise handshake_error(address, exc) from exc


def handshake_error(address: str, exc: BaseException) -> TLSError:
    """The one-line error for a handshake with ``address`` that failed with ``exc`` (rule 4)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__  # (anyio wraps what ssl raised in BrokenResourceError)
    if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_code in _NAME_MISMATCH:
        return TLSError(address, f"the server's TLS certificate is not valid for the host connected to "
                                 f"({cause.verify_message}): connect by a name or address the certificate "
                                 "names, or give the server a certificate for this one")
    if isinstance(cause, ssl.SSLCertVerificationError):
        return TLSError(address, f"the server's TLS certificate is not trusted ({cause.verify_message}): give "
                                 "the CA that signed it (tls='ca.pem', --tls-ca FILE or RUNQ_TLS_CA)")
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return TLSError(address, f"TLS handshake failed ({cause.reason or cause}): {_NOT_TLS}")
    return TLSError(address, f"the server closed the connection during the TLS handshake: {_NOT_TLS}")
