"""One place that knows which strings are secret, and scrubs them from text.

Every secret resolved from configuration is registered here; the log pipeline, error
messages, ``ferryman status`` output and URLs shown to users all pass through
:func:`redact`. Query parameters and headers whose *names* look secret are masked even
when their value was never registered (a key typed into a URL by hand).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

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
_registered: set[str] = set()  # the values as given
_secrets: set[str] = set()  # and every form they take
_pattern: re.Pattern[str] | None = None
#: every 6-character piece of every registered form -> (form, where the piece starts)
_pieces: dict[str, list[tuple[str, int]]] = {}

#: the shortest piece of a secret masked where a text was cut through it; shorter ones
#: would mask ordinary words, and reveal too little to matter
PIECE = 6
_MIN_FORM = 8  # shorter base64 fragments are too likely to occur in ordinary text
_ELLIPSIS = ".\u2026 "  # what may follow a cut
_LOWER_HEX = re.compile(r"%[0-9A-F]{2}")


def _forms(value: str) -> set[str]:
    """The ways ``value`` can appear in text: as is, escaped by ``repr`` of a str or of its
    bytes (``Illegal header value b'KEY\\n'``), JSON-escaped, percent-encoded, and the
    stretches of base64 that only the secret decides, whatever came before it
    (``Basic base64(user:secret)``)."""
    forms = {value}
    raw = value.encode("utf-8", "surrogatepass")
    # repr quotes with ' unless the text holds one; inside a longer text it may be escaped
    forms.add(repr(value)[1:-1])
    forms.add(repr(value + "'\"")[1:-4])
    forms.add(repr(raw)[2:-1])
    forms.add(repr(raw + b"'\"")[2:-4])
    forms.add(json.dumps(value)[1:-1])
    forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
    for variant in (quote(value, safe=""), quote(value), quote_plus(value)):
        forms.add(variant)
        forms.add(_LOWER_HEX.sub(lambda m: m.group().lower(), variant))
    for lead in range(3):
        # with `lead` bytes before it, the secret's base64 starts at a 4-character group
        # boundary after the group it shares with them, and ends before the group it may
        # share with what follows
        encoded = base64.b64encode(bytes(lead) + raw).decode("ascii")
        start = 4 if lead else 0
        end = 4 * ((lead + len(raw)) // 3)
        core = encoded[start:end]
        if len(core) >= _MIN_FORM:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return {f for f in forms if f}


def register_secret(value: str | None) -> None:
    """Remember ``value`` as secret; short values are ignored (they would mask ordinary words)."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _registered:
            return
        forms = _forms(value)
        _registered.add(value)
        _secrets.update(forms)
        for form in forms:
            for i in range(len(form) - PIECE + 1):
                _pieces.setdefault(form[i : i + PIECE], []).append((form, i))
        _pattern = re.compile(_trie_regex(_secrets))


def _trie_regex(words: Iterable[str]) -> str:
    """One regex matching the longest of ``words`` at each place, built as a prefix tree:
    a flat alternation is tried word by word at every character, and each secret has
    a dozen forms."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = True

    def render(node: dict[str, Any]) -> str:
        # a run without branches is walked, not recursed: a long token must not reach
        # the recursion limit
        run = []
        while len(node) == 1 and "" not in node:
            ((char, node),) = node.items()
            run.append(re.escape(char))
        branches = [re.escape(char) + render(child) for char, child in sorted(node.items()) if char]
        body = ""
        if branches:
            body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
            if "" in node:  # a word ends here; a longer one is preferred where it matches
                body = "(?:" + body + ")?"
        return "".join(run) + body

    return render(trie)


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def clear_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _pattern
    with _lock:
        _registered.clear()
        _secrets.clear()
        _pieces.clear()
        _pattern = None


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``, in any of its forms.

    A text someone cut before redacting may end with the start of a secret, or begin with
    its end: such a piece (6 characters or more) is masked too.
    """
    pattern = _pattern
    if pattern is None or not text:
        return text
    return _mask_edges(pattern.sub(MASK, text))


def _mask_edges(text: str) -> str:
    pieces = _pieces
    body = text.rstrip(_ELLIPSIS)
    tail = body[-PIECE:]
    longest = 0
    for form, at in pieces.get(tail, ()):
        candidate = form[: at + PIECE]
        if len(candidate) > longest and body.endswith(candidate):
            longest = len(candidate)
    if longest:
        text = body[:-longest] + MASK + text[len(body) :]
    longest = 0
    for form, at in pieces.get(text[:PIECE], ()):
        candidate = form[at:]
        if len(candidate) > longest and text.startswith(candidate):
            longest = len(candidate)
    if longest:
        text = MASK + text[longest:]
    return text


def redact_cut(text: str, limit: int, *, more: str = "...") -> str:
    """``text`` redacted, then cut to ``limit`` characters (``more`` marks a cut).

    In this order: a secret cut first would survive in part, as a piece no pattern matches.
    """
    text = redact(text)
    if len(text) <= limit:
        return text
    cut = limit
    # a mask cut in two reads as a stray '*'; keep it whole or leave it out
    for back in range(1, len(MASK)):
        if text.startswith(MASK, limit - back):
            cut = limit - back
            break
    return text[:cut] + more


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


def mask_field(name: str, value: Any, hidden: Collection[str] = SECRET_FIELDS) -> Any:
    """A field's value as a report or the conflict journal keeps it: masked whole when the
    field is named like a secret (or is one of ``hidden``, lower-case names), registered
    secrets scrubbed from the rest."""
    if name.lower() in hidden and value not in (None, ""):
        return MASK
    return redact_obj(value)


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
