"""URL facts the HTTP layer decides on: which host a URL is, and whether it may be plain http."""

from __future__ import annotations

import ipaddress

import httpx

from ferryman.redact import redact_url

__all__ = ["host_key", "insecure_url_problem", "is_loopback"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (brackets allowed)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_key(url: str | httpx.URL) -> str:
    """The key deferrals and rate budgets are stored under: ``host`` or ``host:port``.

    The port is kept only when it is not the scheme's default, so ``https://a.example``
    and ``https://a.example:443/x`` are one host, and two loopback simulators are two.
    """
    parsed = httpx.URL(url) if isinstance(url, str) else url
    host = parsed.host.lower()
    if ":" in host:
        host = f"[{host}]"
    if parsed.port is not None and parsed.port != _DEFAULT_PORTS.get(parsed.scheme):
        return f"{host}:{parsed.port}"
    return host


def insecure_url_problem(url: str | httpx.URL, allow_insecure_http: bool) -> str | None:
    """Why ``url`` must not be requested, or ``None`` when it may.

    Plain ``http://`` would put credentials on the wire in clear text, so it is only
    allowed to loopback (the sandbox) unless the system's config says
    ``allow_insecure_http: true``.
    """
    try:
        parsed = httpx.URL(url) if isinstance(url, str) else url
    except httpx.InvalidURL as exc:  # a bad port, a space in the host: a config error, not a crash
        return f"invalid URL {redact_url(url) if isinstance(url, str) else ''!r}: {exc}"
    if parsed.scheme == "https":
        return None
    if parsed.scheme != "http":
        return f"unsupported URL scheme {parsed.scheme!r} in {redact_url(str(parsed))}"
    if allow_insecure_http or is_loopback(parsed.host):
        return None
    return (
        f"refusing plain http:// to {parsed.host} (credentials would travel unencrypted): "
        "use https://, or set allow_insecure_http: true for this system"
    )
