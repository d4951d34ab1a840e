"""One place that knows which strings are secret, and scrubs them from text.

Every secret resolved from configuration is registered here; the log pipeline, error
messages, ``ferryman status`` output and URLs shown to users all pass through
:func:`redact`. Query parameters and headers whose *names* look secret are masked even
when their value was never registered (a key typed into a URL by hand).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

SECRET_NAMES = frozenset(
    {
        "key",
        "apikey",
        "api_key",
        "api-key",
        "appkey",
        "app_key",
        "token",
        "access_token",
        "refresh_token",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "cerb-auth",
        "cookie",
        "set-cookie",
        "signature",
        "sig",
        "webhook-signature",
    }
)

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember ``value`` as secret; short values are ignored (they would mask ordinary words)."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # Also mask the forms a secret takes inside URLs and Basic auth headers.
        from base64 import b64encode
        from urllib.parse import quote, quote_plus

        for variant in (quote(value, safe=""), quote_plus(value)):
            if variant != value:
                _secrets.add(variant)
        _ = b64encode  # Basic credentials are registered whole by the auth layer
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_url(url: str) -> str:
    """A URL with user info and secret-looking query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in SECRET_NAMES else v) for k, v in pairs], safe="*")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with secret-looking ones masked and registered secrets scrubbed from the rest."""
    return {k: (MASK if k.lower() in SECRET_NAMES else redact(v)) for k, v in headers.items()}


#: field names masked in structured data (log events); ``key`` alone is a record key there,
#: while in a URL query (``?key=``) it is an API key and masked by :func:`redact_url`
SECRET_FIELDS = SECRET_NAMES - {"key"}


def redact_obj(value: Any) -> Any:
    """Recursively scrub strings inside dicts, lists and tuples (log event dicts)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            k: (MASK if isinstance(k, str) and k.lower() in SECRET_FIELDS and v else redact_obj(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_obj(v) for v in value)
    return value
