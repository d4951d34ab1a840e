"""JSON and DataContract XML bodies, both ways, for the connector. Pure functions, no I/O.

A *native* entity here is a dict keyed by DataContract member name holding typed Python
values: ``int``, ``str``, aware UTC ``datetime``, ``bool``, lists of native entities.
Members this module does not know are kept as they arrived (raw JSON values or XML text)
so that a read-merge-write PUT sends them back unchanged.

Decoding is split in two on purpose: :func:`list_decoder`/:func:`one_decoder` only turn a
body into raw dicts (a body that does not parse, or declares XML entities, raises
:class:`~ferryman.errors.MalformedResponseError` and the page is retried, never skipped);
:func:`typed` then converts one entity and raises ``ValueError`` naming the member, which
the connector turns into a dead-lettered :class:`~ferryman.connector.Reject` for that
entity alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from ferryman.errors import FatalError, MalformedResponseError
from ferryman.http.codecs import dict_to_xml, dumps_json, excerpt, loads_json, parse_xml, xml_to_dict
from ferryman.redact import redact_url
from ferryman.timeutil import parse_datetime

from ._schema import ENTITIES, Entity, Kind

__all__ = [
    "Format",
    "WriteAnswer",
    "encode",
    "error_message",
    "list_decoder",
    "one_decoder",
    "typed",
    "write_decoder",
]

Format = Literal["json", "xml"]
Raw = dict[str, Any]

MEDIA_TYPES: dict[str, str] = {"json": "application/json", "xml": "application/xml"}


# -- bodies to raw dicts -------------------------------------------------------------------
def _where(response: httpx.Response) -> str:
    try:
        request = response.request
    except RuntimeError:
        return ""
    return f"{request.method} {redact_url(str(request.url))}: "


def _local(tag: str) -> tuple[str, str]:
    """``{ns}Name`` → ``(ns, Name)``."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _xml_root(response: httpx.Response, expected: str, namespace: str, system: str | None) -> ET.Element:
    root = parse_xml(response)
    ns, name = _local(root.tag)
    if name != expected:
        raise MalformedResponseError(
            f"{_where(response)}expected XML <{expected}>, got <{name}>; body starts: {excerpt(response.content)!r}"
        )
    if ns != namespace:
        # Writes in the wrong namespace are silently ignored member by member by the
        # DataContractSerializer: stop before a PUT erases a customer.
        raise FatalError(
            f"the helpdesk's XML namespace is {ns!r} but xml_namespace is {namespace!r}; "
            f"set xml_namespace: {ns!r} in the system's options",
            system=system,
        )
    return root


def _xml_entity(element: ET.Element) -> Raw:
    value = xml_to_dict(element, force_list=("Service",))
    if not isinstance(value, dict):
        return {}
    return value


def list_decoder(
    entity: Entity, fmt: Format, namespace: str, system: str | None = None
) -> Callable[[httpx.Response], list[Raw]]:
    """A ``decode`` for :meth:`~ferryman.http.HttpClient.request_decoded`: a list body to raw entities."""

    def decode(response: httpx.Response) -> list[Raw]:
        if fmt == "xml":
            root = _xml_root(response, entity.list_root, namespace, system)
            items: list[Raw] = []
            for child in root:
                if _local(child.tag)[1] != entity.name:
                    raise MalformedResponseError(
                        f"{_where(response)}<{entity.list_root}> holds a <{_local(child.tag)[1]}>, not a <{entity.name}>"
                    )
                items.append(_xml_entity(child))
            return items
        body = loads_json(response)
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            raise MalformedResponseError(
                f"{_where(response)}expected a JSON array of {entity.name} objects; "
                f"body starts: {excerpt(response.content)!r}"
            )
        return body

    return decode


def one_decoder(
    entity: Entity, fmt: Format, namespace: str, system: str | None = None
) -> Callable[[httpx.Response], Raw | None]:
    """A ``decode`` for one entity; ``None`` for an empty body (204 No Content)."""

    def decode(response: httpx.Response) -> Raw | None:
        if not response.content.strip():
            return None
        if fmt == "xml":
            return _xml_entity(_xml_root(response, entity.name, namespace, system))
        body = loads_json(response)
        if not isinstance(body, dict):
            raise MalformedResponseError(
                f"{_where(response)}expected a JSON {entity.name} object; body starts: {excerpt(response.content)!r}"
            )
        return body

    return decode


@dataclass(frozen=True, slots=True)
class WriteAnswer:
    """What a 2xx answer to a POST, PUT or DELETE said, without believing it.

    ``entity`` is the body when it is one entity (it may still be a stub that does not
    map); ``errors`` are the helpdesk's words when the body is a refusal despite the 2xx;
    neither for an empty, garbled or unrecognised body (the caller reads the entity back).
    """

    entity: Raw | None = None
    errors: list[str] = field(default_factory=list)


def _json_errors(body: Any) -> list[str] | None:
    """The words of a refusal in a JSON body, or ``None`` when the body is not one."""
    if isinstance(body, list) and all(isinstance(item, str) for item in body):
        return [item for item in body if item.strip()]  # ``[]`` is a no-op answer, not an error
    if isinstance(body, dict) and "Id" not in body and "id" not in body:
        message = body.get("Message") or body.get("message")
        if isinstance(message, str):
            return [_with_model_state(message, body.get("ModelState"))]
    return None


def _with_model_state(message: str, state: Any) -> str:
    problems: list[str] = []
    if isinstance(state, dict):
        for key, value in state.items():
            values = value if isinstance(value, list) else [value]
            problems += [f"{key}: {v}" for v in values if isinstance(v, str)]
    return f"{message} ({'; '.join(problems)})" if problems else message


def write_decoder(
    entity: Entity, fmt: Format, namespace: str, system: str | None = None
) -> Callable[[httpx.Response], WriteAnswer]:
    """A ``decode`` for a write: never raises on a body it cannot read (the write happened)."""

    def decode(response: httpx.Response) -> WriteAnswer:
        content = response.content
        if not content.strip():
            return WriteAnswer()
        if content.lstrip().startswith(b"<"):
            try:
                root = parse_xml(content)
            except MalformedResponseError:
                return WriteAnswer()
            ns, name = _local(root.tag)
            if name == "Error":
                body = xml_to_dict(root)
                message = body.get("Message") if isinstance(body, dict) else None
                return WriteAnswer(errors=[message if isinstance(message, str) else excerpt(content)])
            if name.startswith("ArrayOf"):  # ArrayOfstring: a list of messages
                words = [(child.text or "").strip() for child in root]
                return WriteAnswer(errors=[w for w in words if w])
            if name != entity.name:
                return WriteAnswer()
            if ns != namespace:
                _xml_root(response, entity.name, namespace, system)  # raises the namespace FatalError
            return WriteAnswer(entity=_xml_entity(root))
        try:
            body = loads_json(response)
        except MalformedResponseError:
            return WriteAnswer()
        errors = _json_errors(body)
        if errors is not None:
            return WriteAnswer(errors=errors)
        return WriteAnswer(entity=body) if isinstance(body, dict) else WriteAnswer()

    return decode


# -- raw values to typed ---------------------------------------------------------------------
def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ValueError(f"{value!r} is not an integer")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a string")


def _datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a timestamp")
    try:
        # The API documents every time as UTC; it writes them without an offset
        # (DateTimeKind.Unspecified, as Entity Framework loads them).
        return parse_datetime(value, assume_tz=UTC)
    except ValueError:
        raise ValueError(f"{value!r} is not a timestamp") from None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _list(value: Any, item: str) -> list[dict[str, Any]]:
    if value == "":  # <Services/>: an empty list in XML
        return []
    if isinstance(value, Mapping):  # <Services><Service>...</Service></Services>
        value = value.get(item, [])
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {item}")
    entity = ENTITIES[item]
    return [typed(entity, v) if isinstance(v, Mapping) else _bad_item(item) for v in value]


def _bad_item(item: str) -> dict[str, Any]:
    raise ValueError(f"expected a list of {item}")


_CONVERT: dict[Kind, Callable[[Any], Any]] = {
    Kind.INT: _int,
    Kind.STR: _str,
    Kind.DATETIME: _datetime,
    Kind.BOOL: _bool,
}


def typed(entity: Entity, raw: Mapping[str, Any]) -> dict[str, Any]:
    """A raw entity (from JSON or XML) with its known members typed; ``ValueError`` names a bad one."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        prop = entity.by_name.get(name)
        if prop is None or value is None:
            out[name] = value
            continue
        try:
            if prop.kind is Kind.LIST:
                assert prop.item is not None
                out[name] = _list(value, prop.item)
            elif prop.kind is Kind.STR and not isinstance(value, str):
                out[name] = _str(value)
            else:
                out[name] = _CONVERT[prop.kind](value)
        except ValueError as exc:
            raise ValueError(f"{entity.name}.{name}: {exc}") from None
    return out


# -- typed to bodies -------------------------------------------------------------------------
def _xml_value(entity: Entity, name: str, value: Any) -> Any:
    prop = entity.by_name.get(name)
    if prop is not None and prop.kind is Kind.LIST and isinstance(value, list):
        assert prop.item is not None
        item_entity = ENTITIES[prop.item]
        return {prop.item: [_xml_ordered(item_entity, v) for v in value]} if value else {}
    return value


def _xml_ordered(entity: Entity, native: Mapping[str, Any]) -> dict[str, Any]:
    # DataContract order is ordinal order of the member names; unknown members sort in
    # with the rest (the serializer would have put them there, if it knew them).
    return {name: _xml_value(entity, name, native[name]) for name in sorted(native)}


def encode(entity: Entity, native: Mapping[str, Any], fmt: Format, namespace: str) -> tuple[bytes, str]:
    """The body and its ``Content-Type`` for a POST or PUT of ``native``."""
    if fmt == "xml":
        body = dict_to_xml(entity.name, _xml_ordered(entity, native), namespace=namespace)
        return body, "application/xml; charset=utf-8"
    return dumps_json(dict(native)), "application/json; charset=utf-8"


# -- error bodies ----------------------------------------------------------------------------
def error_message(response: httpx.Response) -> str | None:
    """The ``Message`` (and any ``ModelState`` problems) of an ASP.NET Web API error body."""
    content = response.content
    if not content.strip():
        return None
    message: Any = None
    try:
        if content.lstrip().startswith(b"<"):
            root = parse_xml(content)
            body = xml_to_dict(root)
        else:
            body = loads_json(content)
    except MalformedResponseError:
        return None
    if isinstance(body, dict):
        message = body.get("Message") or body.get("message")
    if not isinstance(message, str):
        return None
    return _with_model_state(message, body.get("ModelState"))
