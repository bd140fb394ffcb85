"""TLS on the server's TCP port: the handshake of a new connection, before its hello.

``TcpFrontend.serve_connection`` calls ``accept_tls`` first when the server has a TLS certificate; the session
then reads and writes through the ``trio.SSLStream`` it returns (no direct socket reads or writes: its
``Session.fd`` is -1). docs/tls.md says how to set it up; docs/protocol.md section 1.1 is the normative part.

Rules of this file
------------------
1. The handshake and then the hello share one deadline each of ``hello_timeout``: a peer that connects and
   says nothing, or stops halfway through the handshake, holds its connection no longer than that.
2. A connection that begins in plain text (its first byte is not 0x16, a TLS handshake record; a runq hello
   begins with 0x00, the high byte of its small length) is answered, in plain text, with one error frame
   ``tls_required`` that says how to connect, then closed: a plain client gets that one line, not a hang
   nor a handshake error of its TLS library. What it sent first is read before the answer (a close with
   unread bytes would send a reset that can overtake the answer).
3. A failed handshake (a client that does not trust the certificate, garbage) closes that connection only,
   logged with the peer's address.
4. The TLS session ends by closing the TCP connection: ``https_compatible`` (no close_notify is awaited;
   the protocol's frames say where each message ends).
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from ...protocol.frames import Connection

__all__ = ["TLS_REQUIRED", "accept_tls"]

log = logging.getLogger("runq.server")

#: The message of the error frame sent to a plain connection on a TLS port (rule 2).
TLS_REQUIRED = ("this server speaks TLS only: connect with TLS (Client(tls=...), --tls-ca FILE or RUNQ_TLS_CA, "
                "--tls for a certificate of a public CA)")
#: The first byte of a TLS record that carries a handshake message (a ClientHello).
_HANDSHAKE_RECORD = 0x16


async def accept_tls(stream: trio.SocketStream, context: ssl.SSLContext, timeout: float,
                     peer: str) -> trio.SSLStream[trio.SocketStream] | None:
    """``stream`` after the server's side of the TLS handshake, or None when there is none to serve (the
    connection is then closed: rules 1-3). Raises nothing but ``trio.Cancelled``."""
    with trio.move_on_after(timeout):
        try:
            first = await stream.socket.recv(1, socket.MSG_PEEK)
            if not first:
                await stream.aclose()  # (closed before a byte: dropped silently, as a plain server does)
                return None
            if first[0] != _HANDSHAKE_RECORD:
                log.warning("a plain-text connection from %s on the TLS port: answered tls_required", peer)
                await stream.socket.recv(65536)  # (its hello: rule 2)
                answer = Connection().send({"op": "error", "code": "tls_required", "message": TLS_REQUIRED})
                await stream.send_all(answer)
                await stream.aclose()
                return None
            tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
            await tls.do_handshake()
            return tls
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            why = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            log.warning("TLS handshake with %s failed: %s", peer, why)
            await _close(stream)
            return None
    log.warning("no TLS handshake from %s within %gs: closed", peer, timeout)
    await _close(stream)
    return None


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()
