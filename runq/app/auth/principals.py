"""The server's copy of the users and API tokens, for authentication without a database read.

``Principals`` is rebuilt from the tables (runq/app/store/principals.py) when their ``principals_version``
moves (the server polls it: server.py's ``_principals_loop``); between two loads it answers from memory:
an API token by the SHA-256 of the whole token (one dict lookup), a user by name. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..store.principals import TokenRecord, UserRecord

__all__ = ["ROLES_OF_PRINCIPALS", "Principals"]

#: the roles a user or an API token may hold (docs/security.md)
ROLES_OF_PRINCIPALS = ("admin", "user", "viewer", "worker")


class Principals:
    """Users by name and API tokens by hash, as last loaded (empty: no users, the server has no accounts)."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.version: str | None = None

    def load(self, users: Iterable[UserRecord], tokens: Iterable[TokenRecord], version: str | None) -> None:
        """Replace what is known with the tables' rows as of ``version``."""
        self.users = {u.name: u for u in users}
        self.tokens = {t.hash: t for t in tokens}
        self.version = version

    @property
    def any(self) -> bool:
        """Whether there is any user or API token: then every caller must present a credential."""
        return bool(self.users or self.tokens)

    def token(self, token_hash: str, now: float) -> TokenRecord | None:
        """The live API token of that hash: known, not revoked, not expired at ``now``, and, when it acts for a
        user, that user exists and is not disabled. None for anything else."""
        t = self.tokens.get(token_hash)
        if t is None or t.revoked_at is not None or (t.expires_at is not None and t.expires_at <= now):
            return None
        if t.username is not None:
            u = self.users.get(t.username)
            if u is None or u.disabled:
                return None
        return t

    def active_user(self, name: str) -> UserRecord | None:
        """The user ``name`` if it exists and is not disabled."""
        u = self.users.get(name)
        return None if u is None or u.disabled else u
