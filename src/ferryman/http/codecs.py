"""Body formats, decoded strictly and safely.

- JSON through orjson (:func:`loads_json`, :func:`dumps_json`).
- Form bodies with PHP/Rails-style nested brackets (:func:`form_encode`), as Cerb and
  Clientexec expect: ``fields[subject]=x``, ``tags[]=a``.
- XML through defusedxml only (:func:`parse_xml`): entity declarations and external
  references are refused, so a billion-laughs body costs nothing.
- Rails *typed* XML both ways (:func:`typed_xml_to_python`, :func:`python_to_typed_xml`),
  as Harvest classic speaks it.
- Plain element-per-field XML both ways (:func:`xml_to_dict`, :func:`dict_to_xml`), as
  ASP.NET Web API's DataContract serializer speaks it (``i:nil="true"`` for null).

Every parse failure is a :class:`~ferryman.errors.MalformedResponseError` whose message
says what was expected and shows a short, redacted start of the body.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote_plus

import httpx
import orjson
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import fromstring as _defused_fromstring

from ferryman.errors import MalformedResponseError
from ferryman.redact import redact, redact_cut, redact_url
from ferryman.timeutil import format_utc, parse_datetime

__all__ = [
    "XSI_NS",
    "dict_to_xml",
    "dumps_json",
    "excerpt",
    "form_encode",
    "loads_json",
    "parse_xml",
    "python_to_typed_xml",
    "typed_xml_to_python",
    "xml_to_dict",
]

XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_XSI_NIL = f"{{{XSI_NS}}}nil"
_EXCERPT = 120


def _body_of(source: httpx.Response | bytes | str) -> tuple[bytes, str]:
    """The body bytes and a "where" prefix for error messages."""
    if isinstance(source, httpx.Response):
        try:
            request = source.request
        except RuntimeError:  # a Response built by hand has no request
            return source.content, ""
        return source.content, f"{request.method} {redact_url(str(request.url))}: "
    if isinstance(source, str):
        return source.encode(), ""
    return bytes(source), ""


def excerpt(body: bytes | str, limit: int = _EXCERPT) -> str:
    """A short, single-line, redacted start of a body for an error message."""
    # Only the start is read (a body may be huge); redact reaches a secret cut there too.
    head = body[: limit * 8]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    # Redact, then cut: a secret cut first survives in part, as a piece no pattern matches.
    return redact_cut(" ".join(redact(text).split()), limit)


# -- JSON ------------------------------------------------------------------------------


def loads_json(source: httpx.Response | bytes | str) -> Any:
    """Parse a JSON body; a body that is not JSON raises :class:`MalformedResponseError`."""
    body, where = _body_of(source)
    if not body.strip():
        raise MalformedResponseError(f"{where}expected a JSON body, got an empty one")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = f"{where}response is not valid JSON ({exc.msg}); body starts: {excerpt(body)!r}"
    raise MalformedResponseError(message)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return format_utc(value)  # refuses a naive datetime rather than guessing its zone
    if isinstance(value, date | dt_time):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps_json(value: Any) -> bytes:
    """JSON bytes: datetimes converted to UTC as ISO 8601 with ``Z``, ``Decimal`` as an exact string."""
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


# -- forms -----------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}[{key}]" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        nested = any(isinstance(item, Mapping | list | tuple) for item in value)
        for index, item in enumerate(value):
            # Scalars as name[]=; containers need an index to keep their fields together.
            _flatten(f"{prefix}[{index}]" if nested else f"{prefix}[]", item, out)
    else:
        out.append((prefix, _scalar(value)))


def form_encode(data: Mapping[str, Any]) -> str:
    """``application/x-www-form-urlencoded`` with nested brackets.

    ``{"fields": {"subject": "x"}, "expand": "a"}`` → ``fields[subject]=x&expand=a``;
    scalar lists → ``tags[]=a&tags[]=b``; lists of mappings → ``items[0][name]=...``.
    ``True``/``False`` → ``1``/``0``, ``None`` → empty, ``Decimal`` exact, datetimes
    ISO 8601 ``Z``. Brackets are left readable; everything else is percent-encoded.
    """
    pairs: list[tuple[str, str]] = []
    _flatten("", data, pairs)
    return "&".join(f"{quote_plus(k, safe='[]')}={quote_plus(v, safe='')}" for k, v in pairs)


# -- XML, safely -----------------------------------------------------------------------


def parse_xml(source: httpx.Response | bytes | str) -> ET.Element:
    """Parse XML with defusedxml: no entity declarations, no external references.

    A body that declares entities (billion laughs, XXE) is refused before anything is
    expanded: ``MalformedResponseError("XML refused: entity declarations are not allowed")``.
    """
    body, where = _body_of(source)
    try:
        return _defused_fromstring(body, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except (EntitiesForbidden, DTDForbidden):
        message = f"{where}XML refused: entity declarations are not allowed"
    except ExternalReferenceForbidden:
        message = f"{where}XML refused: external references are not allowed"
    except DefusedXmlException as exc:
        message = f"{where}XML refused: {type(exc).__name__}"
    except ET.ParseError as exc:
        message = f"{where}response is not well-formed XML ({exc}); body starts: {excerpt(body)!r}"
    raise MalformedResponseError(message)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _is_nil(element: ET.Element) -> bool:
    nil = element.get("nil") or element.get(_XSI_NIL)
    return nil is not None and nil.strip().lower() == "true"


# -- Rails typed XML -------------------------------------------------------------------


def _typed_scalar(element: ET.Element, kind: str, text: str) -> Any:
    text = text.strip()
    try:
        if kind == "integer":
            return int(text)
        if kind == "decimal":
            return Decimal(text)
        if kind == "float":
            return float(text)
        if kind == "boolean":
            if text.lower() in ("true", "1"):
                return True
            if text.lower() in ("false", "0"):
                return False
            raise ValueError(text)
        if kind == "date":
            return date.fromisoformat(text)
        if kind == "datetime":
            return parse_datetime(text)
    except (ValueError, InvalidOperation) as exc:
        raise MalformedResponseError(
            f"XML element <{element.tag}> is not a valid {kind}: {excerpt(text, 40)!r}"
        ) from exc
    raise MalformedResponseError(f"XML element <{element.tag}> has unknown type={kind!r}")


def typed_xml_to_python(element: ET.Element) -> Any:
    """Convert a Rails typed-XML element to Python values.

    ``type="integer"`` → ``int``, ``decimal`` → exact ``Decimal``, ``float``, ``boolean``,
    ``date`` → ``date``, ``datetime`` (any case: ``dateTime``) → aware UTC ``datetime``, ``array`` → ``list`` of
    the children; ``nil="true"`` → ``None``. An untyped element with children becomes a
    ``dict`` keyed by child tag (dashes kept: ``client-id``; a repeated tag becomes a
    list); an untyped leaf is its text, ``None`` when empty (as Rails reads it).
    The root's own tag is dropped: ``<contacts type="array">`` gives a list.
    """
    if _is_nil(element):
        return None
    kind = element.get("type")
    if kind is not None:
        # Rails writes type names in more than one spelling: real Harvest XML says
        # type="dateTime" where the documentation says "datetime"
        kind = kind.lower()
    if kind == "array":
        return [typed_xml_to_python(child) for child in element]
    text = element.text or ""
    if kind not in (None, "string", "symbol"):
        return _typed_scalar(element, kind, text)
    if len(element) == 0:
        return text if (text or kind) else None
    return _collect((child.tag, typed_xml_to_python(child)) for child in element)


def _collect(items: Iterable[tuple[str, Any]], force_list: Collection[str] = ()) -> dict[str, Any]:
    """Children to a dict; a name seen twice (or listed in ``force_list``) holds a list."""
    result: dict[str, Any] = {}
    lists: set[str] = set()
    for name, value in items:
        if name in lists:
            result[name].append(value)
        elif name in result:
            result[name] = [result[name], value]
            lists.add(name)
        elif name in force_list:
            result[name] = [value]
            lists.add(name)
        else:
            result[name] = value
    return result


def _singular(tag: str) -> str:
    if tag.endswith("ies"):
        return tag[:-3] + "y"
    if tag.endswith("s") and not tag.endswith("ss"):
        return tag[:-1]
    return "item"


def _typed_element(parent: ET.Element | None, tag: str, value: Any) -> ET.Element:
    element = ET.Element(tag) if parent is None else ET.SubElement(parent, tag)
    if value is None:
        element.set("nil", "true")
    elif isinstance(value, bool):
        element.set("type", "boolean")
        element.text = "true" if value else "false"
    elif isinstance(value, int):
        element.set("type", "integer")
        element.text = str(value)
    elif isinstance(value, Decimal):
        element.set("type", "decimal")
        element.text = format(value, "f")
    elif isinstance(value, float):
        element.set("type", "float")
        element.text = repr(value)
    elif isinstance(value, datetime):
        element.set("type", "datetime")
        element.text = format_utc(value)
    elif isinstance(value, date):
        element.set("type", "date")
        element.text = value.isoformat()
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _typed_element(element, str(key), item)
    elif isinstance(value, list | tuple):
        element.set("type", "array")
        for item in value:
            _typed_element(element, _singular(tag), item)
    else:
        element.text = str(value)
    return element


def python_to_typed_xml(root_tag: str, value: Mapping[str, Any] | list[Any]) -> bytes:
    """Rails typed XML bytes for ``value`` under ``<root_tag>``.

    ``Decimal`` → ``type="decimal"`` as a plain string (never a float), ``int`` →
    ``integer``, ``bool`` → ``boolean``, ``date``, ``datetime`` → ``2008-04-09T12:07:56Z``,
    ``None`` → ``nil="true"``, a list → ``type="array"`` whose items are named by the
    singular of the list's tag (``contacts`` → ``contact``, else ``item``). Datetimes must
    be aware; they are written in UTC.
    """
    root = _typed_element(None, root_tag, value)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


# -- plain XML (DataContract) ----------------------------------------------------------


def xml_to_dict(element: ET.Element, *, force_list: Collection[str] = ()) -> Any:
    """Plain element-per-field XML to Python: element text, nested dicts, ``None`` for nil.

    Namespaces are dropped from tags (``{http://schemas...}Name`` → ``Name``); both
    ``nil="true"`` and ``i:nil="true"`` (XML Schema instance) mean ``None``; a leaf is its
    text (``""`` when empty, since untyped XML cannot tell empty from absent); a tag that
    repeats, or is named in ``force_list``, becomes a list. Values stay strings: the
    connector knows its field types. For ``<ArrayOfTicket>`` roots iterate the children:
    ``[xml_to_dict(child) for child in root]``.
    """
    if _is_nil(element):
        return None
    if len(element) == 0:
        return element.text or ""
    return _collect(((_local(child.tag), xml_to_dict(child, force_list=force_list)) for child in element), force_list)


def _plain_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _scalar(value)


def _plain_children(parent: ET.Element, tag: str, value: Any, ns: str) -> None:
    if isinstance(value, list | tuple):
        for item in value:
            _plain_children(parent, tag, item, ns)
        return
    element = ET.SubElement(parent, f"{{{ns}}}{tag}" if ns else tag)
    _plain_fill(element, value, ns)


def _plain_fill(element: ET.Element, value: Any, ns: str) -> None:
    if value is None:
        element.set(_XSI_NIL, "true")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _plain_children(element, str(key), item, ns)
    else:
        element.text = _plain_text(value)


def dict_to_xml(root_tag: str, value: Mapping[str, Any], *, namespace: str | None = None) -> bytes:
    """Plain XML bytes for ``value``: one element per key, in the mapping's order.

    ``None`` → ``<Key xsi:nil="true"/>`` (XML Schema instance; any prefix is equivalent
    to DataContract's ``i:``); a list → the element repeated; a mapping → nested elements;
    ``True`` → ``true``; ``Decimal`` exact; datetimes ISO 8601 ``Z``. With ``namespace``
    every element is in that default namespace (DataContract XML needs the contract's
    namespace, and its members in the order the contract declares them).
    """
    ns = namespace or ""
    root = ET.Element(f"{{{ns}}}{root_tag}" if ns else root_tag)
    _plain_fill(root, value, ns)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True, default_namespace=namespace)
