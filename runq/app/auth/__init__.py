"""Principals and credentials (docs/security.md): password and token hashing (``credentials``), access tokens
of HTTP logins (``access``, PyJWT), the login rate limit (``limiter``) and the server's copy of the users and
tokens (``principals``). The permission table and ``authenticate`` are runq/app/ops/auth.py's: the one place
where a caller is checked."""

from __future__ import annotations

from .access import ALGORITHMS, BAD_TOKEN, AccessClaims, AccessKeys, BadCredential
from .credentials import (
    API_PREFIX,
    REFRESH_PREFIX,
    check_user_name,
    hash_password,
    needs_rehash,
    new_token,
    token_hash,
    token_id,
    verify_password,
)
from .limiter import LoginLimiter
from .principals import ROLES_OF_PRINCIPALS, Principals

__all__ = ["ALGORITHMS", "API_PREFIX", "BAD_TOKEN", "REFRESH_PREFIX", "ROLES_OF_PRINCIPALS", "AccessClaims",
           "AccessKeys", "BadCredential", "LoginLimiter", "Principals", "check_user_name", "hash_password", "needs_rehash",
           "new_token", "token_hash", "token_id", "verify_password"]
