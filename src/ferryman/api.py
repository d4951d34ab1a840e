"""The base for connectors that talk to an app over HTTP.

A seeded connector subclasses :class:`ApiConnector`, declares its options (a subclass of
:class:`~ferryman.http.HttpOptions`), says how it authenticates (:meth:`auth`), how the
app reports errors inside otherwise successful responses (:meth:`response_hook`), and
maps native entities to canonical records and back. The HTTP client (rate limits,
``Retry-After``, retries, redaction) is created and closed here, one per system.

Reads go through the one read loop, :mod:`ferryman.sdk.readloop` (paging, keyset
restarts, the since filter and the guards against APIs that do not page or sort).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from pydantic import TypeAdapter

from ferryman.connector import Connector, Reject, SystemContext
from ferryman.errors import ValidationFailed
from ferryman.http import HttpClient, HttpOptions, HttpRegistry, host_key
from ferryman.records import Record

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_NESTING",
    "ApiConnector",
    "cut_nesting",
    "key_problem",
    "nesting_path",
    "nesting_problem",
    "to_record",
    "to_records",
]

#: How deep a record field's value may nest. A record is serialised, wrapped (webhook
#: events, dead letters) and parsed again on its way; JSON parsers stop near 200 levels
#: (pydantic) and orjson writes no more than 254, so a deeper record would be accepted and
#: then fail every run. The limit leaves room below both.
MAX_NESTING = 100
#: The longest key the state store holds (links, dead letters and the webhook inbox).
MAX_KEY_LENGTH = 500
#: A cap on a reject's ``ref``: the dead-letter column holds 500 characters.
_MAX_REF = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTAINERS = (dict, list, tuple)
_UNREADABLE = ", so it cannot be read back once stored"
_SCALARS = (str, int, float, bool, Decimal, datetime, date, type(None))
_NESTABLE: dict[type[Record], tuple[str, ...]] = {}


class ApiConnector(Connector):
    """A connector with one :class:`~ferryman.http.HttpClient` per system."""

    Options: ClassVar[type[HttpOptions]] = HttpOptions
    #: a cheap GET that proves the credentials work, for ``ferryman check``
    check_path: ClassVar[str] = "/"

    options: HttpOptions
    http: HttpClient

    def __init__(self, context: SystemContext) -> None:
        super().__init__(context)
        self._http: HttpClient | None = None

    # -- what a subclass says ----------------------------------------------------------
    def auth(self) -> httpx.Auth | None:
        """The credentials, as an :class:`httpx.Auth` (see :mod:`ferryman.http.auth`)."""
        return None

    def headers(self) -> dict[str, str]:
        """Headers on every request (``Accept``...)."""
        return {}

    def response_hook(self, response: httpx.Response) -> None:
        """Raise a :mod:`ferryman.errors` class for errors the app reports with HTTP 200."""

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        registry = self.context.services.get("http")
        if registry is None:
            registry = self.context.services["http"] = HttpRegistry()
        self._http = HttpClient(
            self.name,
            self.options,
            registry=registry,
            auth=self.auth(),
            headers=self.headers(),
            response_hook=self.response_hook,
            transport=self.context.services.get("http_transport"),
        )
        self.http = self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def hosts(self) -> list[str]:
        return [host_key(self.options.base_url)]

    async def check(self) -> None:
        await self.http.request("GET", self.check_path)


def to_record(
    record_type: type[Record], build: Callable[[], dict[str, Any]], *, ref: str, key: str | None = None
) -> Record | Reject:
    """Build a record from a native entity, or a :class:`Reject` saying why it cannot be one.

    Every native record goes through here, so what no later step could process (content
    nested past :data:`MAX_NESTING`, a key the state store cannot hold) is refused here, as
    one reject, instead of failing the page, or every run, further on."""
    if len(ref) > _MAX_REF:
        ref = ref[: _MAX_REF - 1] + "\u2026"
    if key is not None and key_problem(key) is not None:
        key = None  # a reject's key goes into the dead-letter table, which could not hold it
    try:
        data = build()
        too_deep = nesting_problem({n: data[n] for n in _nestable(record_type) if n in data})
        if too_deep is not None:
            return Reject(ref, too_deep, key=key)
        record = record_type.model_validate(data)
    except ValidationFailed as exc:
        return Reject(ref, str(exc), key=key)
    except RecursionError:  # a connector's own recursive walk of a hostile document
        return Reject(ref, f"nested deeper than {MAX_NESTING} levels{_UNREADABLE}", key=key)
    except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if hasattr(exc, "errors"):
            err = exc.errors()[0]
            reason = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
        return Reject(ref, reason, key=key)
    except Exception as exc:
        # A native value of a shape the mapping never expected (a list where a string was
        # promised) is that record's problem: a dead letter naming the error, the page goes on.
        detail = str(exc).splitlines()[0] if str(exc) else ""
        return Reject(ref, f"could not be mapped ({type(exc).__name__}{': ' + detail if detail else ''})", key=key)
    problem = key_problem(record.key)
    if problem is not None:
        return Reject(ref, f"key: {problem}")  # no key: the letter could not hold it either
    return record


def to_records(record_type: type[Record], page: Sequence[dict[str, Any]]) -> list[Record] | None:
    """A page of canonical field values validated at once, or ``None`` when any of them
    would not make a clean record (then build each with :func:`to_record`, which says
    which and why).

    The page's fast path: one pydantic-core call over the list instead of one per record,
    and the nesting and key checks of :func:`to_record` made over the page. For a page
    that passes, the records are exactly those :func:`to_record` builds one by one."""
    nestable = _nestable(record_type)
    for data in page:
        for name in nestable:
            value = data.get(name)
            if isinstance(value, _CONTAINERS) and value and _deeper(value, MAX_NESTING):  # as nesting_path
                return None
    try:
        records: list[Record] = _page_adapter(record_type).validate_python(page)
    except Exception:  # whatever it is, to_record tells it record by record
        return None
    keys = [r.key for r in records]
    if keys and (max(map(len, keys)) > MAX_KEY_LENGTH or _CONTROL.search("".join(keys))):
        return None
    return records


def _page_adapter(record_type: type[Record]) -> TypeAdapter[list[Record]]:
    adapter = _PAGE_ADAPTERS.get(record_type)
    if adapter is None:
        adapter = _PAGE_ADAPTERS[record_type] = TypeAdapter(list[record_type])  # type: ignore[valid-type]
    return adapter


_PAGE_ADAPTERS: dict[type[Record], TypeAdapter[list[Record]]] = {}


def key_problem(key: str) -> str | None:
    """Why the state store cannot hold ``key`` (too long, control characters), or None."""
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than {MAX_KEY_LENGTH} characters ({len(key)})"
    if _CONTROL.search(key):
        return "holds control characters"
    return None


def _nestable(record_type: type[Record]) -> tuple[str, ...]:
    """The fields of a record type that can hold containers (``extra``): the only ones to walk."""
    names = _NESTABLE.get(record_type)
    if names is None:
        names = _NESTABLE[record_type] = tuple(
            n for n, f in record_type.model_fields.items() if not _scalar(f.annotation)
        )
    return names


def _scalar(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _scalar(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_scalar(a) for a in typing.get_args(annotation))
    return origin is typing.Literal or annotation in _SCALARS


def nesting_problem(fields: Mapping[str, Any]) -> str | None:
    """Why a record with these field values could not be processed for its nesting, or None."""
    deep = nesting_path(fields)
    return None if deep is None else f"{deep}: nested deeper than {MAX_NESTING} levels{_UNREADABLE}"


def nesting_path(data: Mapping[str, Any], limit: int = MAX_NESTING) -> str | None:
    """Where a field of ``data`` nests deeper than ``limit`` levels (``extra.profile``), or None.

    Iterative on purpose: a value deep enough to matter would overflow a recursive walk. It
    runs on every record read, so the common flat case costs a type check per value."""
    for name, value in data.items():
        if isinstance(value, _CONTAINERS) and _deeper(value, limit):
            children = value.items() if isinstance(value, dict) else enumerate(value)
            below = next((k for k, c in children if isinstance(c, _CONTAINERS) and _deeper(c, limit - 1)), None)
            return str(name) if below is None else f"{name}.{below}"
    return None


def _deeper(value: Any, limit: int) -> bool:
    """Whether containers nest in ``value`` (itself one level) more than ``limit`` levels."""
    children: Any = value.values() if isinstance(value, dict) else value
    depth = 1
    while True:
        nodes = [c for c in children if isinstance(c, _CONTAINERS)]
        if not nodes:
            return False
        depth += 1
        if depth > limit:
            return True
        children = [c for n in nodes for c in (n.values() if isinstance(n, dict) else n)]


def cut_nesting(data: Any, limit: int = MAX_NESTING) -> Any:
    """A copy of a native record with what nests past ``limit`` levels replaced by a note, so
    the rest can be kept (a dead letter's payload) by writers that stop at a depth."""
    if isinstance(data, Mapping):
        return {k: _cut(v, 1, limit) for k, v in data.items()}
    return _cut(data, 0, limit)


def _cut(value: Any, depth: int, limit: int) -> Any:
    if not isinstance(value, _CONTAINERS):
        return value
    if depth > limit:
        return f"(cut: nested deeper than {limit} levels)"
    if isinstance(value, dict):
        return {k: _cut(v, depth + 1, limit) for k, v in value.items()}
    return [_cut(v, depth + 1, limit) for v in value]
