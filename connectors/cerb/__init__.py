r"""Cerb, the open-source helpdesk: tickets, contacts and organisations through its records API.

Streams (each reads, reads incrementally, creates, updates, deletes and finds)::

    tickets        Cerb ``ticket``   (canonical Ticket; natural key: subject + created)
    contacts       Cerb ``contact``  (canonical Contact; natural key: email)
    organisations  Cerb ``org``      (canonical Organisation; natural key: name)

Paths are Cerb's ``/rest/records/{type}/...`` with ``.json``: ``GET {id}.json``,
``POST create.json``, ``PUT {id}.json``, ``PATCH upsert.json`` (``query=`` must match 0 or
1 records), ``DELETE {id}.json``; bodies are form-encoded ``fields[subject]=...``.

Reading searches ``GET search.json?q=updated:"<from> to now" sort:updated&page=N&limit=M``
(``<from>`` ISO 8601 with ``Z``; limit at most 500; contacts add ``expand=email_address``,
without which Cerb leaves their email out) through the one read loop,
:func:`ferryman.sdk.readloop.keyset_read`: it restarts the search from the newest timestamp
seen instead of paging deep into a result set that moves while it is read, and verifies
what Cerb says instead of believing it. Records are handed over in Cerb's order, never
sorted here: Cerb sorts by ``updated`` only (ties in any order, which the loop tolerates),
and a search that silently dropped our sort (Cerb ignores what it does not understand)
stops the read with OrderViolation instead of losing records. Whether another page follows
is computed from ``total``/``count`` (Cerb 7 sends no ``limit``), because a page past the
end repeats the last page; the loop's repeat guard catches it if that ever fails.

**Verified writes.** A 2xx answer is never a rejection: when its body is not the whole
record (a stub with the id, a contact without its expanded email), the record is read back
with ``GET {id}.json`` (or found by its natural key). Every ticket PUT carries
``fields[updated]=<now>``: Cerb does not move a ticket's ``updated`` on a records-API PUT,
and an edit nobody's incremental read can see is an edit lost.

**Queries.** Inside ``"..."`` Cerb knows no escapes and ``*`` is a wildcard, so a lookup
never sends ``"``, ``\`` or ``*`` as text: they become ``*`` and the answers are compared
exactly here. Contacts are looked up with ``email:(email:"...")``, Cerb's exact address
filter; ``email:"..."`` is a full-text phrase (``doe@acme.example`` matches
``john.doe@acme.example``) that also misses addresses the indexer has not seen yet.

**Errors inside HTTP 200.** Cerb answers most failures with status 200 and
``{"__status": "error", "__error": "ERROR_...", "message": "..."}``. :meth:`CerbConnector.response_hook`
turns them into the error class that decides what the engine does, with Cerb's message
verbatim (secrets redacted):

================================  ===============================  ===========================================
``__error``                       on a write (create/update/...)   on a read (search, get)
================================  ===============================  ===========================================
``ERROR_PARAM_INVALID``,          RecordRejected: dead-lettered,   FatalError: our request is wrong, the run
``ERROR_PARAM_REQUIRED``,         the run goes on                  stops (retrying cannot help)
``ERROR_SEARCH_FILTERS_INVALID``
``ERROR_NOT_FOUND``               delete: done (it is gone);       get: ``None``; search: FatalError (unknown
                                  update, upsert: RecordRejected   record type)
``ERROR_PERMISSIONS``, an error    AuthError: the run stops, the cursor stays
without ``__error`` (a token
lacking the scope), 401/403
``ERROR_NOT_IMPLEMENTED``         NotSupportedError: the run stops, not retried
``ERROR`` or anything else        RetriableError: retried with backoff where the request is idempotent
                                  (GET, PUT, DELETE, upsert); otherwise the run fails and the next one retries
================================  ===============================  ===========================================

**Idempotent creates.** With ``upsert_creates`` (the default) a contact with an email, or
an org with a name, is created through ``PATCH upsert.json`` with
``query=email:(email:"...")`` / ``query=name:"..."``: if a create was interrupted after Cerb stored the record, doing it
again updates that record instead of making a twin, so the HTTP layer may retry it after
a timeout or a 5xx like a PUT. A natural key the query language cannot say exactly (it
holds ``"``, ``\`` or ``*``) is looked up first instead, then updated or created.
Tickets have no natural key Cerb can enforce, so they are created with ``POST create.json``
and the engine's intents reconcile them through :meth:`CerbConnector.find` (subject and
creation second).

Auth: ``auth: bearer`` (default) sends ``Authorization: Bearer <token>`` (an OAuth2
access token); ``auth: cerb_auth`` signs each request with the legacy ``Cerb-Auth``
header (see ``_auth.py``: MD5 over verb, Date, path, sorted query, body and md5(secret)).
Cerb refuses a ``Date`` 600 s or more away from its clock, so keep the host's clock synced.

Field mapping (Cerb <-> canonical; README.md in this folder has the full tables with
both directions' rules; unlisted native keys go to ``extra``; epoch seconds <-> aware UTC)::

    ticket   id<->key  subject<->subject  status open/waiting/closed<->open/pending/closed
             status deleted<->deleted=true  importance 0-100<->priority low/normal/high/urgent
             (25/50/75/100; exact value in extra.importance)  owner_id<->assignee
             org_id<->organisation_key  created<->created_at  updated->updated_at
             closed (closed_at in Cerb 7)<->closed_at while closed
             group_id, bucket_id, mask, url -> extra  (elapsed_*, num_messages*: dropped)
             (group_id written on create from extra or the default; bucket_id only when set)
    contact  id<->key  first_name, last_name, title, phone, mobile<->same
             email_address (expand)<->email  org_id<->organisation_key
             created_at->created_at (when Cerb renders it)  updated_at->updated_at
    org      id<->key  name, street, city, country, phone, website<->same  postal<->postcode
             created<->created_at  updated->updated_at  province -> extra
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from ferryman.api import ApiConnector, to_record
from ferryman.config import Secret
from ferryman.connector import Capability, Cursor, Page, Reject, StreamInfo
from ferryman.cursor import SECOND
from ferryman.errors import (
    AuthError,
    ConnectorError,
    FatalError,
    MalformedResponseError,
    NotSupportedError,
    RecordRejected,
    RetriableError,
    ValidationFailed,
)
from ferryman.http import Bearer, HttpOptions
from ferryman.http.codecs import excerpt
from ferryman.records import Contact, Organisation, Record, Ticket
from ferryman.redact import redact, redact_url
from ferryman.sdk.readloop import Fetched, PageGuard, keyset_read
from ferryman.timeutil import format_utc, utcnow

from ._auth import CerbAuth
from ._mapping import CONTACT_EXPANDED, NATIVE_TYPES, READERS, VOLATILE_FIELDS, epoch, to_cerb

__all__ = ["CerbConnector", "CerbNotFound", "CerbOptions", "cerb_error"]

MAX_LIMIT = 500  # Cerb clamps a search's limit to 1..500
FIND_LIMIT = 100
FIND_MAX_PAGES = 50  # a lookup whose wildcards match more than this many pages is not a lookup

ALL = frozenset(Capability)
# Whole epoch seconds everywhere. Every stream can lose records from its lists: contacts and
# orgs are deleted for good, and tickets with `ticket_delete: purge` (or Cerb's own purge of
# its recycle bin), so the engine probes linked keys with get().
STREAMS: dict[str, StreamInfo] = {
    "tickets": StreamInfo(
        "tickets",
        Ticket,
        ALL,
        natural_key="subject",
        description="Cerb tickets (records type ticket)",
        precision=SECOND,
        hides_deleted=True,
    ),
    "contacts": StreamInfo(
        "contacts",
        Contact,
        ALL,
        natural_key="email",
        description="Cerb contacts (records type contact)",
        precision=SECOND,
        hides_deleted=True,
    ),
    "organisations": StreamInfo(
        "organisations",
        Organisation,
        ALL,
        natural_key="name",
        description="Cerb organizations (records type org)",
        precision=SECOND,
        hides_deleted=True,
    ),
}
#: keys a write answer must carry to be taken as the stored record (else it is read back)
COMPLETE = {
    "tickets": ("id", "updated", "subject", "status"),
    "contacts": ("id", "updated_at", "first_name", CONTACT_EXPANDED),
    "organisations": ("id", "updated", "name"),
}
#: per stream, the expand= that makes Cerb render what the mapping needs
EXPAND = {"contacts": CONTACT_EXPANDED}


class CerbOptions(HttpOptions):
    """The ``systems.NAME`` keys of a Cerb system (plus every :class:`HttpOptions` key).

    ``base_url`` is the REST root, e.g. ``https://cerb.example.com/rest``; the install's
    own URL (``https://cerb.example.com``) gets ``/rest`` appended.
    """

    auth: Literal["bearer", "cerb_auth"] = Field(
        "bearer", description="bearer: OAuth2 access token; cerb_auth: legacy signed Cerb-Auth header"
    )
    token: Secret | None = Field(None, description="OAuth2 access token (auth: bearer)")
    access_key: str | None = Field(None, description="API access key (auth: cerb_auth)")
    secret_key: Secret | None = Field(None, description="API secret key (auth: cerb_auth)")
    default_group_id: int = Field(1, ge=1, description="group a new ticket lands in when the record has no group_id")
    default_bucket_id: int | None = Field(
        None,
        ge=0,
        description="bucket a new ticket lands in; unset (or 0): its group's inbox. Cerb has no bucket 0, and a "
        "bucket of another group moves the ticket to that group",
    )
    volatile_fields: list[str] = Field(
        default_factory=lambda: list(VOLATILE_FIELDS),
        description="native fields (globs) kept out of extra and fingerprints: they change without the record "
        "changing (elapsed_* counts seconds, num_messages* counts messages)",
    )
    ticket_delete: Literal["status", "purge"] = Field(
        "status",
        description="status: set status=deleted (Cerb's recycle bin, undoable, seen by incremental reads); "
        "purge: DELETE the ticket for good",
    )
    upsert_creates: bool = Field(
        True, description="create contacts and orgs with PATCH upsert keyed by email / name, safe to repeat"
    )
    search_sort: str = Field(
        "updated",
        pattern=r"^[a-z_]+(,[a-z_]+)*$",
        description="the quick-search sort of incremental reads; 'updated,id' if your Cerb sorts ties by id",
    )

    @field_validator("base_url")
    @classmethod
    def _rest_root(cls, value: str) -> str:
        # Cerb's API lives at <install>/rest; accept the install's own URL too.
        root = value.split("?", 1)[0].rstrip("/")
        return root if root.endswith("/rest") else root + "/rest"

    @model_validator(mode="after")
    def _credentials(self) -> CerbOptions:
        if self.auth == "bearer" and self.token is None:
            raise ValueError("auth: bearer needs 'token' (an OAuth2 access token, e.g. ${CERB_TOKEN})")
        if self.auth == "cerb_auth" and (not self.access_key or self.secret_key is None):
            raise ValueError("auth: cerb_auth needs 'access_key' and 'secret_key' (e.g. ${CERB_SECRET})")
        return self


class CerbNotFound(RecordRejected):
    """Cerb said ``ERROR_NOT_FOUND``: a get answers ``None``, a delete is done, an update is refused."""


_OPERATIONS = {"create": "create", "upsert": "upsert", "search": "search"}


def _operation(method: str, path: str) -> str:
    """What a request to the records API does: search, get, create, update, upsert, delete."""
    leaf = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
    if leaf in _OPERATIONS:
        return _OPERATIONS[leaf]
    return {"GET": "get", "PUT": "update", "DELETE": "delete", "POST": "create", "PATCH": "upsert"}.get(method, "get")


def cerb_error(body: Mapping[str, Any], method: str, path: str, *, system: str | None = None) -> ConnectorError:
    """The error class for a Cerb ``{"__status": "error"}`` answer to ``method path``.

    Pure: it decides, the hook raises. See the module docstring for the table.
    """
    code = str(body.get("__error") or "").upper()
    message = redact(str(body.get("message") or "no message"))
    operation = _operation(method.upper(), path)
    writing = operation in ("create", "update", "upsert", "delete")
    where = f"{method.upper()} {redact_url(path)}"
    said = f"Cerb refused to {operation} ({code or 'no code'}): {message}"
    if "__error" not in body:
        # Real Cerb 10.4 answers a token without the needed scope with HTTP 200 and no code.
        return AuthError(
            f"{said} [{where}]; an error without a code is how Cerb refuses a token lacking a scope: "
            "grant the OAuth app the scope for this record type",
            system=system,
        )
    if not code and message.startswith("Access denied"):
        return AuthError(f"{said} [{where}]; check the system's credentials", system=system)
    if code == "ERROR_PERMISSIONS":
        return AuthError(f"{said} [{where}]; the API credentials lack this privilege in Cerb", system=system)
    if code == "ERROR_NOT_IMPLEMENTED":
        return NotSupportedError(f"{said} [{where}]", system=system)
    if code == "ERROR_NOT_FOUND":
        if operation in ("get", "update", "delete"):
            return CerbNotFound(said, system=system)
        if operation == "search":
            return FatalError(f"{said} [{where}]; is the record type right?", system=system)
        return RecordRejected(said, system=system)
    if code in ("ERROR_PARAM_INVALID", "ERROR_PARAM_REQUIRED", "ERROR_SEARCH_FILTERS_INVALID"):
        if writing:
            return RecordRejected(said, system=system)
        return FatalError(f"{said} [{where}]; retrying cannot help", system=system)
    return RetriableError(f"{said} [{where}]", system=system)


class CerbConnector(ApiConnector):
    """Cerb's records API: tickets, contacts and organisations (see the module docstring)."""

    kind = "cerb"
    Options = CerbOptions
    summary = "Cerb helpdesk records API: tickets, contacts, orgs (bearer token or signed Cerb-Auth)"
    check_path: ClassVar[str] = "/workers/me.json"

    options: CerbOptions

    # -- description -------------------------------------------------------------------
    @classmethod
    def describe(cls) -> Mapping[str, StreamInfo]:
        return STREAMS

    def streams(self) -> Mapping[str, StreamInfo]:
        return STREAMS

    # -- HTTP --------------------------------------------------------------------------
    def auth(self) -> httpx.Auth:
        if self.options.auth == "cerb_auth":
            assert self.options.access_key and self.options.secret_key is not None
            return CerbAuth(self.options.access_key, self.options.secret_key.get_secret_value())
        assert self.options.token is not None
        return Bearer(self.options.token.get_secret_value())

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def response_hook(self, response: httpx.Response) -> None:
        """Raise for Cerb's errors inside 200s, and name Cerb's reason on a 401/403."""
        status = response.status_code
        if status not in (200, 401, 403):
            return  # the HTTP layer maps the rest (429/5xx retried, other 4xx rejected)
        try:
            body = response.json()
        except ValueError:
            if status == 200:
                return  # the decoder reports a malformed body (and it is retried)
            body = {}
        if not isinstance(body, dict):
            return
        request = response.request
        if status in (401, 403):
            message = redact(str(body.get("message") or excerpt(response.content) or "no reason given"))
            hint = "check the system's credentials"
            if self.options.auth == "cerb_auth" and "timestamp" in message.lower():
                hint = "Cerb refuses a Date more than 10 minutes from its clock: is this host's clock synced (NTP)?"
            raise AuthError(
                f"authentication failed (HTTP {status}) for {request.method} {redact_url(str(request.url))}: "
                f"Cerb says {message!r}; {hint}",
                system=self.name,
                status=status,
            )
        if body.get("__status") == "error":
            raise cerb_error(body, request.method, request.url.path, system=self.name)

    # -- reading -----------------------------------------------------------------------
    def _path(self, stream: str, leaf: str) -> str:
        self.stream(stream)  # a clear error for a stream Cerb does not have
        return f"/records/{NATIVE_TYPES[stream]}/{leaf}.json"

    def _record(self, stream: str, native: Any) -> Record | Reject:
        record_type, fields = READERS[stream]
        if not isinstance(native, Mapping):
            return Reject(f"{stream} result", f"not a record dictionary: {excerpt(repr(native))}", raw=native)
        id = native.get("id")
        ref = f"{NATIVE_TYPES[stream]} {id}"
        volatile = self.options.volatile_fields
        return to_record(record_type, lambda: fields(native, volatile), ref=ref, key=None if id is None else str(id))

    def _page(self, stream: str, body: Mapping[str, Any]) -> tuple[list[Record], list[Reject], int]:
        """A search answer's records (in Cerb's order), rejects, and how many results it held."""
        results = body.get("results") or []
        if isinstance(results, Mapping):  # PHP renders id-keyed arrays as objects
            results = list(results.values())
        records: list[Record] = []
        rejects: list[Reject] = []
        for native in results:
            item = self._record(stream, native)
            if isinstance(item, Record):
                records.append(item)
            else:
                rejects.append(item)
        return records, rejects, len(results)

    async def read(self, stream: str, since: Cursor | None, page_size: int) -> AsyncIterator[Page]:
        path = self._path(stream, "search")
        limit = max(1, min(MAX_LIMIT, page_size))

        async def fetch(updated_since: datetime | None, page: int) -> Fetched:
            query = self._incremental_query(updated_since)
            body = await self._search(stream, query, page, limit)
            records, rejects, count = self._page(stream, body)
            where = f"GET {path}?q={query}&page={page}&limit={limit}"
            return Fetched(records, rejects, more=_more(body, page, limit, count), where=where)

        async for page in keyset_read(fetch, since, system=self.name, stream=stream, granularity=SECOND):
            yield page

    def _incremental_query(self, updated_since: datetime | None) -> str:
        sort = f"sort:{self.options.search_sort}"
        if updated_since is None:
            return sort
        # Whole seconds with Z: Cerb finds nothing for a date with fractions and reads a
        # date without a zone in its worker's timezone. Flooring only widens the range.
        return f'updated:"{format_utc(updated_since.replace(microsecond=0))} to now" {sort}'

    async def _search(self, stream: str, query: str, page: int, limit: int) -> Mapping[str, Any]:
        params: dict[str, Any] = {"q": query, "page": page, "limit": limit, "show_meta": 0}
        if stream in EXPAND:
            params["expand"] = EXPAND[stream]
        _, body = await self.http.request_decoded("GET", self._path(stream, "search"), params=params)
        if not isinstance(body, Mapping):
            raise RetriableError(f"search answered {excerpt(repr(body))}, not a dictionary", system=self.name)
        return body

    async def get(self, stream: str, key: str) -> Record | None:
        """The record ``key``; ``None`` when Cerb has none (a deleted ticket answers with
        ``deleted=True``)."""
        if not key.isdigit():
            return None
        params = {"expand": EXPAND[stream]} if stream in EXPAND else None
        try:
            _, body = await self.http.request_decoded("GET", self._path(stream, key), params=params)
        except CerbNotFound:
            return None
        return self._accept(stream, body)

    def _accept(self, stream: str, body: Any) -> Record:
        item = self._record(stream, body)
        if isinstance(item, Reject):
            raise ValidationFailed(f"{item.ref}: {item.reason}", system=self.name, ref=item.ref)
        return item

    async def find(self, stream: str, record: Record) -> Record | None:
        """The Cerb record that is ``record``: contacts by email, orgs by name, tickets by
        subject and (when the record has one) the second it was created.

        The query may match more than the record (wildcards stand in for ``"``, ``\\`` and
        ``*``), so every answer is compared exactly here, page by page.
        """
        term, value, check = self._natural(stream, record)
        if value is None:
            return None
        query = f"{_filter(stream, term, value)} sort:id"
        guard = PageGuard(system=self.name, stream=stream, cap=FIND_MAX_PAGES)
        page = 1
        while True:
            body = await self._search(stream, query, page, FIND_LIMIT)
            records, _, count = self._page(stream, body)
            guard.fetched(tuple(r.key for r in records), f"GET {self._path(stream, 'search')}?q={query}&page={page}")
            for found in records:
                if check(found):
                    return found
            if not _more(body, page, FIND_LIMIT, count):
                return None
            page += 1

    def _natural(self, stream: str, record: Record) -> tuple[str, str | None, Any]:
        if isinstance(record, Contact):
            email = (record.email or "").strip()
            return "email", email or None, lambda r: (r.email or "").strip().lower() == email.lower()
        if isinstance(record, Organisation):
            name = (record.name or "").strip()
            return "name", name or None, lambda r: (r.name or "").strip().lower() == name.lower()
        if isinstance(record, Ticket):
            subject = record.subject
            created = epoch(record.created_at) if record.created_at else None

            def same(r: Record) -> bool:
                assert isinstance(r, Ticket)
                if r.subject != subject:
                    return False
                return created is None or (r.created_at is not None and epoch(r.created_at) == created)

            return "subject", subject or None, same
        raise ValidationFailed(f"{stream}: Cerb cannot hold a {record.kind} record", system=self.name)

    # -- writing -----------------------------------------------------------------------
    def _fields(self, stream: str, record: Record, *, creating: bool) -> dict[str, Any]:
        try:
            return to_cerb(
                stream,
                record,
                creating=creating,
                default_group_id=self.options.default_group_id,
                default_bucket_id=self.options.default_bucket_id,
            )
        except ValidationFailed as exc:
            raise ValidationFailed(str(exc), system=self.name, ref=record.key) from None

    async def create(self, stream: str, record: Record) -> Record:
        fields = self._fields(stream, record, creating=True)
        term, value, _ = self._natural(stream, record)
        if self.options.upsert_creates and stream != "tickets" and value is not None:
            if not _literal(value):
                # The query language cannot say this key exactly: look it up, compare exactly.
                existing = await self.find(stream, record)
                if existing is not None:
                    return await self.update(stream, existing.key, record)
                _, body = await self.http.request_decoded("POST", self._path(stream, "create"), data={"fields": fields})
                return await self._written(stream, body, record, "create")
            # Keyed by the natural key, so repeating it after a crash or a timeout cannot
            # make a twin: it is as idempotent as a PUT and may be retried like one.
            data = {"query": _filter(stream, term, value), "fields": fields}
            _, body = await self.http.request_decoded("PATCH", self._path(stream, "upsert"), data=data, idempotent=True)
            return await self._written(stream, body, record, "upsert")
        _, body = await self.http.request_decoded("POST", self._path(stream, "create"), data={"fields": fields})
        return await self._written(stream, body, record, "create")

    async def update(self, stream: str, key: str, record: Record) -> Record:
        if not key.isdigit():
            raise RecordRejected(f"{key!r} is not a Cerb record id", system=self.name, ref=key)
        fields = self._fields(stream, record, creating=False)
        # A missing record raises CerbNotFound, a RecordRejected: the update is dead-lettered.
        _, body = await self.http.request_decoded("PUT", self._path(stream, key), data={"fields": fields})
        return await self._written(stream, body, record, "update", key=key)

    async def _written(
        self, stream: str, body: Any, record: Record, operation: str, *, key: str | None = None
    ) -> Record:
        """The record a 2xx write answer stands for. Cerb's errors were raised by the hook
        already; anything else is a success, read back when the body is not the record."""
        if isinstance(body, Mapping) and all(name in body for name in COMPLETE[stream]):
            item = self._record(stream, body)
            if isinstance(item, Record):
                return item
        id = body.get("id") if isinstance(body, Mapping) else None
        key = str(id) if id not in (None, "", 0) else key
        if key is not None:
            stored = await self.get(stream, key)
            if stored is not None:
                return stored
        found = await self.find(stream, record)
        if found is not None:
            return found
        raise MalformedResponseError(
            f"Cerb accepted the {operation} of {stream} record {record.key!r} but answered "
            f"{excerpt(repr(body))}, and the record could not be read back",
            system=self.name,
        )

    async def delete(self, stream: str, key: str) -> None:
        if not key.isdigit():
            return
        try:
            if stream == "tickets" and self.options.ticket_delete == "status":
                # `updated` too: a ticket PUT does not move it, and incremental reads must see this.
                fields = {"status": "deleted", "updated": epoch(utcnow())}
                await self.http.request_decoded("PUT", self._path(stream, key), data={"fields": fields})
            else:
                await self.http.request_decoded("DELETE", self._path(stream, key))
        except CerbNotFound:
            return  # already gone: deleting a missing record is not an error


def _more(body: Mapping[str, Any], page: int, limit: int, count: int) -> bool:
    """Whether a search has results past ``page``, from its ``total`` (Cerb 7 sends no
    ``limit``, and a page past the end repeats the last page, so we never ask for one)."""
    total = _number(body.get("total"))
    if total is None:
        return count >= limit
    shown = _number(body.get("count"))
    return (page - 1) * limit + (count if shown is None else shown) < total


def _number(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_UNSAYABLE = re.compile(r'["\\*]')


def _literal(value: str) -> bool:
    """Whether a quick-search ``"..."`` can hold ``value`` exactly (no ``"``, ``\\``, ``*``)."""
    return _UNSAYABLE.search(value) is None


def _filter(stream: str, term: str, value: str) -> str:
    """The quick-search filter for a natural key: contacts by the exact address filter,
    other streams by ``term:"value"``; ``"``, ``\\`` and ``*`` become the ``*`` wildcard
    (Cerb has no escapes inside quotes), so the filter may match more, never less."""
    said = _UNSAYABLE.sub("*", value)
    if stream == "contacts":
        return f'email:(email:"{said}")'
    return f'{term}:"{said}"'
