"""Authentication styles for :class:`~ferryman.http.HttpClient`.

Each is an :class:`httpx.Auth` that registers its secret values with
:func:`ferryman.redact.register_secret` the moment it is built, so the secret is masked in
every log line and error from then on, and that exposes a ``fingerprint``: a one-way
hash naming the credential, used to share a rate budget between clients with the same
credential without ever storing the secret.

For a signed scheme (Cerb's legacy ``Cerb-Auth``), subclass :class:`httpx.Auth`,
override ``auth_flow`` to set the header, call ``register_secret`` on the key and
secret, and set ``fingerprint = credential_fingerprint(...)``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Generator
from functools import lru_cache

import httpx

from ferryman.redact import register_secret

__all__ = ["ApiKeyHeader", "ApiKeyQuery", "Basic", "Bearer", "credential_fingerprint"]

_SALT = b"ferryman.http.credential-fingerprint.v1"


@lru_cache(maxsize=256)
def _slow_hash(material: bytes) -> str:
    # Deliberately slow: a fingerprint may be stored in a shared database, and a weak
    # password must not be recoverable from it by a quick dictionary attack.
    return hashlib.pbkdf2_hmac("sha256", material, _SALT, 50_000).hex()[:24]


def credential_fingerprint(kind: str, *parts: str) -> str:
    """A stable, one-way name for a credential: ``kind:`` plus a salted PBKDF2 hash.

    The same secret gives the same fingerprint in every process, so budgets shared
    through a database line up.
    """
    material = "\x00".join((kind, *parts)).encode()
    return f"{kind}:{_slow_hash(material)}"


class ApiKeyHeader(httpx.Auth):
    """A key sent in a header on every request: ``ApiKeyHeader("X-Api-Key", key)``."""

    def __init__(self, name: str, value: str) -> None:
        register_secret(value)
        self.name = name
        self._value = value
        self.fingerprint = credential_fingerprint("header", name.lower(), value)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[self.name] = self._value
        yield request


class ApiKeyQuery(httpx.Auth):
    """A key sent as a query parameter: ``ApiKeyQuery("key", key)`` → ``?key=...``.

    The key is in every URL, which is why every URL the HTTP layer logs or puts in an
    error goes through :func:`ferryman.redact.redact_url`.
    """

    def __init__(self, param: str, value: str) -> None:
        register_secret(value)
        self.param = param
        self._value = value
        self.fingerprint = credential_fingerprint("query", param, value)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.url = request.url.copy_set_param(self.param, self._value)
        yield request


class Basic(httpx.Auth):
    """HTTP Basic. For token-as-user APIs (Clevertim) use ``Basic(token, "X")``.

    Both user and password are registered as secrets (the user *is* the secret in the
    token-as-user style), as are the base64 token and the whole header value.
    """

    def __init__(self, user: str, password: str) -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        for secret in (user, password, token):
            register_secret(secret)
        self.user = user
        self._header = f"Basic {token}"
        self.fingerprint = credential_fingerprint("basic", user, password)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class Bearer(httpx.Auth):
    """``Authorization: Bearer <token>`` (OAuth2 access tokens, personal tokens)."""

    def __init__(self, token: str) -> None:
        register_secret(token)
        self._header = f"Bearer {token}"
        self.fingerprint = credential_fingerprint("bearer", token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request
