"""HttpOptions and RateLimitOptions as a connector's config model sees them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ferryman.http import HttpOptions, RateLimitOptions


@pytest.mark.parametrize(
    ("value", "requests", "per"),
    [
        ("200/min", 200, 60),
        ("100/15s", 100, 15),
        ("5/second", 5, 1),
        ("1000 per hour", 1000, 3600),
        ("10000/day", 10000, 86400),
        ({"requests": 200, "per": 60}, 200, 60),
    ],
)
def test_rate_limit_forms(value, requests: int, per: float) -> None:
    limit = HttpOptions(base_url="https://a.example", rate_limit=value).rate_limit
    assert limit == RateLimitOptions(requests=requests, per=per)


@pytest.mark.parametrize("value", ["fast", "0/min", "10/fortnight", {"requests": 10}])
def test_bad_rate_limits_are_refused(value) -> None:
    with pytest.raises(ValidationError):
        HttpOptions(base_url="https://a.example", rate_limit=value)


def test_defaults_and_connector_overrides() -> None:
    class ClientexecOptions(HttpOptions):
        rate_limit: RateLimitOptions | None = RateLimitOptions(requests=200, per=60)

    options = ClientexecOptions(base_url="https://billing.example/api")
    assert options.rate_limit is not None and options.rate_limit.interval == pytest.approx(0.3)
    assert (options.connect_timeout, options.read_timeout, options.max_retries, options.defer_after) == (10, 60, 5, 60)
    assert ClientexecOptions(base_url="https://billing.example", rate_limit=None).rate_limit is None
    with pytest.raises(ValidationError, match="extra"):
        ClientexecOptions(base_url="https://billing.example", rate_limt="10/s")  # typo is caught


def test_plain_http_is_refused_at_config_time_unless_loopback_or_allowed() -> None:
    with pytest.raises(ValidationError, match="allow_insecure_http"):
        HttpOptions(base_url="http://helpdesk.example.com")
    assert HttpOptions(base_url="http://helpdesk.example.com", allow_insecure_http=True)
    assert HttpOptions(base_url="http://127.0.0.1:8080")
    assert HttpOptions(base_url="http://[::1]:8080")
    assert HttpOptions(base_url="http://localhost")


def test_a_bad_base_url_is_reported_without_its_key() -> None:
    with pytest.raises(ValidationError) as caught:
        HttpOptions(base_url="helpdesk.example.com/api?key=abcd1234secret")
    assert "abcd1234secret" not in str(caught.value).split("input_value")[0]
