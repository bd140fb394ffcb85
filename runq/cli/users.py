"""``runq users`` and ``runq tokens``: the users and API tokens of a database; ``runq audit``: the audit log
(docs/security.md).

These commands work on the database directly (``--db``: the SQLite file, or the PostgreSQL URL), never
through the server: they are run on the server's machine by whoever may read and write its database, which
is how the first admin comes to exist, and no network request can create or change an account. A running
server sees the change within a second (it polls the tables' version: runq/app/store/principals.py).

Every change is written to the audit log (``runq audit``) with the actor ``cli:<login name>``.
"""

from __future__ import annotations

import getpass
import os
import sys
import time
from typing import Any

import click

from . import output
from .options import (
    CommandError,
    RunqCommand,
    Settings,
    client,
    command,
    command_group,
    json_option,
    log_options,
    option,
    server_options,
)

__all__ = ["audit", "tokens", "users"]

_ROLES = ("admin", "user", "viewer", "worker")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _db_option(f: Any) -> Any:
    return option("--db", envvar="RUNQ_DB", default="runq.db", metavar="FILE|URL",
                  help="the server's database: a SQLite file or a postgresql:// URL")(f)


def _open(db: str) -> Any:
    from ..app.store.principals import open_principals

    return open_principals(db)


def _actor() -> str:
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = str(os.getuid())
    return f"cli:{who}"


def _password(stdin: bool, confirm: bool = True) -> str:
    if stdin:
        text = sys.stdin.readline().rstrip("\n")
    else:
        text = click.prompt("password", hide_input=True, confirmation_prompt=confirm)
    if not text:
        raise CommandError("the password is empty")
    return text


def parse_expiry(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``3600``: seconds.

    Raises:
        ValueError: not a positive number with one of those units.
    """
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (30d, 12h, 90m, 3600s)") from None
    if not 0 < seconds < 100 * 365 * 86400:
        raise ValueError(f"{text!r}: a duration from 1 second to 100 years")
    return seconds


# ---------------------------------------------------------------------------------------------------- users
@command_group("manage the users of a database (on the server's machine)")
@_db_option
@json_option
@log_options
@click.pass_context
def users(ctx: click.Context, db: str, json: bool) -> int:
    """List the users of the database (name, role, disabled); subcommands add, passwd, disable and enable
    them. These work on the database itself, never over the network (docs/security.md)."""
    if ctx.invoked_subcommand is not None:
        return 0
    ps = _open(db)
    try:
        found = [{"name": u.name, "role": u.role, "disabled": u.disabled, "created_at": u.created_at,
                  "changed_at": u.changed_at} for u in ps.users()]
    finally:
        ps.close()
    output.show(found, json, "runq users: no users (runq users add NAME --role admin)", _print_users)
    return 0


@users.command("list", cls=RunqCommand, short_help="list the users (as runq users)")
@_db_option
@json_option
@log_options
@click.pass_context
def users_list(ctx: click.Context, db: str, json: bool) -> int:
    """List the users of the database (name, role, disabled)."""
    return int(ctx.invoke(users, db=db, json=json) or 0)


def _print_users(found: list[dict[str, Any]]) -> None:
    now = time.time()
    output.print_table(["name", "role", "state", "changed"],
                       [[u["name"], u["role"], "disabled" if u["disabled"] else "active",
                         output.human_time(u["changed_at"], now)] for u in found])


@users.command("add", cls=RunqCommand, short_help="add a user")
@click.argument("name")
@option("--role", type=click.Choice(_ROLES), default="user", help="what the user may do (docs/security.md)")
@option("--password-stdin", is_flag=True, help="read the password from the first line of stdin (else: prompt)")
@_db_option
@log_options
def users_add(name: str, role: str, password_stdin: bool, db: str) -> int:
    """Add user NAME with a password (argon2id-hashed) and a role."""
    from ..app.auth import check_user_name, hash_password
    from ..app.store.principals import UserRecord

    try:
        check_user_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    hashed = hash_password(_password(password_stdin))
    ps = _open(db)
    try:
        now = time.time()
        try:
            ps.add_user(UserRecord(name, role, hashed, False, now, now))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        ps.audit(now, "user_added", f"user {name} ({role})", _actor())
    finally:
        ps.close()
    click.echo(f"user {name} added ({role})")
    return 0


@users.command("passwd", cls=RunqCommand, short_help="set a user's password")
@click.argument("name")
@option("--password-stdin", is_flag=True, help="read the password from the first line of stdin (else: prompt)")
@_db_option
@log_options
def users_passwd(name: str, password_stdin: bool, db: str) -> int:
    """Set the password of user NAME; its refresh tokens (HTTP logins) are revoked."""
    from ..app.auth import hash_password

    hashed = hash_password(_password(password_stdin))
    ps = _open(db)
    try:
        now = time.time()
        if not ps.update_user(name, now, password=hashed):
            raise CommandError(f"no user {name!r}")
        ps.revoke_user_refresh(name, now)
        ps.audit(now, "user_password", f"user {name}: password set", _actor())
    finally:
        ps.close()
    click.echo(f"password of {name} set")
    return 0


def _set_disabled(name: str, db: str, disabled: bool) -> int:
    ps = _open(db)
    try:
        now = time.time()
        if not ps.update_user(name, now, disabled=disabled):
            raise CommandError(f"no user {name!r}")
        if disabled:
            ps.revoke_user_refresh(name, now)
        ps.audit(now, "user_disabled" if disabled else "user_enabled", f"user {name}", _actor())
    finally:
        ps.close()
    click.echo(f"user {name} {'disabled' if disabled else 'enabled'}")
    return 0


@users.command("disable", cls=RunqCommand, short_help="disable a user")
@click.argument("name")
@_db_option
@log_options
def users_disable(name: str, db: str) -> int:
    """Disable user NAME: its logins, access and refresh tokens and the API tokens acting for it stop working."""
    return _set_disabled(name, db, True)


@users.command("enable", cls=RunqCommand, short_help="enable a disabled user")
@click.argument("name")
@_db_option
@log_options
def users_enable(name: str, db: str) -> int:
    """Enable user NAME again."""
    return _set_disabled(name, db, False)


# ---------------------------------------------------------------------------------------------------- tokens
@command_group("manage the API tokens of a database (on the server's machine)")
@_db_option
@json_option
@log_options
@click.pass_context
def tokens(ctx: click.Context, db: str, json: bool) -> int:
    """List the API tokens (id, name, role, user, queues, expiry, revoked); subcommands create and revoke
    them. The secret of a token is shown once, by create, and never stored (only its SHA-256)."""
    if ctx.invoked_subcommand is not None:
        return 0
    ps = _open(db)
    try:
        found = [{"id": t.id, "name": t.name, "role": t.role, "user": t.username,
                  "queues": t.queues.split(",") if t.queues else None, "expires_at": t.expires_at,
                  "revoked_at": t.revoked_at, "created_at": t.created_at} for t in ps.tokens()]
    finally:
        ps.close()
    output.show(found, json, "runq tokens: no API tokens (runq tokens create NAME --role worker)", _print_tokens)
    return 0


@tokens.command("list", cls=RunqCommand, short_help="list the API tokens (as runq tokens)")
@_db_option
@json_option
@log_options
@click.pass_context
def tokens_list(ctx: click.Context, db: str, json: bool) -> int:
    """List the API tokens (id, name, role, user, queues, expiry, revoked)."""
    return int(ctx.invoke(tokens, db=db, json=json) or 0)


def _print_tokens(found: list[dict[str, Any]]) -> None:
    now = time.time()

    def state(t: dict[str, Any]) -> str:
        if t["revoked_at"] is not None:
            return "revoked"
        if t["expires_at"] is not None and t["expires_at"] <= now:
            return "expired"
        return "active"

    output.print_table(["id", "name", "role", "user", "queues", "state", "expires"],
                       [[t["id"], t["name"], t["role"], t["user"] or "-", ",".join(t["queues"] or ["*"]), state(t),
                         "never" if t["expires_at"] is None else output.human_time(t["expires_at"], now)]
                        for t in found])


@tokens.command("create", cls=RunqCommand, short_help="create an API token (shown once)")
@click.argument("name")
@option("--role", type=click.Choice(_ROLES), default="worker", help="what the token may do (docs/security.md)")
@option("--user", "username", default=None, metavar="NAME",
        help="the user it acts for: its tasks are that user's (default: the token is its own owner)")
@option("--queue", "queues", multiple=True, metavar="QUEUE",
        help="hold it to this queue (repeatable): a worker takes tasks, a producer enqueues, only there")
@option("--expires", default=None, metavar="DURATION", help="expire after 30d, 12h, 90m... (default: never)")
@_db_option
@json_option
@log_options
def tokens_create(name: str, role: str, username: str | None, queues: tuple[str, ...], expires: str | None, db: str,
                  json: bool) -> int:
    """Create an API token NAME and print it once: it is stored only as its SHA-256."""
    from ..app.auth import new_token, token_hash
    from ..app.ops import check_queue_name
    from ..app.store.principals import TokenRecord

    if not 0 < len(name) <= 100:
        raise click.BadParameter("a token's name has 1 to 100 characters", param_hint="NAME")
    try:
        for q in queues:
            check_queue_name(q)
    except Exception as exc:  # noqa: BLE001 - BadRequest's text is the message
        raise click.BadParameter(str(exc), param_hint="--queue") from None
    if any("," in q for q in queues):
        raise click.BadParameter("a queue of a token's scope has no ','", param_hint="--queue")
    try:
        ttl = None if expires is None else parse_expiry(expires)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    ps = _open(db)
    try:
        if username is not None and ps.user(username) is None:
            raise CommandError(f"no user {username!r}")
        now = time.time()
        secret, tid = new_token()
        ps.add_token(TokenRecord(tid, token_hash(secret), name, role, username, ",".join(queues) or None,
                                 None if ttl is None else now + ttl, None, now))
        ps.audit(now, "token_created", f"token {tid} {name!r} ({role}"
                 f"{', for ' + username if username else ''}{', queues ' + ','.join(queues) if queues else ''})",
                 _actor())
    finally:
        ps.close()
    if json:
        output.print_json({"id": tid, "name": name, "role": role, "token": secret})
    else:
        click.echo(secret)
        click.echo(f"token {tid} ({name}, {role}): shown once, keep it now", err=True)
    return 0


@tokens.command("revoke", cls=RunqCommand, short_help="revoke an API token")
@click.argument("token")
@_db_option
@log_options
def tokens_revoke(token: str, db: str) -> int:
    """Revoke the API token TOKEN (its id, as `runq tokens` lists it, or its name)."""
    ps = _open(db)
    try:
        now = time.time()
        if not ps.revoke_token(token, now):
            raise CommandError(f"no live API token {token!r}")
        ps.audit(now, "token_revoked", f"token {token}", _actor())
    finally:
        ps.close()
    click.echo(f"token {token} revoked")
    return 0


# ---------------------------------------------------------------------------------------------------- audit
@command("the audit log: who changed what (operators' actions, users, tokens, failed logins)")
@server_options
@option("--limit", type=click.IntRange(1, 1000), default=100, help="the latest this many events")
@option("--since", type=click.IntRange(0), default=None, metavar="ID", help="the events after this event id")
@option("--all", "everything", is_flag=True, help="also the server's own events (breakers opening by themselves)")
@json_option
@log_options
@click.pass_obj
def audit(settings: Settings, limit: int, since: int | None, everything: bool, json: bool) -> int:
    """Show the audit log, oldest first: each operator's action (cancel, retry, pause, resume, drain, limits,
    breakers, schedules), each change of a user or token and each failed login, with its actor (admins and
    viewers only: docs/security.md)."""
    with client(settings) as c:
        found = c.server_events(since=since, limit=limit)
    if not everything:
        found = [e for e in found if e.get("actor") is not None]
    output.show(found, json, "runq audit: nothing in the audit log", _print_audit)
    return 0


def _print_audit(found: list[dict[str, Any]]) -> None:
    output.print_table(["id", "time", "actor", "kind", "scope", "detail"],
                       [[e["id"], output.local_time(e["at"]), e.get("actor") or "(server)", e["kind"], e["scope"],
                         e.get("detail") or ""] for e in found])
