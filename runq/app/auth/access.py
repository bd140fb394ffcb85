"""Access tokens of HTTP logins: short-lived JWTs signed with the server's keys (PyJWT, a fixed algorithm list).

Theory of operation
-------------------
``AccessKeys`` holds one or more HMAC keys, each with its ``kid`` (the first 8 hex digits of the key's
SHA-256): the first signs, every one verifies. Rotation (docs/security.md): put a new key first, keep the old
one after it for one access-token lifetime, then remove it. Keys come from a file (one key per line, at least
32 bytes of text each; ``#`` lines ignored) or are generated and kept in the database on first start.

``verify`` accepts only what ``issue`` makes: the algorithm is taken from ``ALGORITHMS`` (never from the
token's header: ``alg: none`` and an RS/HS confusion are refused), the ``kid`` must be one of the keys, and
``sub``, ``role``, ``exp``, ``iat`` and ``typ: access`` must be there. Expiry is checked against the ``now``
given (the server's clock, a fake one in tests), not against PyJWT's own reading of the clock.

Every refusal raises ``BadCredential`` with the same text, whatever the reason (docs/security.md: a caller
learns nothing from the difference); the operations layer answers it as ``unauthorized``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import jwt

__all__ = ["ALGORITHMS", "BAD_TOKEN", "AccessClaims", "AccessKeys", "BadCredential"]

#: the only algorithm accepted (symmetric: the server both signs and verifies)
ALGORITHMS = ["HS256"]
#: the one message of every refused credential
BAD_TOKEN = "missing, invalid, expired or revoked credential"
_MIN_KEY = 32


class BadCredential(ValueError):
    """A credential that is refused (one message, ``BAD_TOKEN``, whatever the reason)."""

    def __init__(self) -> None:
        super().__init__(BAD_TOKEN)


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: the user, its role at login, and when the token expires."""

    sub: str
    role: str
    exp: float


def _kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class AccessKeys:
    """The signing keys (see the module docstring).

    Args:
        keys: the keys, the signing one first.

    Raises:
        ValueError: no key, or one shorter than 32 bytes.
    """

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("no signing key")
        for k in keys:
            if len(k) < _MIN_KEY:
                raise ValueError(f"a signing key has at least {_MIN_KEY} bytes")
        self.keys = {_kid(k): k for k in keys}
        self.signing = _kid(keys[0])

    @classmethod
    def from_text(cls, text: str) -> AccessKeys:
        """Keys from text: one per line, blank lines and ``#`` lines ignored."""
        lines = [ln.strip() for ln in text.splitlines()]
        return cls([ln.encode() for ln in lines if ln and not ln.startswith("#")])

    @classmethod
    def from_file(cls, path: str) -> AccessKeys:
        """Keys from a file (``from_text``).

        Raises:
            OSError: it cannot be read.
            ValueError: it holds no usable key.
        """
        try:
            return cls.from_text(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @staticmethod
    def generate() -> str:
        """A new key, as text for a file or the database."""
        return secrets.token_urlsafe(48)

    def issue(self, sub: str, role: str, now: float, ttl: float) -> str:
        """An access token for user ``sub`` with ``role``, valid ``ttl`` seconds from ``now``."""
        claims = {"sub": sub, "role": role, "iat": int(now), "exp": now + ttl, "typ": "access"}
        return jwt.encode(claims, self.keys[self.signing], algorithm=ALGORITHMS[0], headers={"kid": self.signing})

    def verify(self, token: str, now: float) -> AccessClaims:
        """The claims of ``token`` if it is one of ours and not expired at ``now``.

        Raises:
            BadCredential: anything else (one message for every reason).
        """
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise BadCredential()
            claims = jwt.decode(token, key, algorithms=ALGORITHMS,
                                options={"require": ["exp", "iat", "sub"], "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError:
            raise BadCredential() from None
        sub, role, exp = claims.get("sub"), claims.get("role"), claims.get("exp")
        if (claims.get("typ") != "access" or not isinstance(sub, str) or not isinstance(role, str)
                or not isinstance(exp, (int, float)) or exp <= now):
            raise BadCredential()
        return AccessClaims(sub, role, float(exp))
