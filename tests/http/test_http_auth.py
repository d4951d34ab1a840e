"""Auth styles: what they send, that they register their secrets, and their fingerprints."""

from __future__ import annotations

import base64

import httpx

from ferryman.http import ApiKeyHeader, ApiKeyQuery, Basic, Bearer
from ferryman.redact import redact


def sent(auth: httpx.Auth, url: str = "https://a.example/x?key=old&page=2") -> httpx.Request:
    return next(auth.sync_auth_flow(httpx.Request("GET", url)))


def test_each_style_sends_its_credential() -> None:
    assert sent(ApiKeyHeader("X-Api-Key", "k123456")).headers["x-api-key"] == "k123456"
    assert sent(ApiKeyQuery("key", "k123456")).url.params.multi_items() == [("key", "k123456"), ("page", "2")]
    token = base64.b64encode(b"tok123456:X").decode()
    assert sent(Basic("tok123456", "X")).headers["authorization"] == f"Basic {token}"
    assert sent(Bearer("b123456")).headers["authorization"] == "Bearer b123456"


def test_secrets_are_registered_when_the_auth_is_built() -> None:
    Basic("user@example.com", "pass-word-1")
    token = base64.b64encode(b"user@example.com:pass-word-1").decode()
    ApiKeyQuery("key", "q/key+1234")
    text = f"pw pass-word-1 token {token} key q%2Fkey%2B1234"
    assert redact(text) == "pw *** token *** key ***"


def test_fingerprints_name_the_credential_without_holding_it() -> None:
    one, same, other = (
        ApiKeyHeader("X-Key", "secret-1"),
        ApiKeyHeader("x-key", "secret-1"),
        ApiKeyHeader("X-Key", "secret-2"),
    )
    assert one.fingerprint == same.fingerprint != other.fingerprint
    assert one.fingerprint.startswith("header:") and "secret-1" not in one.fingerprint
    assert Basic("a", "b").fingerprint != Basic("a", "c").fingerprint
    assert ApiKeyQuery("key", "secret-1").fingerprint != one.fingerprint  # style is part of the name
