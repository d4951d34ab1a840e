"""Cerb's legacy signed ``Cerb-Auth`` header, for both the connector and its simulator.

Cerb documents the scheme (docs: *API > Authentication*; its PHP library and REST front
controller do exactly this)::

    string_to_sign = VERB \\n DATE \\n PATH \\n SORTED_QUERY \\n PAYLOAD \\n md5(secret) \\n
    Cerb-Auth: <access_key>:<md5(string_to_sign) in lowercase hex>

- ``DATE`` is the RFC 2822 ``Date:`` header sent with the request (``X-Date`` wins when
  both are present); the server refuses it unless it is less than 600 s from its clock.
- ``PATH`` is the URL path as sent (percent-encoding kept), without scheme, host or query.
- ``SORTED_QUERY`` is the raw query string with its ``name=value`` parts sorted by name
  (stable, so repeated names keep their order), without the leading ``?``.
- ``PAYLOAD`` is the raw request body (empty for GET and DELETE).
- ``md5(secret)`` is the secret key's MD5 in lowercase hex: the secret itself never travels.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator
from email.utils import formatdate

import httpx

from ferryman.http.auth import credential_fingerprint
from ferryman.redact import register_secret

__all__ = ["CerbAuth", "sign", "sort_query", "string_to_sign"]


def sort_query(query: str) -> str:
    """The query string as Cerb signs it: parts sorted by name, stable, no leading ``?``."""
    query = query.lstrip("?")
    if not query:
        return ""
    return "&".join(sorted(query.split("&"), key=lambda part: part.split("=", 1)[0]))


def string_to_sign(verb: str, date: str, path: str, query: str, payload: str, secret: str) -> str:
    """The text whose MD5 is the signature (``secret`` is the plain secret key)."""
    secret_md5 = hashlib.md5(secret.encode(), usedforsecurity=False).hexdigest()
    return f"{verb.upper()}\n{date}\n{path}\n{sort_query(query)}\n{payload}\n{secret_md5}\n"


def sign(verb: str, date: str, path: str, query: str, payload: str, secret: str) -> str:
    """The lowercase hex MD5 signature of one request."""
    text = string_to_sign(verb, date, path, query, payload, secret)
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class CerbAuth(httpx.Auth):
    """Sign every request with ``Date`` and ``Cerb-Auth: <access_key>:<signature>``.

    Each attempt (a retry included) is signed afresh with the current time, so a retry
    after a long ``Retry-After`` still falls inside Cerb's 10-minute window. ``clock``
    gives epoch seconds (tests use it to sign with a skewed clock).
    """

    requires_request_body = True  # the body is part of the signature

    def __init__(self, access_key: str, secret_key: str, *, clock: Callable[[], float] = time.time) -> None:
        # The MD5 of the secret is what the signature is keyed with: as good as the secret.
        register_secret(secret_key)
        register_secret(hashlib.md5(secret_key.encode(), usedforsecurity=False).hexdigest())
        self.access_key = access_key
        self._secret = secret_key
        self._clock = clock
        self.fingerprint = credential_fingerprint("cerb-auth", access_key, secret_key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        date = formatdate(self._clock(), usegmt=True)
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        payload = request.content.decode("utf-8", "replace")
        signature = sign(request.method, date, path, query, payload, self._secret)
        request.headers["Date"] = date
        request.headers["Cerb-Auth"] = f"{self.access_key}:{signature}"
        yield request
