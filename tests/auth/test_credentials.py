"""Passwords, API tokens, access tokens (JWT) and the login rate limit: pure rules, with a fake clock
(issue 13, docs/security.md)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from runq.app.auth import (
    AccessKeys,
    BadCredential,
    LoginLimiter,
    Principals,
    hash_password,
    new_token,
    token_hash,
    token_id,
    verify_password,
)
from runq.app.auth.access import BAD_TOKEN
from runq.app.ops import Authenticator, Unauthenticated
from runq.app.store.principals import TokenRecord, UserRecord

T0 = 1_800_000_000.0
KEY = "k" * 64


def test_a_password_is_stored_as_an_argon2id_hash_and_checked_against_it() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$") and "correct horse" not in h
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "wrong")
    assert not verify_password(None, "correct horse")  # (no such user: checked against a dummy hash, False)
    assert hash_password("correct horse") != h  # (salted)
    with pytest.raises(ValueError):
        hash_password("")


def test_an_api_token_is_recognisable_names_its_id_and_is_stored_as_its_sha256() -> None:
    secret, tid = new_token()
    assert secret.startswith(f"rq_{tid}_") and len(secret) == 3 + 8 + 1 + 43
    assert token_id(secret) == tid and token_id("rq_nothex00_x") is None
    assert token_hash(secret) == token_hash(secret.encode()) and len(token_hash(secret)) == 64
    assert secret not in token_hash(secret)
    refresh, rid = new_token("rqr_")
    assert refresh.startswith(f"rqr_{rid}_") and token_id(refresh) == rid


def _claims(token: str) -> dict[str, object]:
    body = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def test_an_access_token_is_valid_until_it_expires_by_the_clock_given() -> None:
    keys = AccessKeys.from_text(KEY)
    token = keys.issue("alice", "user", T0, 900)
    c = keys.verify(token, T0 + 899.9)
    assert (c.sub, c.role, c.exp) == ("alice", "user", T0 + 900)
    with pytest.raises(BadCredential):
        keys.verify(token, T0 + 900)  # (expired: the clock given, not PyJWT's)
    assert _claims(token)["typ"] == "access"


def _forge(header: dict[str, object], claims: dict[str, object], sig: bytes = b"") -> str:
    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    return f"{enc(json.dumps(header).encode())}.{enc(json.dumps(claims).encode())}.{enc(sig)}"


def test_tampered_wrong_algorithm_and_foreign_tokens_are_refused_with_one_message() -> None:
    keys = AccessKeys.from_text(KEY)
    good = keys.issue("alice", "user", T0, 900)
    kid = jwt.get_unverified_header(good)["kid"]
    claims = {**_claims(good), "role": "admin"}
    bad = [
        _forge({"alg": "none", "typ": "JWT", "kid": kid}, claims),  # alg none
        _forge({"alg": "HS256", "typ": "JWT", "kid": kid}, claims, b"x" * 32),  # tampered: role changed
        jwt.encode(claims, KEY, algorithm="HS512", headers={"kid": kid}),  # an algorithm not on the list
        jwt.encode(claims, "another key of forty characters........", algorithm="HS256", headers={"kid": kid}),
        jwt.encode(claims, KEY, algorithm="HS256"),  # no kid
        jwt.encode({**claims, "typ": "refresh"}, KEY, algorithm="HS256", headers={"kid": kid}),
        jwt.encode({k: v for k, v in claims.items() if k != "exp"}, KEY, algorithm="HS256", headers={"kid": kid}),
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "not.a.jwt",
    ]
    for token in bad:
        with pytest.raises(BadCredential) as err:
            keys.verify(token, T0)
        assert str(err.value) == BAD_TOKEN, token


def test_rotation_the_first_key_signs_every_key_verifies() -> None:
    old = AccessKeys.from_text(KEY)
    token = old.issue("alice", "user", T0, 900)
    rotated = AccessKeys.from_text("# new key first, the old one kept for one access-token lifetime\n"
                                   + "n" * 40 + "\n" + KEY)
    assert rotated.verify(token, T0).sub == "alice"  # (signed by the old key: still valid)
    fresh = rotated.issue("bob", "user", T0, 900)
    with pytest.raises(BadCredential):
        old.verify(fresh, T0)  # (signed by the new key)
    assert AccessKeys.from_text("n" * 40).verify(fresh, T0).sub == "bob"
    with pytest.raises(ValueError):
        AccessKeys.from_text("too short")


def test_failed_logins_are_limited_per_user_and_per_address_over_a_window() -> None:
    lim = LoginLimiter(per_user=3, per_address=5, window=60.0)
    for i in range(3):
        assert lim.wait("alice", "10.0.0.1", T0 + i) == 0
        lim.failed("alice", "10.0.0.1", T0 + i)
    assert lim.wait("alice", "10.0.0.1", T0 + 3) == pytest.approx(57.0)  # (until the first failure is 60 s old)
    assert lim.wait("alice", "10.0.0.9", T0 + 3) > 0  # per user, from any address
    assert lim.wait("bob", "10.0.0.1", T0 + 3) == 0  # the address has room for 2 more
    lim.failed("bob", "10.0.0.1", T0 + 3)
    lim.failed("carol", "10.0.0.1", T0 + 4)
    assert lim.wait("dave", "10.0.0.1", T0 + 5) == pytest.approx(55.0)  # per address, for any name
    assert lim.wait("dave", "10.0.0.2", T0 + 5) == 0
    assert lim.wait("alice", "10.0.0.9", T0 + 60.5) == 0  # the window passed by
    lim.succeeded("bob")
    assert lim.wait("bob", "10.0.0.2", T0 + 5) == 0


def test_the_limiter_remembers_a_bounded_number_of_names() -> None:
    lim = LoginLimiter(per_user=1, per_address=1000, window=60.0, max_keys=10)
    for i in range(100):
        lim.failed(f"u{i}", "a", T0)
    assert len(lim._fails) <= 10
    assert lim.wait("u99", "b", T0) > 0


def _authenticator(now: list[float]) -> tuple[Authenticator, Principals, dict[str, str]]:
    principals = Principals()
    secrets = {}
    tokens = []
    for name, role, user, queues, expires, revoked in (
            ("w", "worker", None, "q1,q2", None, None), ("u", "user", "alice", None, None, None),
            ("old", "admin", None, None, T0 + 10, None), ("gone", "admin", None, None, None, T0)):
        secret, tid = new_token()
        secrets[name] = secret
        tokens.append(TokenRecord(tid, token_hash(secret), name, role, user, queues, expires, revoked, T0))
    users = [UserRecord("alice", "user", hash_password("pw"), False, T0, T0),
             UserRecord("eve", "admin", hash_password("pw"), True, T0, T0)]
    principals.load(users, tokens, "v1")
    return Authenticator(None, principals, AccessKeys.from_text(KEY), lambda: now[0]), principals, secrets


def test_the_authenticator_finds_api_tokens_and_access_tokens_and_refuses_the_rest_alike() -> None:
    now = [T0]
    auth, principals, secrets = _authenticator(now)
    w = auth.authenticate(secrets["w"], "worker")
    assert (w.role, w.owner, w.queues, w.sees_all) == ("worker", f"token:{secrets['w'][3:11]}",
                                                       frozenset({"q1", "q2"}), False)
    u = auth.authenticate(secrets["u"].encode(), "client")
    assert (u.name, u.role, u.owner, u.sees_all) == ("alice", "user", "alice", False)
    assert auth.authenticate(secrets["old"], "client").sees_all
    keys = auth.keys
    assert keys is not None
    j = auth.authenticate(keys.issue("alice", "user", T0, 60), "client")
    assert (j.name, j.role, j.owner, j.expires_at) == ("alice", "user", "alice", T0 + 60)
    refused = [None, "", "rq_nope", secrets["gone"], secrets["w"] + "x", keys.issue("eve", "admin", T0, 60),
               keys.issue("nobody", "admin", T0, 60), b"\xff\xfe"]
    now[0] = T0 + 10
    refused += [secrets["old"], keys.issue("alice", "user", T0, 10)]  # (expired at T0 + 10)
    for given in refused:
        with pytest.raises(Unauthenticated) as err:
            auth.authenticate(given, "client")
        assert (err.value.code, str(err.value)) == ("unauthorized", BAD_TOKEN), given
    assert not auth.open
    assert auth.still_valid(u, now[0]) and not auth.still_valid(j, T0 + 60)
    principals.load([UserRecord("alice", "user", "x", True, T0, T0)], [], "v2")  # alice disabled
    assert not auth.still_valid(u, now[0])
    with pytest.raises(Unauthenticated):
        auth.authenticate(secrets["u"], "client")  # (an API token acting for a disabled user)


def test_the_shared_token_still_works_beside_users() -> None:
    now = [T0]
    auth, _, _ = _authenticator(now)
    auth.shared = "s3cret"
    ident = auth.authenticate("s3cret", "watcher", "10.0.0.1:5")
    assert (ident.role, ident.owner, ident.sees_all) == ("viewer", None, True)
    with pytest.raises(Unauthenticated):
        auth.authenticate("s3cre", "client")
