"""Users, API tokens and refresh tokens in a runq database (docs/security.md): their rows and their SQL.

Theory of operation
-------------------
Principals change rarely (an operator adds a user, creates or revokes a token, a person logs in) and are read
at every authentication, so the server keeps them in memory (runq/app/auth/principals.py) and this module is
only the way to and from the tables: ``PrincipalStore`` wraps one DB-API connection in autocommit mode
(sqlite3 or psycopg; ``mark`` is its placeholder) and runs one statement per change, never inside the
server's group commit (a login must not wait behind a burst of enqueues, nor the reverse).

Every change also writes a new random ``principals_version`` in ``meta``: the server polls that one row
and reloads the tables when it moved, so a change made by ``runq users`` / ``runq tokens`` on the server's
machine (another process, on the database directly) reaches a running server within its poll interval.

``open_principals(db)`` is how the CLI gets one: a SQLite file is created and migrated as the server would;
a PostgreSQL database must have been created by ``runq serve`` (its migrations run under the writer row).

Rules of this file:

1. No secret in the clear is ever stored: passwords as argon2id hashes, tokens as SHA-256 hex digests of the
   whole token (runq/app/auth/credentials.py says why each).
2. No rule here (who may do what, expiry, revocation checks): those are runq/app/auth's; this is storage.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from typing import Any, NamedTuple

from ..errors import StoreError
from .schema import SCHEMA_VERSION, migrate

__all__ = ["PrincipalStore", "RefreshRecord", "TokenRecord", "UserRecord", "open_principals"]


class UserRecord(NamedTuple):
    """A user: its name, role, argon2id password hash, whether it is disabled, times."""

    name: str
    role: str
    password: str
    disabled: bool
    created_at: float
    changed_at: float


class TokenRecord(NamedTuple):
    """An API token: its public id (the part of the token before its secret), the SHA-256 of the whole token,
    a name for people, its role, the user it acts for (None: itself), the queues it is held to (comma-separated;
    None: all), when it expires and when it was revoked (None: never / not)."""

    id: str
    hash: str
    name: str
    role: str
    username: str | None
    queues: str | None
    expires_at: float | None
    revoked_at: float | None
    created_at: float


class RefreshRecord(NamedTuple):
    """A refresh token of an HTTP login: its public id, the SHA-256 of the whole token, its user, times."""

    id: str
    hash: str
    username: str
    expires_at: float
    revoked_at: float | None
    created_at: float


_USER_COLS = ", ".join(UserRecord._fields)
_TOKEN_COLS = ", ".join(TokenRecord._fields)
_REFRESH_COLS = ", ".join(RefreshRecord._fields)


class PrincipalStore:
    """The principal tables of one database, on ``conn`` (autocommit), with ``mark`` as the placeholder.

    Thread-safe: one statement at a time (a lock), so the server may call it from any worker thread.
    """

    def __init__(self, conn: Any, mark: str = "?") -> None:
        self.conn = conn
        self.mark = mark
        self._lock = threading.Lock()

    def _sql(self, sql: str) -> str:
        return sql if self.mark == "?" else sql.replace("?", self.mark)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The first row of a query, or None; the statement is read to its end (a SQLite statement left
        unfinished would hold a read transaction open, and with it the WAL's checkpoints)."""
        rows = self._exec(sql, args).fetchall()
        return rows[0] if rows else None

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        try:
            return self.conn.execute(self._sql(sql), args)
        except Exception as exc:
            if type(exc).__module__.startswith(("sqlite3", "psycopg")):
                raise StoreError(f"principals: {exc}") from exc
            raise

    def _bump(self) -> None:
        self._exec("INSERT INTO meta (key, value) VALUES ('principals_version', ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (secrets.token_hex(8),))

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # ------------------------------------------------------------------ reads
    def version(self) -> str | None:
        """The ``principals_version`` (changes with every change of a principal; None: never changed)."""
        with self._lock:
            row = self._one("SELECT value FROM meta WHERE key = 'principals_version'")
        return None if row is None else str(row[0])

    def users(self) -> list[UserRecord]:
        with self._lock:
            rows = self._exec(f"SELECT {_USER_COLS} FROM users ORDER BY name").fetchall()
        return [UserRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    def user(self, name: str) -> UserRecord | None:
        with self._lock:
            r = self._one(f"SELECT {_USER_COLS} FROM users WHERE name = ?", (name,))
        return None if r is None else UserRecord(r[0], r[1], r[2], bool(r[3]), r[4], r[5])

    def tokens(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._exec(f"SELECT {_TOKEN_COLS} FROM api_tokens ORDER BY created_at, id").fetchall()
        return [TokenRecord(*r) for r in rows]

    def refresh(self, token_hash: str) -> RefreshRecord | None:
        with self._lock:
            r = self._one(f"SELECT {_REFRESH_COLS} FROM refresh_tokens WHERE hash = ?", (token_hash,))
        return None if r is None else RefreshRecord(*r)

    # ------------------------------------------------------------------ changes
    def add_user(self, user: UserRecord) -> None:
        """Add ``user``.

        Raises:
            ValueError: a user of that name exists.
        """
        with self._lock:
            if self._one("SELECT 1 FROM users WHERE name = ?", (user.name,)) is not None:
                raise ValueError(f"user {user.name!r} exists already")
            self._exec(f"INSERT INTO users ({_USER_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                       (*user[:3], self._flag(user.disabled), *user[4:]))
            self._bump()

    def _flag(self, value: bool) -> Any:
        return value if self.mark != "?" else int(value)

    def update_user(self, name: str, now: float, *, password: str | None = None, disabled: bool | None = None,
                    role: str | None = None) -> bool:
        """Change a user's password hash, disabled flag or role; False when there is no such user."""
        sets: list[str] = ["changed_at = ?"]
        args: list[Any] = [now]
        if password is not None:
            sets.append("password = ?")
            args.append(password)
        if disabled is not None:
            sets.append("disabled = ?")
            args.append(self._flag(disabled))
        if role is not None:
            sets.append("role = ?")
            args.append(role)
        with self._lock:
            n = self._exec(f"UPDATE users SET {', '.join(sets)} WHERE name = ?", (*args, name)).rowcount
            if n:
                self._bump()
        return bool(n)

    def add_token(self, token: TokenRecord) -> None:
        with self._lock:
            self._exec(f"INSERT INTO api_tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(token))
            self._bump()

    def revoke_token(self, token_id: str, now: float) -> bool:
        """Revoke the API token ``token_id`` (its public id, or its name); False when no live token has it."""
        with self._lock:
            n = self._exec("UPDATE api_tokens SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL",
                           (now, token_id, token_id)).rowcount
            if n:
                self._bump()
        return bool(n)

    def add_refresh(self, record: RefreshRecord) -> None:
        with self._lock:
            self._exec(f"INSERT INTO refresh_tokens ({_REFRESH_COLS}) VALUES (?, ?, ?, ?, ?, ?)", tuple(record))

    def revoke_refresh(self, token_hash: str, now: float) -> bool:
        """Revoke one refresh token; False when it was unknown or revoked already."""
        with self._lock:
            n = self._exec("UPDATE refresh_tokens SET revoked_at = ? WHERE hash = ? AND revoked_at IS NULL",
                           (now, token_hash)).rowcount
        return bool(n)

    def revoke_user_refresh(self, username: str, now: float) -> int:
        """Revoke every live refresh token of ``username`` (its password changed, it was disabled)."""
        with self._lock:
            n = self._exec("UPDATE refresh_tokens SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
                           (now, username)).rowcount
        return int(n)

    def forget_refresh(self, before: float) -> int:
        """Delete refresh tokens that expired before ``before``."""
        with self._lock:
            return int(self._exec("DELETE FROM refresh_tokens WHERE expires_at < ?", (before,)).rowcount)

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there; return the one stored (two starts agree)."""
        with self._lock:
            self._exec("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (key, value))
            row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return str(row[0])

    def audit(self, at: float, kind: str, detail: str, actor: str) -> None:
        """Append an event of no task (``server_events``, scope ``auth``) with its actor: the audit log of user
        and token changes and of failed logins, beside the operators' actions the server records itself."""
        with self._lock:
            self._exec("INSERT INTO server_events (at, scope, kind, detail, actor) VALUES (?, 'auth', ?, ?, ?)",
                       (at, kind, detail, actor))


def open_principals(db: str) -> PrincipalStore:
    """The principal tables of ``db`` (a SQLite file, created and migrated if need be, or a PostgreSQL URL),
    for the CLI on the server's machine.

    Raises:
        StoreError: a PostgreSQL database whose schema ``runq serve`` has not created yet (or is older), or
            one that cannot be reached.
    """
    from . import POSTGRES_PREFIXES

    if db.startswith(POSTGRES_PREFIXES):
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(f"a PostgreSQL database needs psycopg ({exc}): pip install 'runq[postgres]'") from None
        try:
            conn = psycopg.connect(db, autocommit=True, application_name="runq-cli")
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            version = conn.execute("SELECT version FROM runq_schema WHERE id = 1").fetchone()
        except psycopg.Error:
            version = None
        if version is None or version[0] != SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"this PostgreSQL database has no runq schema version {SCHEMA_VERSION} yet: start "
                             "`runq serve --db ...` on it once first")
        return PrincipalStore(conn, "%s")
    lite = sqlite3.connect(db, isolation_level=None, check_same_thread=False, timeout=5.0)
    lite.execute("PRAGMA journal_mode=WAL")
    lite.execute("PRAGMA busy_timeout=5000")
    migrate(lite)
    return PrincipalStore(lite)
