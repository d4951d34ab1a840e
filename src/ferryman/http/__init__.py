"""The HTTP layer every API connector is built on.

::

    registry = HttpRegistry()                      # one per process, shared by all pipelines
    options = MyConnectorOptions(base_url="https://desk.example.com/api", rate_limit="200/min")
    async with HttpClient("helpdesk", options, registry=registry, auth=ApiKeyQuery("key", key)) as http:
        async for page in paginate(http, "/Tickets", PageNumber(size=50), records_path="items"):
            ...

What it does for a connector: a smooth client-side rate limit per (host, credential)
shared across pipelines; ``Retry-After`` (never retried earlier, deferred when too long)
and ``RateLimit``/``X-RateLimit-*`` obeyed; full-jitter retries of what is safe to retry;
failures mapped to :mod:`ferryman.errors`; secrets kept out of logs and errors; plain
``http://`` refused off loopback; bodies capped at ``max_response_bytes`` while they
arrive; redirects refused, or followed on the system's own host when
``follow_redirects: same_host`` says so. Building blocks live in :mod:`ferryman.http.auth`,
:mod:`ferryman.http.codecs`, :mod:`ferryman.http.pagination` and
:mod:`ferryman.http.retry_after`.
"""

from ferryman.http._client import IDEMPOTENT_METHODS, HttpClient, ResponseHook
from ferryman.http._clock import Clock
from ferryman.http._options import HttpOptions, RateLimitOptions
from ferryman.http._registry import HttpMetrics, HttpRegistry, InMemoryRateBudget, RateBudget, RateLimiter
from ferryman.http._urls import host_key, is_loopback
from ferryman.http.auth import ApiKeyHeader, ApiKeyQuery, Basic, Bearer
from ferryman.http.pagination import (
    BodyCursor,
    BodyNextUrl,
    LinkHeader,
    NextRequest,
    OffsetLimit,
    PageNumber,
    Paginator,
    extract,
    paginate,
)
from ferryman.http.retry_after import RateLimitHint, parse_ratelimit_headers, parse_retry_after

__all__ = [
    "IDEMPOTENT_METHODS",
    "ApiKeyHeader",
    "ApiKeyQuery",
    "Basic",
    "Bearer",
    "BodyCursor",
    "BodyNextUrl",
    "Clock",
    "HttpClient",
    "HttpMetrics",
    "HttpOptions",
    "HttpRegistry",
    "InMemoryRateBudget",
    "LinkHeader",
    "NextRequest",
    "OffsetLimit",
    "PageNumber",
    "Paginator",
    "RateBudget",
    "RateLimitHint",
    "RateLimitOptions",
    "RateLimiter",
    "ResponseHook",
    "extract",
    "host_key",
    "is_loopback",
    "paginate",
    "parse_ratelimit_headers",
    "parse_retry_after",
]
