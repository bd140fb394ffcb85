"""``runq login`` and ``runq logout``: a user's password traded for tokens, kept for the other commands.

``runq login --user NAME`` asks for the password, logs in over the server's HTTP API (``POST /api/auth/login``)
and keeps the access and refresh tokens in a credentials file (``RUNQ_CREDENTIALS``, default
``~/.config/runq/credentials.json``, mode 0600), under the ``--server`` address. Every command that talks to a
server (``options.client``, ``runq tui``) then sends the access token when no ``--token`` is given, and trades
the refresh token for new ones (``/api/auth/refresh``) once the access token is about to expire. ``runq logout``
revokes the refresh token and forgets them. docs/security.md.

TLS (docs/tls.md): with ``--tls`` or ``--tls-ca FILE`` (``RUNQ_TLS``, ``RUNQ_TLS_CA``) the HTTP API is reached
over HTTPS, its certificate verified as the TCP connections verify theirs (``protocol.tls.client_context``);
the default ``--http`` is then ``https://<--server's host>:7701``. A refresh made for another command uses
that command's TLS options.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from ..protocol.errors import TLSError
from ..protocol.tls import client_context
from .options import CommandError, Settings, _global, command, log_options, option, tls_options

__all__ = ["credentials_path", "login", "logout", "resolve_token"]

DEFAULT_HTTP_PORT = 7701
#: seconds before its expiry an access token is refreshed
EARLY = 30.0


def credentials_path() -> Path:
    """Where the tokens of ``runq login`` are kept."""
    env = os.environ.get("RUNQ_CREDENTIALS")
    return Path(env) if env else Path.home() / ".config" / "runq" / "credentials.json"


def _read() -> dict[str, Any]:
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict[str, Any]) -> None:
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``--tls`` / ``--tls-ca`` for an ``https://`` URL (None: Python's default)."""
    try:
        return client_context(settings.tls_option) if settings.tls_option else None
    except TLSError as exc:
        raise CommandError(str(exc)) from None


def _post(url: str, body: dict[str, str], context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """POST ``body`` as JSON (over TLS with ``context`` for an ``https://`` URL); the answer's JSON body.

    Raises:
        CommandError: the server refused (its error message), or could not be reached.
    """
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=context if url.startswith("https:") else None) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise CommandError(message) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(f"cannot reach {url}: {exc}") from None


def _http_default(server: str, tls: bool) -> str:
    from ..protocol.address import server_addresses

    host, _ = server_addresses(server)[0]
    return f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{DEFAULT_HTTP_PORT}"


def _keep(server: str, http: str, answer: dict[str, Any]) -> None:
    now = time.time()
    data = _read()
    data[server] = {"http": http, "user": answer["user"], "role": answer["role"],
                    "access_token": answer["access_token"], "expires_at": now + float(answer["expires_in"]),
                    "refresh_token": answer["refresh_token"],
                    "refresh_expires_at": now + float(answer["refresh_expires_in"])}
    _write(data)


def resolve_token(settings: Settings) -> str | None:
    """The credential to send to ``settings.server``: ``--token`` (or ``RUNQ_TOKEN``) when given, else the access
    token of a ``runq login`` to that server, refreshed when it is about to expire; else None.

    Raises:
        CommandError: the login's refresh token no longer works (log in again).
    """
    if settings.token is not None:
        return settings.token
    entry = _read().get(settings.server)
    if not isinstance(entry, dict):
        return None
    if float(entry.get("expires_at", 0)) - EARLY > time.time():
        return str(entry["access_token"])
    try:
        answer = _post(f"{entry['http']}/api/auth/refresh", {"refresh_token": str(entry["refresh_token"])},
                       _context(settings))
    except CommandError as exc:
        raise CommandError(f"the login to {settings.server} has expired ({exc}): runq login --user "
                           f"{entry.get('user', 'NAME')}") from None
    _keep(settings.server, str(entry["http"]), answer)
    return str(answer["access_token"])


def _server_option(f: Any) -> Any:
    from .options import DEFAULT_SERVER

    return _global("--server", "-s", envvar="RUNQ_SERVER", default=DEFAULT_SERVER, metavar="HOST:PORT",
                   help="the runq server's TCP address (the login is kept under it)")(f)


@command("log in with a user name and password (the other commands then send its token)")
@_server_option
@option("--user", "username", required=True, metavar="NAME", help="the user's name")
@tls_options
@option("--http", default=None, metavar="URL", show_default="http(s)://<--server's host>:7701",
        help="the server's HTTP API, where the login is made")
@option("--password-stdin", is_flag=True, help="read the password from the first line of stdin (else: prompt)")
@log_options
@click.pass_obj
def login(settings: Settings, username: str, http: str | None, password_stdin: bool) -> int:
    """Log in as USER over the server's HTTP API; keep the tokens (in RUNQ_CREDENTIALS, mode 0600) for the
    commands that talk to --server, which send the access token and refresh it by themselves."""
    url = (http or _http_default(settings.server, bool(settings.tls_option))).rstrip("/")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt("password", hide_input=True)
    answer = _post(f"{url}/api/auth/login", {"username": username, "password": password}, _context(settings))
    _keep(settings.server, url, answer)
    click.echo(f"logged in to {settings.server} as {answer['user']} ({answer['role']})")
    return 0


@command("log out: revoke the login's refresh token and forget its tokens")
@_server_option
@tls_options
@log_options
@click.pass_obj
def logout(settings: Settings) -> int:
    """Revoke the refresh token of the login to --server and forget its tokens."""
    data = _read()
    entry = data.pop(settings.server, None)
    if not isinstance(entry, dict):
        raise CommandError(f"not logged in to {settings.server}")
    try:
        _post(f"{entry['http']}/api/auth/logout", {"refresh_token": str(entry["refresh_token"])}, _context(settings))
    finally:
        _write(data)
    click.echo(f"logged out of {settings.server}")
    return 0
