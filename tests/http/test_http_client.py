"""HttpClient behaviour against a mocked API, on a fake clock (no real waiting)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from ferryman.errors import (
    AuthError,
    DeferredError,
    FatalError,
    MalformedResponseError,
    RecordRejected,
    RetriableError,
)
from ferryman.http import ApiKeyHeader, HttpClient, HttpOptions, HttpRegistry
from ferryman.http.codecs import loads_json

from .support import BASE, START, FakeClock


def client(options: HttpOptions, registry: HttpRegistry, clock: FakeClock, **kwargs) -> HttpClient:
    return HttpClient("helpdesk", options, registry=registry, clock=clock, **kwargs)


def arrivals(route: respx.Route, clock: FakeClock, responses: list[httpx.Response]) -> list[float]:
    """Make ``route`` answer ``responses`` in turn; return the list it stamps arrival times into."""
    times: list[float] = []
    answers = iter(responses)

    def answer(request: httpx.Request) -> httpx.Response:
        times.append(clock.elapsed())
        return next(answers)

    route.mock(side_effect=answer)
    return times


# -- retries -----------------------------------------------------------------------------


async def test_503_then_200_is_retried_for_get(api, options, registry, clock) -> None:
    route = api.get("/tickets").mock(side_effect=[httpx.Response(503), httpx.Response(200, json=[1])])
    async with client(options, registry, clock) as http:
        response = await http.request("GET", "/tickets")
    assert response.status_code == 200
    assert route.call_count == 2
    assert len(clock.sleeps) == 1 and 0 <= clock.sleeps[0] <= options.backoff_base  # full jitter, first step
    assert registry.metrics.value("ferryman_http_retries_total", system="helpdesk") == 1


async def test_500_on_post_is_not_retried(api, options, registry, clock) -> None:
    route = api.post("/tickets").mock(return_value=httpx.Response(500, text="boom"))
    async with client(options, registry, clock) as http:
        with pytest.raises(RetriableError) as caught:
            await http.request("POST", "/tickets", json={"subject": "x"})
    assert route.call_count == 1
    assert caught.value.status == 500
    assert "not retried (POST is not idempotent)" in str(caught.value)


async def test_idempotent_override_retries_a_post(api, options, registry, clock) -> None:
    route = api.post("/search").mock(side_effect=[httpx.Response(502), httpx.Response(200, json={})])
    async with client(options, registry, clock) as http:
        assert (await http.request("POST", "/search", idempotent=True)).status_code == 200
    assert route.call_count == 2


async def test_put_is_not_retried_when_declared_not_idempotent(api, options, registry, clock) -> None:
    route = api.put("/tickets/1").mock(return_value=httpx.Response(500))
    async with client(options, registry, clock) as http:
        with pytest.raises(RetriableError):
            await http.request("PUT", "/tickets/1", json={}, idempotent=False)
    assert route.call_count == 1


async def test_5xx_retries_are_exhausted_with_capped_full_jitter(api, registry, clock) -> None:
    options = HttpOptions(base_url=BASE, max_retries=5, backoff_base=1, backoff_cap=3)
    route = api.get("/tickets").mock(return_value=httpx.Response(503, text="busy"))
    async with client(options, registry, clock) as http:
        with pytest.raises(RetriableError) as caught:
            await http.request("GET", "/tickets")
    assert route.call_count == 6
    assert caught.value.status == 503
    assert "gave up after 6 attempts" in str(caught.value)
    ceilings = [1, 2, 3, 3, 3]  # base * 2**n, capped
    assert len(clock.sleeps) == 5
    assert all(0 <= wait <= ceiling for wait, ceiling in zip(clock.sleeps, ceilings, strict=True))


async def test_429_with_retry_after_waits_at_least_that_long_even_for_post(api, options, registry, clock) -> None:
    times = arrivals(
        api.post("/tickets"),
        clock,
        [httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(201, json={"id": 7})],
    )
    async with client(options, registry, clock) as http:
        response = await http.request("POST", "/tickets", json={"subject": "x"})
    assert response.status_code == 201
    assert len(times) == 2 and times[1] - times[0] >= 1.0
    snapshot = registry.snapshot()
    assert snapshot["ferryman_http_rate_limited_total"] == {(("system", "helpdesk"),): 1}
    assert snapshot["ferryman_http_requests_total"] == {
        (("status", "429"), ("system", "helpdesk")): 1,
        (("status", "201"), ("system", "helpdesk")): 1,
    }
    assert registry.metrics.value("ferryman_http_rate_limit_wait_seconds_total", system="helpdesk") >= 1.0


async def test_429_with_http_date_retry_after_waits_until_then(api, options, registry, clock) -> None:
    then = "Wed, 01 May 2024 12:00:20 GMT"  # START + 20 s
    times = arrivals(
        api.get("/tickets"), clock, [httpx.Response(429, headers={"Retry-After": then}), httpx.Response(200)]
    )
    async with client(options, registry, clock) as http:
        await http.request("GET", "/tickets")
    assert times[1] >= 20.0


async def test_503_with_retry_after_is_retried_for_post(api, options, registry, clock) -> None:
    times = arrivals(
        api.post("/tickets"), clock, [httpx.Response(503, headers={"Retry-After": "5"}), httpx.Response(201)]
    )
    async with client(options, registry, clock) as http:
        assert (await http.request("POST", "/tickets", json={})).status_code == 201
    assert times[1] - times[0] >= 5.0


async def test_garbage_retry_after_warns_and_backs_off_normally(api, options, registry, clock) -> None:
    route = api.get("/tickets").mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "abc"}), httpx.Response(200)]
    )
    async with client(options, registry, clock) as http:
        with capture_logs() as logs:
            await http.request("GET", "/tickets")
    assert route.call_count == 2
    warning = [e for e in logs if e["event"] == "http.retry_after_invalid"]
    assert warning and warning[0]["log_level"] == "warning" and warning[0]["value"] == "abc"
    assert 0 <= clock.sleeps[0] <= options.backoff_base


async def test_retries_exhausted_on_429_carry_retry_after(api, registry, clock) -> None:
    options = HttpOptions(base_url=BASE, max_retries=2)
    api.get("/tickets").mock(return_value=httpx.Response(429, headers={"Retry-After": "3"}))
    async with client(options, registry, clock) as http:
        with pytest.raises(RetriableError) as caught:
            await http.request("GET", "/tickets")
    assert caught.value.status == 429 and caught.value.retry_after == 3.0
    assert clock.elapsed() >= 6.0


async def test_connection_error_on_post_is_retried_because_nothing_was_sent(api, options, registry, clock) -> None:
    route = api.post("/tickets").mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(201)])
    async with client(options, registry, clock) as http:
        assert (await http.request("POST", "/tickets", json={})).status_code == 201
    assert route.call_count == 2


async def test_read_timeout_on_post_is_not_retried(api, options, registry, clock) -> None:
    route = api.post("/tickets").mock(side_effect=httpx.ReadTimeout("slow"))
    async with client(options, registry, clock) as http:
        with pytest.raises(RetriableError) as caught:
            await http.request("POST", "/tickets", json={})
    assert route.call_count == 1
    assert "timed out" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped"), httpx.ReadError("reset")]
)
async def test_network_failures_on_get_are_retried(api, options, registry, clock, error) -> None:
    route = api.get("/tickets").mock(side_effect=[error, httpx.Response(200)])
    async with client(options, registry, clock) as http:
        assert (await http.request("GET", "/tickets")).status_code == 200
    assert route.call_count == 2
    assert registry.metrics.value("ferryman_http_requests_total", system="helpdesk", status="error") == 1


# -- deferral ----------------------------------------------------------------------------


async def test_long_retry_after_defers_and_stores_not_before(api, options, registry, clock) -> None:
    route = api.get("/tickets").mock(return_value=httpx.Response(429, headers={"Retry-After": "120"}))
    async with client(options, registry, clock) as http:
        with capture_logs() as logs, pytest.raises(DeferredError) as caught:
            await http.request("GET", "/tickets")
        assert caught.value.not_before == START + timedelta(seconds=120)
        assert caught.value.host == "api.example.com"
        assert str(caught.value) == (
            "helpdesk: api.example.com deferred until 2024-05-01T12:02:00Z "
            "(HTTP 429 with Retry-After 120s; longer than defer_after=60s)"
        )
        assert await registry.not_before("api.example.com") == START + timedelta(seconds=120)
        assert route.call_count == 1 and clock.sleeps == []
        assert any(e["event"] == "http.deferred" and e["not_before"] == "2024-05-01T12:02:00Z" for e in logs)

        # A later request before not_before defers too, without touching the server.
        clock.current += timedelta(seconds=30)
        with pytest.raises(DeferredError) as again:
            await http.request("GET", "/other")
        assert again.value.not_before == START + timedelta(seconds=120)
        assert route.call_count == 1
    assert registry.metrics.value("ferryman_http_deferrals_total", system="helpdesk") == 2


async def test_deferral_is_shared_by_another_client_of_the_same_host(api, options, registry, clock) -> None:
    api.get("/tickets").mock(return_value=httpx.Response(503, headers={"Retry-After": "3600"}))
    other = api.get("/contacts").mock(return_value=httpx.Response(200))
    async with client(options, registry, clock) as first, client(options, registry, clock) as second:
        with pytest.raises(DeferredError):
            await first.request("GET", "/tickets")
        with pytest.raises(DeferredError):
            await second.request("GET", "/contacts")
    assert other.call_count == 0


async def test_a_short_remaining_deferral_is_waited_out(api, options, registry, clock) -> None:
    times = arrivals(api.get("/tickets"), clock, [httpx.Response(200)])
    await registry.defer("api.example.com", START + timedelta(seconds=30))
    async with client(options, registry, clock) as http:
        await http.request("GET", "/tickets")
    assert times == [30.0]


# -- RateLimit headers slow the client before a 429 -------------------------------------


async def test_ratelimit_remaining_zero_waits_for_reset_before_next_request(api, options, registry, clock) -> None:
    times = arrivals(
        api.get("/tickets"),
        clock,
        [
            httpx.Response(200, headers={"RateLimit": '"default";r=0;t=10', "RateLimit-Policy": '"default";q=5'}),
            httpx.Response(200),
        ],
    )
    async with client(options, registry, clock) as http:
        await http.request("GET", "/tickets")
        await http.request("GET", "/tickets")
    assert times == [0.0, 10.0]


async def test_x_ratelimit_nearly_spent_spreads_the_rest(api, options, registry, clock) -> None:
    times = arrivals(
        api.get("/tickets"),
        clock,
        [
            httpx.Response(
                200,
                headers={
                    "X-RateLimit-Limit": "100",
                    "X-RateLimit-Remaining": "1",
                    "X-RateLimit-Reset": str(int(START.timestamp()) + 20),
                },
            ),
            httpx.Response(200),
        ],
    )
    async with client(options, registry, clock) as http:
        await http.request("GET", "/tickets")
        await http.request("GET", "/tickets")
    assert times == [0.0, 10.0]


async def test_ratelimit_reset_beyond_defer_after_defers_the_next_request(api, options, registry, clock) -> None:
    route = api.get("/tickets").mock(
        return_value=httpx.Response(200, headers={"RateLimit": "limit=1000, remaining=0, reset=3600"})
    )
    async with client(options, registry, clock) as http:
        assert (await http.request("GET", "/tickets")).status_code == 200  # this answer is fine
        with pytest.raises(DeferredError) as caught:
            await http.request("GET", "/tickets")
    assert caught.value.not_before == START + timedelta(seconds=3600)
    assert route.call_count == 1


async def test_configured_rate_limit_paces_requests(api, registry, clock) -> None:
    options = HttpOptions(base_url=BASE, rate_limit="60/min")
    times = arrivals(api.get("/tickets"), clock, [httpx.Response(200)] * 5)
    async with client(options, registry, clock) as http:
        for _ in range(5):
            await http.request("GET", "/tickets")
    assert times == pytest.approx([0.0, 1.01, 2.02, 3.03, 4.04])  # 1 s apart, plus 1% slack


# -- status mapping ----------------------------------------------------------------------


async def test_401_is_an_auth_error_with_a_clear_message(api, options, registry, clock) -> None:
    api.get("/x").mock(return_value=httpx.Response(401))
    async with client(options, registry, clock, auth=ApiKeyHeader("X-Api-Key", "k-1234567890")) as http:
        with pytest.raises(AuthError) as caught:
            await http.request("GET", "/x", params={"page": 2})
    assert str(caught.value).startswith(
        "helpdesk: authentication failed (HTTP 401) for GET https://api.example.com/api/x?page=2"
    )
    assert caught.value.status == 401


async def test_403_is_an_auth_error(api, options, registry, clock) -> None:
    api.get("/x").mock(return_value=httpx.Response(403))
    async with client(options, registry, clock) as http:
        with pytest.raises(AuthError, match=r"access denied \(HTTP 403\)"):
            await http.request("GET", "/x")


async def test_other_4xx_is_a_rejected_record_with_a_body_excerpt(api, options, registry, clock) -> None:
    route = api.post("/tickets").mock(return_value=httpx.Response(422, json={"error": "subject is required"}))
    async with client(options, registry, clock) as http:
        with pytest.raises(RecordRejected) as caught:
            await http.request("POST", "/tickets", json={})
    assert caught.value.status == 422
    assert "subject is required" in str(caught.value)
    assert route.call_count == 1


async def test_allowed_status_is_returned(api, options, registry, clock) -> None:
    api.get("/tickets/9").mock(return_value=httpx.Response(404))
    async with client(options, registry, clock) as http:
        response = await http.request("GET", "/tickets/9", allow_status={404})
    assert response.status_code == 404


async def test_response_hook_raises_envelope_errors(api, options, registry, clock) -> None:
    api.get("/contact").mock(return_value=httpx.Response(200, json={"status": "ERROR", "error": "no such field"}))

    def clevertim(response: httpx.Response) -> None:
        body = loads_json(response)
        if isinstance(body, dict) and body.get("status") == "ERROR":
            raise RecordRejected(body["error"], system="crm", status=response.status_code)

    async with client(options, registry, clock, response_hook=clevertim) as http:
        with pytest.raises(RecordRejected, match="no such field"):
            await http.request("GET", "/contact")


async def test_hook_retriable_error_is_retried_for_get_only(api, options, registry, clock) -> None:
    get = api.get("/records").mock(
        side_effect=[httpx.Response(200, json={"__status": "error"}), httpx.Response(200, json={"__status": "success"})]
    )
    post = api.post("/records").mock(return_value=httpx.Response(200, json={"__status": "error"}))

    async def cerb(response: httpx.Response) -> None:
        if loads_json(response)["__status"] == "error":
            raise RetriableError("temporary", system="desk")

    async with client(options, registry, clock, response_hook=cerb) as http:
        assert (await http.request("GET", "/records")).json() == {"__status": "success"}
        with pytest.raises(RetriableError):
            await http.request("POST", "/records", data={"fields": {"subject": "x"}})
    assert get.call_count == 2
    assert post.call_count == 1


async def test_malformed_body_is_retried_for_get_when_decoded(api, options, registry, clock) -> None:
    route = api.get("/tickets").mock(
        side_effect=[httpx.Response(200, text="{oops"), httpx.Response(200, json={"a": 1})]
    )
    async with client(options, registry, clock) as http:
        response, body = await http.request_decoded("GET", "/tickets")
    assert body == {"a": 1} and response.status_code == 200
    assert route.call_count == 2


async def test_malformed_body_after_retries_is_a_malformed_response_error(api, registry, clock) -> None:
    options = HttpOptions(base_url=BASE, max_retries=1)
    api.get("/tickets").mock(return_value=httpx.Response(200, text="<html>proxy error</html>"))
    async with client(options, registry, clock) as http:
        with pytest.raises(MalformedResponseError) as caught:
            await http.request_decoded("GET", "/tickets")
    message = str(caught.value)
    assert message.startswith("helpdesk: GET https://api.example.com/api/tickets: response is not valid JSON")
    assert "proxy error" in message and message.endswith("gave up after 2 attempts")


# -- request bodies ----------------------------------------------------------------------


async def test_bodies_json_with_decimal_and_form_with_brackets(api, options, registry, clock) -> None:
    route = api.post("/r").mock(return_value=httpx.Response(200))
    async with client(options, registry, clock) as http:
        await http.request("POST", "/r", json={"amount": Decimal("1234.56"), "at": START})
        await http.request("POST", "/r", data={"fields": {"subject": "a b"}, "expand": "x"})
    first, second = (call.request for call in route.calls)
    assert first.content == b'{"amount":"1234.56","at":"2024-05-01T12:00:00Z"}'
    assert first.headers["content-type"] == "application/json"
    assert second.content == b"fields[subject]=a+b&expand=x"
    assert second.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_client_sends_headers_and_no_redirects(api, registry, clock) -> None:
    options = HttpOptions(base_url=BASE, headers={"Accept": "application/xml"})
    route = api.get("/old").mock(return_value=httpx.Response(302, headers={"Location": "https://elsewhere.example/"}))
    async with client(options, registry, clock) as http:
        with pytest.raises(FatalError, match=r"redirected \(HTTP 302\) to 'https://elsewhere.example/'") as caught:
            await http.request("GET", "/old")
    assert caught.value.status == 302 and route.call_count == 1  # not followed
    assert route.calls[0].request.headers["accept"] == "application/xml"
    assert route.calls[0].request.headers["user-agent"].startswith("ferryman/")


# -- refused URLs ------------------------------------------------------------------------


def test_plain_http_to_a_remote_host_is_refused(registry) -> None:
    options = HttpOptions.model_construct(
        **{**HttpOptions(base_url=BASE).model_dump(), "base_url": "http://api.example.com"}
    )
    with pytest.raises(FatalError, match=r"refusing plain http:// to api\.example\.com"):
        HttpClient("helpdesk", options, registry=registry)
    with pytest.raises(ValueError, match="allow_insecure_http"):
        HttpOptions(base_url="http://api.example.com")


async def test_plain_http_allowed_by_config_or_to_loopback(registry, clock) -> None:
    with respx.mock(assert_all_called=True) as router:
        router.get("http://api.example.com/x").mock(return_value=httpx.Response(200))
        router.get("http://127.0.0.1:8080/x").mock(return_value=httpx.Response(200))
        router.get("http://localhost:8080/x").mock(return_value=httpx.Response(200))
        for base, extra in [
            ("http://api.example.com", {"allow_insecure_http": True}),
            ("http://127.0.0.1:8080", {}),
            ("http://localhost:8080", {}),
        ]:
            async with client(HttpOptions(base_url=base, **extra), registry, clock) as http:
                assert (await http.request("GET", "/x")).status_code == 200


async def test_absolute_urls_must_stay_on_the_system_host_and_scheme(api, options, registry, clock) -> None:
    async with client(options, registry, clock) as http:
        with pytest.raises(FatalError, match=r"refusing plain http://"):
            await http.request("GET", "http://api.example.com/api/x")
        with pytest.raises(FatalError, match=r"to evil\.example"):
            await http.request("GET", "https://evil.example/steal")
