"""A key carried in a query string or a header appears in no log line, error message or traceback."""

from __future__ import annotations

import logging
import socket
import traceback

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from ferryman.errors import AuthError, FerrymanError, RecordRejected, RetriableError
from ferryman.http import ApiKeyHeader, ApiKeyQuery, Basic, Bearer, HttpClient, HttpOptions, HttpRegistry

from .support import FakeClock

SECRET = "sk_live_7fGh2KqPz9XwLm4"
AUTHS = {
    "query": lambda: ApiKeyQuery("key", SECRET),
    "header": lambda: ApiKeyHeader("X-Api-Key", SECRET),
    "basic-token-as-user": lambda: Basic(SECRET, "X"),
    "bearer": lambda: Bearer(SECRET),
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def everything_printed(exc: BaseException, events: list[dict], caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        [
            str(exc),
            repr(exc),
            "".join(traceback.format_exception(exc)),
            *(repr(event) for event in events),
            caplog.text,
        ]
    )


def echo_secret_500(request: httpx.Request) -> httpx.Response:
    # A server that echoes what it got (the URL, the header) in its error body.
    return httpx.Response(500, text=f"bad request {request.url} with {request.headers.get('x-api-key')}")


def raise_with_url(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError(f"could not connect to {request.url}", request=request)


SCENARIOS = {
    "500s exhausted": (lambda r: r.get("/x").mock(side_effect=echo_secret_500), RetriableError),
    "401": (lambda r: r.get("/x").mock(return_value=httpx.Response(401, text="bad key")), AuthError),
    "422 echoing": (
        lambda r: r.get("/x").mock(side_effect=lambda req: httpx.Response(422, text=str(req.url))),
        RecordRejected,
    ),
    "connect error naming the URL": (lambda r: r.get("/x").mock(side_effect=raise_with_url), RetriableError),
}


@pytest.mark.parametrize("auth_style", AUTHS)
@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_no_secret_in_logs_errors_or_tracebacks(auth_style, scenario, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    mock_route, expected = SCENARIOS[scenario]
    options = HttpOptions(base_url="https://api.example.com/api", max_retries=2)
    with respx.mock(base_url="https://api.example.com/api") as router:
        route = mock_route(router)
        http = HttpClient("helpdesk", options, registry=HttpRegistry(), auth=AUTHS[auth_style](), clock=FakeClock())
        with capture_logs() as events, pytest.raises(FerrymanError) as caught:
            await http.request("GET", "/x", params={"page": 1})
        await http.aclose()
    exc = caught.value
    assert isinstance(exc, expected)
    sent = route.calls[0].request
    assert SECRET in str(sent.url) or SECRET in str(sent.headers) or auth_style.startswith(("basic", "bearer"))
    text = everything_printed(exc, events, caplog)
    assert SECRET not in text
    assert exc.__cause__ is None and exc.__context__ is None  # no chained httpx error holding the URL
    assert "/api/x" in str(exc)  # the message still says where
    if auth_style == "query":
        assert "key=***" in str(exc)
    if auth_style == "query" and not scenario.startswith("connect"):
        # httpx's own INFO line about the request, with the key masked
        assert "HTTP Request: GET https://api.example.com/api/x?page=1&key=***" in caplog.text


async def test_connection_refused_on_loopback_leaks_nothing(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    options = HttpOptions(base_url=f"http://127.0.0.1:{closed_port()}", max_retries=1)
    http = HttpClient(
        "helpdesk", options, registry=HttpRegistry(), auth=ApiKeyQuery("apikey", SECRET), clock=FakeClock()
    )
    with capture_logs() as events, pytest.raises(RetriableError) as caught:
        await http.request("GET", "/tickets")
    await http.aclose()
    assert "connection failed" in str(caught.value) and "apikey=***" in str(caught.value)
    assert "gave up after 2 attempts" in str(caught.value)
    assert SECRET not in everything_printed(caught.value, events, caplog)


async def test_secret_named_query_param_typed_into_a_path_is_masked(caplog) -> None:
    """A key the user put in a URL by hand was never registered; its parameter name gives it away."""
    unregistered = "hand_typed_4f9a8b7c6d"
    with respx.mock() as router:
        router.get(url__startswith="https://api.example.com/").mock(return_value=httpx.Response(401))
        http = HttpClient("crm", HttpOptions(base_url="https://api.example.com"), registry=HttpRegistry())
        with capture_logs() as events, pytest.raises(AuthError) as caught:
            await http.request("GET", f"/contacts?api_key={unregistered}")
        await http.aclose()
    assert "api_key=***" in str(caught.value)
    assert unregistered not in everything_printed(caught.value, events, caplog)
