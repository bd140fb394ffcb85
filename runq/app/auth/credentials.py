"""Secrets: password hashes (argon2id), API and refresh tokens (random, stored as SHA-256), in one place.

Why two kinds of hash (docs/security.md):

* A password is chosen by a person and may be guessed: it is stored as an argon2id hash (argon2-cffi, with
  its RFC 9106 "low memory" parameters), slow and memory-hard on purpose, so that a stolen database does not
  give the passwords back by brute force.
* A token is made here from 32 random bytes (256 bits): no dictionary holds it and no brute force reaches
  it, so a fast hash (SHA-256) is enough, and it lets the server find a token by its hash with one index
  lookup, at every connection and request, without a slow hash in the hot path.

Tokens look like ``rq_<id>_<secret>``: the ``rq_`` prefix makes them recognisable (secret scanners, logs,
people), the ``id`` (8 hex digits) names the token in lists and revocations without the secret, and the
whole token's SHA-256 is what is stored. Refresh tokens of HTTP logins are ``rqr_<id>_<secret>``.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.profiles import RFC_9106_LOW_MEMORY

__all__ = ["API_PREFIX", "REFRESH_PREFIX", "USER_NAME_RE", "check_user_name", "hash_password", "needs_rehash",
           "new_token", "token_hash", "token_id", "verify_password"]

API_PREFIX = "rq_"
REFRESH_PREFIX = "rqr_"
#: a user's name: 1 to 64 of letters, digits and ``_.@-`` (no ``:``: owners of tokens are ``token:<id>``)
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")
_TOKEN_RE = re.compile(r"(rqr?_)([0-9a-f]{8})_[A-Za-z0-9_-]{43}\Z")

_hasher = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY)
#: a hash of a password nobody knows: verified against when the user does not exist, so that an unknown user
#: and a wrong password take the same time (docs/security.md)
_DUMMY = _hasher.hash(secrets.token_hex(16))


def check_user_name(name: str) -> str:
    """``name`` if it can be a user's name.

    Raises:
        ValueError: it cannot.
    """
    if not USER_NAME_RE.match(name):
        raise ValueError(f"a user name is 1 to 64 letters, digits or _.@- (not {name[:80]!r})")
    return name


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (its salt and parameters inside).

    Raises:
        ValueError: an empty password, or one over 1,024 characters.
    """
    if not 0 < len(password) <= 1024:
        raise ValueError("a password has 1 to 1024 characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether ``password`` matches the ``stored`` hash; with ``stored`` None (no such user) it checks against a
    dummy hash all the same and says False, in the same time."""
    try:
        return _hasher.verify(_DUMMY if stored is None else stored, password[:1024]) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than today's (rehash it at the next login)."""
    return _hasher.check_needs_rehash(stored)


def new_token(prefix: str = API_PREFIX) -> tuple[str, str]:
    """A new token ``<prefix><id>_<secret>`` and its id."""
    tid = secrets.token_hex(4)
    return f"{prefix}{tid}_{secrets.token_urlsafe(32)}", tid


def token_id(token: str) -> str | None:
    """The id of a token of the form ``new_token`` makes, or None for any other text."""
    m = _TOKEN_RE.match(token)
    return None if m is None else m.group(2)


def token_hash(token: str | bytes) -> str:
    """The SHA-256 (hex) of a whole token: what is stored, and looked up."""
    return hashlib.sha256(token if isinstance(token, bytes) else token.encode()).hexdigest()
