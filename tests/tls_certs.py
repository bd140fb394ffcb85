"""Certificates for the TLS tests, made by trustme: a CA, a server certificate it signed, and strangers.

``make_certs(folder)`` writes PEM files and returns their paths (``Certs``): the server's certificate is valid
for 127.0.0.1, ::1 and localhost; ``other_ca`` signed nothing of the server's; ``wrong_host`` is a certificate
of the right CA for another host name only.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NamedTuple

import trustme


class Certs(NamedTuple):
    ca: str  # the CA that signed ``server`` (PEM)
    server: str  # the server's certificate, its chain and its key (PEM): --tls-cert and --tls-key both
    other_ca: str  # a CA that signed nothing of the server's
    wrong_host: str  # a certificate and key from ``ca`` for example.org only

    def context(self) -> ssl.SSLContext:
        """A client context that trusts ``ca`` (what ``tls=ca`` makes)."""
        return ssl.create_default_context(cafile=self.ca)


def make_certs(folder: Path) -> Certs:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    out = Certs(*(str(folder / name) for name in ("ca.pem", "server.pem", "other-ca.pem", "wrong-host.pem")))
    ca.cert_pem.write_to_path(out.ca)
    ca.issue_cert("127.0.0.1", "::1", "localhost").private_key_and_cert_chain_pem.write_to_path(out.server)
    trustme.CA().cert_pem.write_to_path(out.other_ca)
    ca.issue_cert("example.org").private_key_and_cert_chain_pem.write_to_path(out.wrong_host)
    return out
