"""Issue 16: the secrets sweep.

Distinct secrets are planted in every secret-bearing field of every connector, the control
token and a PostgreSQL password; then everything that can go wrong on the way to an app is
provoked (connection refused, DNS failure, a TLS handshake with a plain-HTTP server, 401/403/
500 answers that echo the request back, a redirect to a URL carrying the key, records that
fail mapping and echo the request, each sandbox refusing the planted key, SIGTERM during
runs) through ``ferryman check``, ``ferryman sync`` and the daemon. Then every place a
secret could end up is searched: stdout, stderr, the state database, dead letters, CSV
outputs and ``/metrics``. Not one secret may show, whole or as any 6-character piece, plain,
URL-encoded or inside base64.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
import yaml
from aiohttp import web

from tests.conftest import ferryman_cmd, free_port, run_cli
from tests.e2e.support import sandbox_process

# about 40 s of processes and servers: make test-slow (make test keeps under 10 minutes)
pytestmark = pytest.mark.slow

_rng = random.Random(16)


def _secret(length: int = 24, extra: str = "") -> str:
    alphabet = string.ascii_letters + string.digits + extra
    return "".join(_rng.choice(alphabet) for _ in range(length))


#: env name -> value; every one distinct, none sharing a 6-character piece with another text
SECRETS: dict[str, str] = {
    "CX_KEY": _secret(),  # clientexec api_key (in the query string)
    "CXH_KEY": _secret(),  # clientexec api_key (in a header)
    "AH_KEY": _secret(),  # aspnet_helpdesk api_key (?key=)
    "HV_PASS": _secret(extra="+/="),  # harvest password (Basic)
    "CT_TOKEN": _secret(),  # clevertim api_token (Basic user)
    "CB_TOKEN": _secret(),  # cerb bearer token
    "CB_SECRET": _secret(),  # cerb signed Cerb-Auth secret_key
    "RH_KEY": _secret(),  # rest header key
    "RQ_KEY": _secret(extra="+/&="),  # rest query key
    "RB_PASS": _secret(),  # rest basic password
    "RT_TOKEN": _secret(),  # rest basic token-as-user
    "RR_TOKEN": _secret(),  # rest bearer token
    "WO_SECRET": "whsec_" + base64.b64encode(_secret(32).encode()).decode(),  # outbound webhook signing
    "WI_SECRET": "whsec_" + base64.b64encode(_secret(32).encode()).decode(),  # intake signing
    "CONTROL_TOKEN": _secret(32),  # control.token
    "PG_PASS": _secret(),  # the PostgreSQL password in state.url
}

REST_STREAM = {
    "record": "ticket",
    "path": "/tickets",
    "records_path": "data",
    "pagination": {"style": "none"},
    "fields": {"subject": "subject", "status": "status"},
}
REST_AUTH = {
    "rh": {"type": "header", "name": "X-API-Key", "key": "${RH_KEY}"},
    "rq": {"type": "query", "param": "api_key", "key": "${RQ_KEY}"},
    "rb": {"type": "basic", "username": "sweep", "password": "${RB_PASS}"},
    "rt": {"type": "basic", "token": "${RT_TOKEN}"},
    "rr": {"type": "bearer", "token": "${RR_TOKEN}"},
}
#: system -> (connector, its options without base_url, stream read, sandbox app)
APPS: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "cx": ("clientexec", {"api_key": "${CX_KEY}", "key_in": "query"}, "tickets", "clientexec"),
    "cxh": ("clientexec", {"api_key": "${CXH_KEY}", "key_in": "header"}, "contacts", None),
    "ah": ("aspnet_helpdesk", {"api_key": "${AH_KEY}"}, "tickets", "aspnet_helpdesk"),
    "hv": ("harvest", {"email": "sweep@example.com", "password": "${HV_PASS}"}, "contacts", "harvest"),
    "ct": ("clevertim", {"api_token": "${CT_TOKEN}"}, "contacts", "clevertim"),
    "cb": ("cerb", {"auth": "bearer", "token": "${CB_TOKEN}"}, "tickets", "cerb"),
    "cbs": (
        "cerb",
        {"auth": "cerb_auth", "access_key": "sweepaccess", "secret_key": "${CB_SECRET}"},
        "contacts",
        None,
    ),
    **{
        name: ("rest", {"auth": auth, "streams": {"tickets": REST_STREAM}}, "tickets", None)
        for name, auth in REST_AUTH.items()
    },
}
#: the path each connector's base_url ends in on its sandbox
SANDBOX_ROOT = {"clientexec": "/api", "aspnet_helpdesk": "", "harvest": "", "clevertim": "/api", "cerb": "/rest"}


# -- finding a secret ---------------------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    body = secret.removeprefix("whsec_")  # "whsec_" itself is the format's name, not secret
    return sorted({body, quote(body, safe=""), quote_plus(body), quote(body)})


def _pieces(text: str, size: int = 6) -> set[str]:
    return {text[i : i + size] for i in range(len(text) - size + 1)}


PIECES: dict[str, set[str]] = {name: set().union(*(_pieces(f) for f in _forms(s))) for name, s in SECRETS.items()}
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def leaks(text: str) -> list[str]:
    """``NAME: piece`` for every secret of which ``text`` holds a piece (also inside base64)."""
    found: list[str] = []
    for name, pieces in PIECES.items():
        hit = next((p for p in pieces if p in text), None)
        if hit is not None:
            at = text.index(hit)
            found.append(f"{name}: {hit!r} in ...{text[max(0, at - 80) : at + 40]!r}...")
    decoded: list[str] = []
    for run in set(_B64_RUN.findall(text)):
        for start in range(4):
            chunk = run[start:].rstrip("=")
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            for alphabet in {chunk, chunk.replace("-", "+").replace("_", "/")}:
                with contextlib.suppress(ValueError):
                    decoded.append(base64.b64decode(alphabet, validate=True).decode("latin-1"))
    if decoded:
        joined = "\n".join(decoded)
        for name, pieces in PIECES.items():
            hit = next((p for p in pieces if p in joined), None)
            if hit is not None:
                found.append(f"{name} (in base64): {hit!r}")
    return found


def test_the_detector_finds_what_it_must() -> None:
    key = SECRETS["HV_PASS"]
    basic = base64.b64encode(f"sweep@example.com:{key}".encode()).decode()
    assert leaks(f"url ?api_key={quote_plus(SECRETS['RQ_KEY'])}&x")
    assert leaks(f"Authorization: Basic {basic[:40]}")
    assert leaks(f"cut at ...{key[-7:]}")
    assert leaks(f"signing key {SECRETS['WI_SECRET'][6:14]}")
    assert not leaks("signature failed: whsec_ secrets are base64 (systems.wo.secret)")


# -- the servers the apps are played by -------------------------------------------------------


def _credentials(request: web.Request) -> str:
    """Everything secret-ish a request carried: query string and auth headers."""
    parts = [request.query_string]
    for name in ("Authorization", "X-API-Key", "Cerb-Auth", "X-Api-Key"):
        if name in request.headers:
            parts.append(request.headers[name])
    return " ".join(parts)


async def _echo(request: web.Request) -> web.StreamResponse:
    """``/sNNN/...`` answers NNN echoing the request; ``/r302/...`` redirects to a URL that
    carries its credentials; ``/m200/...`` answers records that fail mapping and echo the
    request; ``/slow/...`` waits before a 500."""
    mode = request.path.split("/", 2)[1]
    echoed = f"{request.method} {request.url} with {_credentials(request)}"
    if mode == "slow":
        await asyncio.sleep(4)
        return web.Response(status=500, text=f"server error for {echoed}")
    if mode.startswith("s") and mode[1:].isdigit():
        status = int(mode[1:])
        if request.headers.get("Accept", "").endswith("xml"):
            return web.Response(status=status, text=f"<error>{echoed}</error>", content_type="application/xml")
        return web.json_response({"error": f"refused {echoed}", "url": str(request.url)}, status=status)
    if mode == "r302":
        target = f"http://{request.host}/landing?apikey={quote_plus(_credentials(request))}"
        return web.Response(status=302, headers={"Location": target})
    if mode == "m200":
        bad = {
            "id": f"{request.url}",
            "subject": echoed,
            "status": {"deep": [echoed]},
            "updated_at": f"not a time {echoed}",
        }
        return web.json_response({"data": [bad], "status": "success", "content": [bad]})
    return web.Response(status=404, text=f"no such thing: {echoed}")


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """The echo app on a loopback port, served by a thread of its own."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield int(port)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


# -- configs ----------------------------------------------------------------------------------


def write_config(
    directory: Path,
    scenarios: dict[str, Callable[[str, str], str]],
    *,
    state_url: str,
    listen: str | None = None,
) -> Path:
    """For each scenario, every app system (``SYSTEM_SCENARIO``, its ``base_url`` from the
    scenario) with a pipeline into a CSV stream of its own, and an outbound webhook; one intake;
    the control token."""
    systems: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}
    csv_streams: dict[str, str] = {"source": "ticket"}
    for scenario, base_url in scenarios.items():
        for app, (connector, options, stream, _sandbox) in APPS.items():
            name = f"{app}_{scenario}"
            systems[name] = {
                "connector": connector,
                "base_url": base_url(app, connector),
                "max_retries": 0,
                "connect_timeout": 3,
                "read_timeout": 8,
                **options,
            }
            csv_streams[name] = {"tickets": "ticket", "contacts": "contact"}[stream]
            pipelines[f"{name}-out"] = {"from": f"{name}.{stream}", "to": f"files.{name}"}
        systems[f"wo_{scenario}"] = {
            "connector": "webhook",
            "url": base_url("wo", "webhook") + "/hook",
            "secret": "${WO_SECRET}",
            "retry_schedule": [0],
            "sync_delivery_timeout": "5s",
        }
        pipelines[f"wo_{scenario}-in"] = {"from": "files.source", "to": f"wo_{scenario}.tickets"}
    systems["files"] = {"connector": "csv", "directory": str(directory / "files"), "streams": csv_streams}
    systems["wi"] = {"connector": "webhook", "secret": "${WI_SECRET}", "intake": True}
    pipelines["from-hook"] = {"from": "wi.tickets", "to": "files.source"}
    doc: dict[str, Any] = {
        "state": {"url": state_url},
        "log": {"format": "json", "level": "debug"},
        "systems": systems,
        "pipelines": pipelines,
    }
    if listen is not None:
        doc["control"] = {"listen": listen, "token": "${CONTROL_TOKEN}"}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "ferryman.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    source = directory / "files" / "source.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        source.write_text("key,updated_at,subject,status\nT1,2026-01-01T00:00:00Z,hello,open\n")
    return path


class Outputs:
    """Every text the sweep searches, by where it came from."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def add(self, where: str, text: str) -> None:
        self.texts[where] = self.texts.get(where, "") + text

    def cli(self, where: str, *args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = run_cli("--config", str(config), *args, env=dict(SECRETS), timeout=timeout)
        self.seconds[f"{where}: {' '.join(args)}"] = time.monotonic() - started
        self.add(f"{where}: {' '.join(args)} stdout", result.stdout)
        self.add(f"{where}: {' '.join(args)} stderr", result.stderr)
        return result

    def leaks(self) -> dict[str, list[str]]:
        return {where: found for where, text in self.texts.items() if (found := leaks(text))}


def _daemon(outputs: Outputs, where: str, config: Path, listen: str, *, terminate_after: float | None) -> None:
    """``ferryman run``: every pipeline triggered, ``/metrics`` and ``/v1/status`` read, then
    SIGTERM: ``terminate_after`` seconds after the triggers (in the middle of runs), or once
    no run is left running."""
    out, err = config.with_name(f"{where}.out"), config.with_name(f"{where}.err")
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*ferryman_cmd(), "--config", str(config), "run", "--drain-timeout", "10"],
            stdout=stdout,
            stderr=stderr,
            env={**_base_env(), **SECRETS},
        )
    try:
        headers = {"Authorization": f"Bearer {SECRETS['CONTROL_TOKEN']}"}
        with httpx.Client(base_url=f"http://{listen}", headers=headers, timeout=30, trust_env=False) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, f"daemon exited {proc.returncode}: {err.read_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz").status_code in (200, 503):
                        break
                assert time.monotonic() < deadline, f"daemon not up: {err.read_text()}"
                time.sleep(0.1)
            for pipeline in yaml.safe_load(config.read_text())["pipelines"]:
                answer = client.post(f"/v1/pipelines/{pipeline}/trigger")
                outputs.add(f"{where}: trigger {pipeline}", answer.text)
            if terminate_after is not None:
                time.sleep(terminate_after)
            else:
                deadline = time.monotonic() + 40
                while '"running"' in client.get("/v1/status").text and time.monotonic() < deadline:
                    time.sleep(0.3)
            for path in ("/metrics", "/v1/status"):
                outputs.add(f"{where}: {path}", client.get(path).text)
            # an intake refusing a forged message says why without its key
            forged = client.post("/hooks/wi", content=b'{"type":"ticket.updated"}', headers={"webhook-id": "x"})
            outputs.add(f"{where}: POST /hooks/wi", forged.text)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    outputs.add(f"{where}: daemon stdout", out.read_text(errors="replace"))
    outputs.add(f"{where}: daemon stderr", err.read_text(errors="replace"))


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}


def _dump_state(outputs: Outputs, path: Path) -> None:
    """Every row of every table of the state database, one text per table."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            outputs.add(f"state table {table}", "\n".join(repr(row) for row in rows))


#: the ``sync`` runs (one process each), on top of the daemon running every pipeline: the
#: query-string keys through every kind of error answer, and one of each other failure
SYNCS = [
    "rq_401-out",
    "cx_403-out",
    "rq_500-out",
    "hv_500-out",
    "rq_redirect-out",
    "ct_redirect-out",
    "rq_mapping-out",
    "ah_tls-out",
    "wo_500-in",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    """Runs every provocation once; the tests below read what it left."""
    directory = tmp_path_factory.mktemp("sweep")
    state = directory / "state.db"
    state_url = f"sqlite:///{state}"
    outputs = Outputs()
    closed = free_port()
    listen = f"127.0.0.1:{free_port()}"
    with echo_server() as port:
        echo = f"http://127.0.0.1:{port}"
        scenarios: dict[str, Callable[[str, str], str]] = {
            "refused": lambda s, c: f"http://127.0.0.1:{closed}/{s}",
            "dns": lambda s, c: f"https://{s}.ferryman-sweep.invalid/api",
            "tls": lambda s, c: f"https://127.0.0.1:{port}/s200/{s}",
            "401": lambda s, c: f"{echo}/s401/{s}",
            "403": lambda s, c: f"{echo}/s403/{s}",
            "500": lambda s, c: f"{echo}/s500/{s}",
            "redirect": lambda s, c: f"{echo}/r302/{s}",
            "mapping": lambda s, c: f"{echo}/m200/{s}",
        }
        config = write_config(directory, scenarios, state_url=state_url, listen=listen)
        outputs.cli("echo", "check", config=config)
        for pipeline in SYNCS:
            outputs.cli("echo", "sync", "--no-progress", pipeline, config=config)
        _daemon(outputs, "daemon", config, listen, terminate_after=None)
        # SIGTERM while every run waits on a slow answer
        slow = write_config(
            directory / "slow", {"slow": lambda s, c: f"{echo}/slow/{s}"}, state_url=state_url, listen=listen
        )
        _daemon(outputs, "sigterm", slow, listen, terminate_after=1.5)
    # each sandbox refusing the planted key, through the connector's real error handling
    with contextlib.ExitStack() as stack:
        urls = {app: stack.enter_context(sandbox_process(app)) for app in SANDBOX_ROOT}

        def on_sandbox(system: str, connector: str) -> str:
            app = connector if connector in urls else "clientexec"
            return urls[app] + SANDBOX_ROOT[app]

        sandboxed = write_config(directory / "sandbox", {"sandbox": on_sandbox}, state_url=state_url)
        outputs.cli("sandbox", "check", config=sandboxed)
        for pipeline in ("cx_sandbox-out", "hv_sandbox-out", "cb_sandbox-out"):
            outputs.cli("sandbox", "sync", "--no-progress", pipeline, config=sandboxed)
    outputs.cli("after", "status", "--json", config=config)
    outputs.cli("after", "dlq", "list", "--json", config=config)
    _dump_state(outputs, state)
    for csv_file in sorted(directory.glob("**/*.csv")):
        outputs.add(f"CSV {csv_file.name}", csv_file.read_text(errors="replace"))
    # the PostgreSQL password, with the database down (a closed port)
    pg = write_config(
        directory / "pg",
        {"refused": scenarios["refused"]},
        state_url=f"postgresql://ferryman:${{PG_PASS}}@127.0.0.1:{closed}/ferryman",
    )
    for args in (("check",), ("status",)):
        outputs.cli("postgresql down", *args, config=pg)
    if os.environ.get("FERRYMAN_SWEEP_DUMP"):  # to read what the sweep saw
        Path(os.environ["FERRYMAN_SWEEP_DUMP"]).write_text(json.dumps(outputs.texts, indent=1))
    return outputs


def test_the_sweep_provoked_what_it_meant_to(sweep: Outputs) -> None:
    # a sweep that reached nothing would find nothing: the errors must be there, named
    everything = "\n".join(sweep.texts.values())
    for words in ("401", "403", "500", "refused", "redirect", ".invalid", "SSL"):
        assert words.lower() in everything.lower(), words


#: where dead letters are kept and shown
DEAD_LETTERS = ("state table dead_letters", "after: dlq list --json stdout")


def _report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{where}: {', '.join(hits)}" for where, hits in found.items())


def test_no_secret_shows_in_output_logs_metrics_csv_or_state(sweep: Outputs) -> None:
    found = {where: hits for where, hits in sweep.leaks().items() if where not in DEAD_LETTERS}
    assert not found, _report(found)


def test_no_secret_shows_in_dead_letters(sweep: Outputs) -> None:
    found = {where: hits for where, hits in sweep.leaks().items() if where in DEAD_LETTERS}
    assert not found, _report(found)
