"""Options every HTTP-based connector shares; a connector's own model inherits them."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ferryman.connector import ConnectorOptions
from ferryman.http._urls import insecure_url_problem
from ferryman.redact import redact_url

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "MAX_REDIRECTS", "HttpOptions", "RateLimitOptions"]

#: the largest response body read by default (64 MiB): far above any sane page, far below
#: what would take a small host's memory (a 200 MiB body cost 450 MiB to 1.1 GB uncapped)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: with ``follow_redirects: same_host``, a longer chain is taken for a loop
MAX_REDIRECTS = 5

_UNIT_SECONDS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_SIZE = re.compile(r"(?P<n>\d+)\s*(?:(?P<unit>[kmg])(?:i?b)?|b)?")
_SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_RATE = re.compile(r"(?P<n>\d+)\s*(?:/|per)\s*(?P<k>\d+(?:\.\d+)?)?\s*(?P<unit>[a-z]+)")


class RateLimitOptions(BaseModel):
    """At most ``requests`` requests in any ``per`` seconds.

    YAML accepts ``{requests: 200, per: 60}`` or a string: ``"200/min"``, ``"100/15s"``,
    ``"5/second"``, ``"1000 per hour"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: int = Field(gt=0)
    per: float = Field(gt=0, description="seconds")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _RATE.fullmatch(value.strip().lower())
        if match is None or match["unit"] not in _UNIT_SECONDS:
            raise ValueError(f"not a rate limit: {value!r} (use e.g. 200/min, 100/15s, or {{requests, per}})")
        return {"requests": int(match["n"]), "per": float(match["k"] or 1) * _UNIT_SECONDS[match["unit"]]}

    @property
    def interval(self) -> float:
        """Seconds between two requests at the steady rate."""
        return self.per / self.requests

    def __str__(self) -> str:
        return f"{self.requests}/{self.per:g}s"


class HttpOptions(ConnectorOptions):
    """The ``systems.NAME`` keys of any connector that talks HTTP.

    A connector sets its own defaults by redeclaring a field, e.g.
    ``rate_limit: RateLimitOptions | None = RateLimitOptions(requests=200, per=60)``.
    """

    base_url: str = Field(description="Root of the API, e.g. https://billing.example.com/api")
    connect_timeout: float = Field(10, gt=0, description="seconds to open a connection")
    read_timeout: float = Field(60, gt=0, description="seconds to wait for response data")
    rate_limit: RateLimitOptions | None = Field(
        None, description="client-side limit shared by every pipeline using this host and credential"
    )
    allow_insecure_http: bool = Field(False, description="allow plain http:// to a host that is not loopback")
    max_retries: int = Field(5, ge=0, description="retries after the first attempt")
    backoff_base: float = Field(0.5, gt=0, description="seconds; full-jitter exponential backoff starts here")
    backoff_cap: float = Field(30, gt=0, description="seconds; no single backoff wait is longer")
    defer_after: float = Field(
        60, ge=0, description="a Retry-After longer than this many seconds ends the run as deferred"
    )
    verify_tls: bool = True
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers on every request")
    max_response_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BYTES,
        gt=0,
        description="bytes, or with a unit (64MB, 512KB; powers of 1024): a larger response body fails the "
        "run instead of filling memory",
    )
    follow_redirects: Literal["never", "same_host"] = Field(
        "never",
        description="never: a 3xx answer fails with its Location; same_host: follow it when it stays on the "
        "system's host and scheme (credentials never go to another host)",
    )

    @field_validator("max_response_bytes", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _SIZE.fullmatch(value.strip().lower())
        if match is None:
            raise ValueError(f"max_response_bytes: not a size: {value!r} (use bytes, or e.g. 64MB, 512KB)")
        return int(match["n"]) * _SIZE_UNITS[match["unit"]]

    @field_validator("follow_redirects", mode="before")
    @classmethod
    def _redirect_policy(cls, value: Any) -> Any:
        if value is False:
            return "never"
        if value is True:
            # Following anywhere would hand the credentials to whatever host a Location names.
            raise ValueError("follow_redirects: true is not accepted; use same_host (or never)")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not re.match(r"https?://[^/?#]+", value, re.IGNORECASE):
            raise ValueError(f"not an http(s) URL: {redact_url(value)!r}")
        return value

    @model_validator(mode="after")
    def _check_scheme(self) -> HttpOptions:
        problem = insecure_url_problem(self.base_url, self.allow_insecure_http)
        if problem:
            raise ValueError(problem)
        return self
