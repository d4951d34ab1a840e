"""Issue 16: every connector's native -> record mapping, fed with natives shaped like the
ones its sandbox simulator serves (members kept, changed in kind or value, dropped, added).

Each native goes through the connector's own per-record entry point (the one its read loop
calls), so what is tested is what a run would do with that record: a record the state store
can hold, or a reject with its reason. Any other exception would fail the whole page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st

from ferryman.config import load_config
from ferryman.connector import Reject, SystemContext
from ferryman.errors import ValidationFailed
from ferryman.http.codecs import parse_xml, python_to_typed_xml, typed_xml_to_python
from ferryman.plugins import connector_class
from ferryman.records import Record
from tests.fuzz import assert_clean, run_long, run_short, shaped_like

CONFIG = Path(__file__).parents[2] / "config"

MapNative = Callable[[str, Any], Record | Reject]


def _connector(example: str, system: str, tmp: Path) -> Any:
    """The ``system`` of ``config/EXAMPLE.example.yaml``, built the way the engine builds it."""
    path = CONFIG / f"{example}.example.yaml"
    text = path.read_text()
    creds = tmp / "creds"
    creds.mkdir(exist_ok=True)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    for kind, name in re.findall(r"\$\{(?:(credential|env|file):)?([^}]+)\}", text):
        if kind == "credential":
            (creds / name).write_text("fuzz-secret-value")
        else:
            env[name] = "fuzz-secret-value"
    config = load_config(path, environ=env)
    cls = connector_class(config.systems[system].connector)
    return cls(SystemContext(system, config.system_options(system)))


def _first(table: Any) -> Any:
    return next(iter(table))


def _samples_clientexec() -> dict[str, list[dict[str, Any]]]:
    from ferryman_connectors.clientexec.simulator import ClientexecSimulator

    sim = ClientexecSimulator(records=4)
    return {
        "tickets": [sim.render_ticket(r) for r in sim.table("tickets")][:4],
        "contacts": [sim.render_user(r) for r in sim.table("users")][:4],
        "invoices": [sim.render_invoice(r) for r in sim.table("invoices")][:4],
    }


def _samples_clevertim() -> dict[str, list[dict[str, Any]]]:
    from ferryman_connectors.clevertim.simulator import ClevertimSimulator

    sim = ClevertimSimulator(records=4)
    tables = {"contacts": "contacts", "organisations": "companies", "tickets": "cases"}
    return {s: [sim.render(t, r) for r in sim.table(t)][:4] for s, t in tables.items()}


def _samples_cerb() -> dict[str, list[dict[str, Any]]]:
    from ferryman_connectors.cerb.simulator import CerbSimulator

    sim = CerbSimulator(records=4)
    request = SimpleNamespace(scheme="http", host="127.0.0.1:1")  # only used to spell URLs
    tables = {"tickets": "ticket", "contacts": "contact", "organisations": "org"}
    return {s: [sim.render(t, r, request) for r in sim.table(t)][:4] for s, t in tables.items()}


def _samples_aspnet() -> tuple[dict[str, list[dict[str, Any]]], Any]:
    from ferryman_connectors.aspnet_helpdesk import ENTITY_OF
    from ferryman_connectors.aspnet_helpdesk._mapping import Refs
    from ferryman_connectors.aspnet_helpdesk.simulator import AspnetHelpdeskSimulator, _json_value

    sim = AspnetHelpdeskSimulator(records=4)
    tables = {"tickets": "Tickets", "contacts": "Customers", "services": "Services", "operators": "Operators"}
    # as the JSON wire spells them (the connector types them itself)
    samples = {s: [_json_value(sim.render(ENTITY_OF[s], r)) for r in sim.table(t)][:4] for s, t in tables.items()}
    refs = Refs(
        operators={o["Id"]: o for o in samples["operators"]}, services={v["Id"]: v for v in samples["services"]}
    )
    return samples, refs


def _samples_harvest() -> dict[str, list[dict[str, Any]]]:
    from ferryman_connectors.harvest.simulator import HarvestSimulator

    sim = HarvestSimulator(records=4)
    views = {
        "organisations": ("clients", "client", sim._client_view),
        "contacts": ("contacts", "contact", sim._contact_view),
        "invoices": ("invoices", "invoice", sim._invoice_view),
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for stream, (table, tag, view) in views.items():
        # through the wire format, so the natives are typed exactly as the connector sees them
        out[stream] = [typed_xml_to_python(parse_xml(python_to_typed_xml(tag, view(r)))) for r in sim.table(table)][:4]
    return out


def _samples_rest() -> dict[str, list[dict[str, Any]]]:
    from ferryman.sandbox._simulator import json_response
    from ferryman_connectors.rest import simulator

    sim = simulator.GenericSimulator(records=4)
    render = {
        "tickets": simulator._render_ticket,
        "contacts": simulator._render_contact,
        "invoices": simulator._render_invoice,
    }
    # as the simulator's JSON answers spell them
    return {s: [orjson.loads(json_response(f(r)).body) for r in sim.table(s)][:4] for s, f in render.items()}


def _harvest_entry(connector: Any) -> MapNative:
    names = {1: "Acme Dental AB", 2: "Kestrel Networks"}

    def map_native(stream: str, native: Any) -> Record | Reject:
        try:
            return connector._record(stream, native, names)
        except ValidationFailed as exc:  # how this connector says "reject": the read loop catches it
            return Reject(str(exc.ref), str(exc))

    return map_native


@cache
def _target(name: str) -> tuple[MapNative, dict[str, list[dict[str, Any]]]]:
    """The connector's per-record entry point and its simulator's natives, per stream."""
    tmp = Path(__import__("tempfile").mkdtemp(prefix="fm-fuzz-"))
    if name == "clientexec":
        c = _connector("clientexec", "billing", tmp)
        return c._to_record, _samples_clientexec()
    if name == "clevertim":
        c = _connector("clevertim", "crm", tmp)
        return c._to_record, _samples_clevertim()
    if name == "cerb":
        c = _connector("cerb", "cerb", tmp)
        return c._record, _samples_cerb()
    if name == "aspnet_helpdesk":
        from ferryman_connectors.aspnet_helpdesk import ENTITY_OF

        c = _connector("aspnet_helpdesk", "helpdesk", tmp)
        samples, refs = _samples_aspnet()
        return (lambda stream, raw: c._record(stream, ENTITY_OF[stream], raw, refs)), samples
    if name == "harvest":
        return _harvest_entry(_connector("harvest", "harvest", tmp)), _samples_harvest()
    if name == "rest":
        c = _connector("rest", "sandbox", tmp)
        return (lambda stream, native: c._mappers[stream].record(native, stream)), _samples_rest()
    raise AssertionError(name)


CONNECTORS = ["clientexec", "clevertim", "cerb", "aspnet_helpdesk", "harvest", "rest"]

#: natives that crashed a mapping once: tried first on every run
FOUND: dict[str, list[tuple[str, Any]]] = {
    "clientexec": [("tickets", {"metadata": {"id": 1, "dateSubmittedFormatted": []}})],
    "cerb": [("tickets", {"id": 1, "updated": 67_768_036_191_676_796})],
}


def _cases() -> list[Any]:
    return list(CONNECTORS)


def _strategy(name: str) -> st.SearchStrategy[tuple[str, Any]]:
    _, samples = _target(name)
    per_stream = [
        st.tuples(st.just(stream), st.sampled_from(natives).flatmap(shaped_like))
        for stream, natives in samples.items()
        if natives
    ]
    return st.one_of(per_stream)


def _check(name: str) -> Callable[[tuple[str, Any]], None]:
    map_native, _ = _target(name)

    def check(case: tuple[str, Any]) -> None:
        stream, native = case
        assert_clean(map_native(stream, native))

    return check


def test_every_simulator_gives_samples_for_every_stream() -> None:
    # a target without natives would fuzz nothing and pass
    for name in CONNECTORS:
        map_native, samples = _target(name)
        assert samples and all(samples.values()), name
        for stream, natives in samples.items():
            result = map_native(stream, natives[0])
            assert isinstance(result, Record), (name, stream, result)


@pytest.mark.parametrize("name", _cases())
def test_fuzz_native_to_record(name: str) -> None:
    run_short(_strategy(name), _check(name), FOUND.get(name, []))


@pytest.mark.fuzz
@pytest.mark.parametrize("name", _cases())
def test_fuzz_native_to_record_long(name: str) -> None:
    run_long(_strategy(name), _check(name), FOUND.get(name, []))
