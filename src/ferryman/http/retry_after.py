"""Pure parsing of the headers a server uses to tell us to slow down or wait.

- ``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date in any of the three
  forms a recipient must accept (§5.6.7): IMF-fixdate, RFC 850 and asctime.
- ``RateLimit`` / ``RateLimit-Policy`` (IETF draft-ietf-httpapi-ratelimit-headers), in the
  structured-field forms of the later drafts (``"default";r=0;t=10`` and
  ``limit=100, remaining=0, reset=10``) and the separate ``RateLimit-Limit``,
  ``RateLimit-Remaining``, ``RateLimit-Reset`` headers of the early drafts.
- ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``, whose reset is delta-seconds on some
  APIs and a Unix timestamp on others.

Nothing here does I/O or reads the clock: ``now`` is passed in, so the tables in the tests
pin the behaviour down exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["RateLimitHint", "parse_http_date", "parse_ratelimit_headers", "parse_retry_after"]

_MONTHS = {
    m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
_TIME = r"(?P<H>\d{2}):(?P<M>\d{2}):(?P<S>\d{2})"
# Sun, 06 Nov 1994 08:49:37 GMT
_IMF_FIXDATE = re.compile(
    rf"[A-Za-z]{{3}},\s+(?P<d>\d{{1,2}})\s+(?P<mon>[A-Za-z]{{3}})\s+(?P<y>\d{{4}})\s+{_TIME}\s+(?:GMT|UTC)"
)
# Sunday, 06-Nov-94 08:49:37 GMT
_RFC850 = re.compile(rf"[A-Za-z]{{6,9}},\s+(?P<d>\d{{1,2}})-(?P<mon>[A-Za-z]{{3}})-(?P<y>\d{{2}})\s+{_TIME}\s+GMT")
# Sun Nov  6 08:49:37 1994
_ASCTIME = re.compile(rf"[A-Za-z]{{3}}\s+(?P<mon>[A-Za-z]{{3}})\s+(?P<d>\d{{1,2}})\s+{_TIME}\s+(?P<y>\d{{4}})")
_DELAY = re.compile(r"\d+(?:\.\d+)?")

# A reset value this large cannot be a delta (it would be 31 years): it is a Unix timestamp.
_EPOCH_SECONDS_FLOOR = 1_000_000_000
_EPOCH_MILLIS_FLOOR = 100_000_000_000


def parse_http_date(value: str, now: datetime) -> datetime | None:
    """An HTTP-date in IMF-fixdate, RFC 850 or asctime form as aware UTC, or ``None``.

    HTTP-dates are always UTC (asctime carries no zone and means GMT). A two-digit RFC 850
    year that would land more than 50 years after ``now`` is read as the most recent past
    year with those digits (RFC 9110 §5.6.7).
    """
    text = value.strip()
    match = _IMF_FIXDATE.fullmatch(text) or _RFC850.fullmatch(text) or _ASCTIME.fullmatch(text)
    if match is None:
        return None
    month = _MONTHS.get(match["mon"].lower())
    if month is None:
        return None
    year = int(match["y"])
    if len(match["y"]) == 2:
        year += now.year // 100 * 100
        if year > now.year + 50:
            year -= 100
    try:
        # A leap second (":60") is allowed in HTTP-dates; datetime cannot hold it.
        return datetime(
            year, month, int(match["d"]), int(match["H"]), int(match["M"]), min(int(match["S"]), 59), tzinfo=UTC
        )
    except ValueError:
        return None


def parse_retry_after(value: str, now: datetime) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or ``None`` if it is garbage.

    ``"120"`` → 120.0; an HTTP-date → the seconds from ``now`` until then; a date in the
    past → 0.0 (retry now). Fractional seconds are accepted although the RFC only has
    whole ones. Anything else (``"abc"``, ``"-5"``) → ``None``: the caller falls back to its
    own backoff and should say so in a warning.
    """
    text = value.strip()
    if _DELAY.fullmatch(text):
        return float(text)
    when = parse_http_date(text, now)
    if when is None:
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True)
class RateLimitHint:
    """What a response said about the client's remaining quota.

    ``reset`` is always seconds from the response's ``now`` (never a timestamp);
    ``window`` is the policy's window in seconds when the server gave one.
    """

    limit: int | None
    remaining: int | None
    reset: float | None
    window: float | None = None
    policy: str | None = None
    source: str = ""

    def pause(self) -> float:
        """Seconds to hold back the next request so the quota is not exceeded.

        Quota used up → wait for the reset. Nearly used up (at most 5% of the limit, or one
        request when the limit is unknown) → spread what is left evenly over the time to
        the reset, so the client slows down smoothly instead of stopping dead. Otherwise 0.
        """
        if self.remaining is None or self.reset is None:
            return 0.0
        if self.remaining <= 0:
            return self.reset
        low = max(1, self.limit // 20) if self.limit else 1
        if self.remaining <= low:
            return self.reset / (self.remaining + 1)
        return 0.0


def parse_ratelimit_headers(headers: Mapping[str, str], now: datetime) -> RateLimitHint | None:
    """The most constraining rate-limit hint in ``headers``, or ``None`` if there is none.

    ``headers`` may be an ``httpx.Headers`` or any mapping (names are matched
    case-insensitively). When several policies or header families are present, the one
    that asks for the longest pause wins.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    hints: list[RateLimitHint] = []
    if "ratelimit" in lower:
        hints.extend(_structured_hints(lower["ratelimit"], lower.get("ratelimit-policy")))
    early = _separate_hint(lower, "ratelimit-", "RateLimit-*", now)
    if early is not None:
        hints.append(early)
    legacy = _separate_hint(lower, "x-ratelimit-", "X-RateLimit-*", now)
    if legacy is not None:
        hints.append(legacy)
    if not hints:
        return None
    return max(hints, key=lambda h: h.pause())  # max() keeps the first of equals


# -- structured fields (RFC 8941), only as much as the draft needs ---------------------


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf).strip())
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf).strip())
    return [p for p in parts if p]


def _bare(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass(frozen=True, slots=True)
class _Member:
    key: str | None  # dictionary member name; None for a list item
    value: str
    params: dict[str, str]


def _members(text: str) -> list[_Member]:
    members = []
    for raw in _split_top(text, ","):
        head, *rest = _split_top(raw, ";") or [""]
        params = {}
        for param in rest:
            name, _, value = param.partition("=")
            params[name.strip().lower()] = _bare(value) if value else "?1"
        if "=" in head and not head.startswith('"'):
            key, _, value = head.partition("=")
            members.append(_Member(key.strip().lower(), _bare(value), params))
        else:
            members.append(_Member(None, _bare(head), params))
    return members


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    match = re.match(r"\s*(-?\d+)", value)
    return int(match.group(1)) if match else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _structured_hints(ratelimit: str, policy_header: str | None) -> list[RateLimitHint]:
    members = _members(ratelimit)
    policies = _members(policy_header) if policy_header else []
    if members and all(m.key is not None for m in members):
        # draft 05/06: ``RateLimit: limit=100, remaining=0, reset=10`` + ``RateLimit-Policy: 100;w=60``
        fields = {m.key: m.value for m in members}
        window = _float(policies[0].params.get("w")) if policies else None
        limit = _int(fields.get("limit"))
        if limit is None and policies:
            limit = _int(policies[0].value)
        return [
            RateLimitHint(limit, _int(fields.get("remaining")), _float(fields.get("reset")), window, None, "RateLimit")
        ]
    # draft 07+: ``RateLimit: "default";r=0;t=10`` + ``RateLimit-Policy: "default";q=100;w=60``
    by_name = {p.value: p for p in policies if p.key is None}
    hints = []
    for item in members:
        if item.key is not None:
            continue
        policy = by_name.get(item.value)
        hints.append(
            RateLimitHint(
                limit=_int(policy.params.get("q")) if policy else None,
                remaining=_int(item.params.get("r")),
                reset=_float(item.params.get("t")),
                window=_float(policy.params.get("w")) if policy else None,
                policy=item.value,
                source="RateLimit",
            )
        )
    return hints


def _separate_hint(lower: Mapping[str, str], prefix: str, source: str, now: datetime) -> RateLimitHint | None:
    limit = _int(lower.get(prefix + "limit"))
    remaining = _int(lower.get(prefix + "remaining"))
    reset_raw = lower.get(prefix + "reset")
    if limit is None and remaining is None and reset_raw is None:
        return None
    reset = _reset_seconds(reset_raw, now) if reset_raw is not None else None
    return RateLimitHint(limit, remaining, reset, None, None, source)


def _reset_seconds(value: str, now: datetime) -> float | None:
    """A reset value as seconds from ``now``: delta-seconds, Unix seconds/millis or HTTP-date."""
    number = _float(value.strip())
    if number is None:
        when = parse_http_date(value, now)
        return None if when is None else max(0.0, (when - now).total_seconds())
    if number >= _EPOCH_MILLIS_FLOOR:
        number /= 1000
    if number >= _EPOCH_SECONDS_FLOOR:
        return max(0.0, number - now.timestamp())
    return max(0.0, number)
