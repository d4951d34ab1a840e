"""Clevertim native entities <-> canonical records: pure functions, no I/O.

Clevertim keeps several emails and typed phones per contact. Ferryman maps one of each
(the first email, the first ``Work`` and ``Mobile`` phone: Clevertim's phone types are
capitalised) and must never lose the rest (``website``, ``smids``, ``region``, ``cf`` keyed
by custom-field id, ``ctype``, ``gid``, ``lc``...),
so writes are built *on top of* the entity as Clevertim holds it (:func:`merge_contact`
and friends take the current entity and change only what the canonical record says).
A canonical field that is empty leaves Clevertim's value alone: a blank never erases.

Timestamps ``ao`` (added on) and ``lm`` (last modified) are ISO 8601 UTC
(``2017-01-02T08:22:12Z``); one without an offset is refused rather than guessed. An
entity without ``lm`` reads as :data:`UNDATED`; ``lc`` is *last contacted*, not a
modification time.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ferryman.errors import RecordRejected, ValidationFailed
from ferryman.records import Contact, Organisation, Ticket
from ferryman.timeutil import parse_datetime

__all__ = [
    "READ_ONLY",
    "UNDATED",
    "case_fields",
    "company_fields",
    "contact_fields",
    "merge_case",
    "merge_company",
    "merge_contact",
    "undated",
]

#: Fields Clevertim sets itself; never sent back.
READ_ONLY = frozenset({"id", "ao", "lm", "is_company"})
#: Clevertim's phone types are capitalised (its own client refuses others): ``Work``,
#: ``Home``, ``Mobile``, ``Fax``, ``Pager``; Ferryman maps the first two it writes
WORK, MOBILE = "Work", "Mobile"
#: ``updated_at`` of an entity without ``lm`` (the vendor's example payloads have none):
#: it sorts before everything, and the connector reads it on every run (see ``undated``)
UNDATED = datetime(1970, 1, 1, tzinfo=UTC)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _ref(value: Any) -> str | None:
    """A Clevertim id reference as text; ``0``/empty mean none."""
    text = _text(value)
    return None if text in (None, "0") else text


def _stamp(item: Mapping[str, Any], name: str, *, required: bool) -> Any:
    text = _text(item.get(name))
    if text is None:
        if required:
            raise ValidationFailed(f"{name}: missing")
        return None
    try:
        return parse_datetime(text)
    except ValueError as exc:
        raise ValidationFailed(f"{name}: {exc}") from None


def _updated(item: Mapping[str, Any]) -> datetime:
    """``lm``; :data:`UNDATED` when the entity carries none (never ``lc``: last *contacted*)."""
    stamp = _stamp(item, "lm", required=False)
    return UNDATED if stamp is None else stamp


def undated(item: Mapping[str, Any]) -> bool:
    """Whether an entity carries no ``lm``: a read cannot place it in time."""
    return _text(item.get("lm")) is None


def _list(item: Mapping[str, Any], name: str) -> list[Any]:
    value = item.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]  # a lone string where a list belongs: tolerate it
    if not isinstance(value, list):
        raise ValidationFailed(f"{name}: expected a list, found {type(value).__name__}")
    return value


def emails(item: Mapping[str, Any]) -> list[str]:
    """The entity's email addresses, in Clevertim's order."""
    return [str(e).strip() for e in _list(item, "email") if _text(e)]


def phones(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entity's phones as ``{type, no}`` objects."""
    out = []
    for i, entry in enumerate(_list(item, "phones")):
        if not isinstance(entry, Mapping):
            raise ValidationFailed(f"phones[{i}]: expected {{type, no}}, found {entry!r}")
        out.append(dict(entry))
    return out


def phone_of(entries: list[dict[str, Any]], kind: str) -> str | None:
    """The number of the first phone of ``kind`` (``Work``, ``Mobile``), case-insensitively."""
    for entry in entries:
        if str(entry.get("type") or "").strip().lower() == kind.lower():
            return _text(entry.get("no"))
    return None


def _extra(item: Mapping[str, Any], mapped: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in mapped}


# -- reading ----------------------------------------------------------------------------------
_CONTACT_MAPPED = frozenset(
    {"id", "fn", "ln", "title", "companyId", "address", "city", "postcode", "country", "ao", "lm", "is_company"}
)
_COMPANY_MAPPED = frozenset({"id", "cn", "address", "city", "postcode", "country", "ao", "lm", "is_company"})
_CASE_MAPPED = frozenset({"id", "name", "description", "leadUser", "cust", "ao", "lm"})


def contact_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Clevertim person as :class:`Contact` fields. ``email`` and ``phones`` stay whole in ``extra``."""
    key = _text(item.get("id"))
    if key is None:
        raise ValidationFailed("id: missing")
    entries = phones(item)
    addresses = emails(item)
    return {
        "key": key,
        "updated_at": _updated(item),
        "created_at": _stamp(item, "ao", required=False),
        "email": addresses[0] if addresses else None,
        "first_name": _text(item.get("fn")),
        "last_name": _text(item.get("ln")),
        "title": _text(item.get("title")),
        "phone": phone_of(entries, WORK),
        "mobile": phone_of(entries, MOBILE),
        "organisation_key": _ref(item.get("companyId")),
        "street": _text(item.get("address")),
        "city": _text(item.get("city")),
        "postcode": _text(item.get("postcode")),
        "country": _text(item.get("country")),
        "extra": _extra(item, _CONTACT_MAPPED),
    }


def company_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Clevertim company (``cn``, ``is_company: true``) as :class:`Organisation` fields."""
    key = _text(item.get("id"))
    if key is None:
        raise ValidationFailed("id: missing")
    websites = [w for w in _list(item, "website") if _text(w)]
    return {
        "key": key,
        "updated_at": _updated(item),
        "created_at": _stamp(item, "ao", required=False),
        "name": _text(item.get("cn")),
        "website": _text(websites[0]) if websites else None,
        "phone": phone_of(phones(item), WORK),
        "street": _text(item.get("address")),
        "city": _text(item.get("city")),
        "postcode": _text(item.get("postcode")),
        "country": _text(item.get("country")),
        "extra": _extra(item, _COMPANY_MAPPED),
    }


def case_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """A Clevertim case as :class:`Ticket` fields (``tags`` and ``cf`` kept in ``extra``)."""
    key = _text(item.get("id"))
    if key is None:
        raise ValidationFailed("id: missing")
    return {
        "key": key,
        "updated_at": _updated(item),
        "created_at": _stamp(item, "ao", required=False),
        "subject": _text(item.get("name")),
        "description": _text(item.get("description")),
        "assignee": _ref(item.get("leadUser")),
        "requester_key": _ref(item.get("cust")),
        "extra": _extra(item, _CASE_MAPPED),
    }


# -- writing ----------------------------------------------------------------------------------
def _base(current: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (current or {}).items() if k not in READ_ONLY}


def _set(body: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        body[name] = value


def _id_ref(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise RecordRejected(f"{what} {value!r} is not a Clevertim id (map or drop it in the pipeline)")
    return int(value)


def with_primary_email(current: list[str], email: str | None) -> list[str]:
    """``email`` becomes the first address; the others Clevertim holds are kept."""
    if email is None:
        return current
    rest = [e for e in current[1:] if e.strip().lower() != email.strip().lower()]
    return [email, *rest]


def with_phone(current: list[dict[str, Any]], kind: str, number: str | None) -> list[dict[str, Any]]:
    """The first phone of ``kind`` gets ``number`` (appended if there is none); others untouched."""
    if number is None:
        return current
    out = [dict(p) for p in current]
    for entry in out:
        if str(entry.get("type") or "").strip().lower() == kind.lower():
            entry["no"] = number
            return out
    out.append({"type": kind, "no": number})
    return out


def merge_contact(record: Contact, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole person to ``POST`` (``current`` is ``None``) or ``PUT`` over ``current``.

    Clevertim's PUT replaces the entity, so the body starts from what Clevertim holds and
    only the canonical fields with a value change: other emails, other phones, ``tags``,
    ``cf``, ``ctype`` and every field Ferryman does not know travel back untouched.
    """
    body = _base(current)
    _set(body, "fn", record.first_name)
    _set(body, "ln", record.last_name)
    _set(body, "title", record.title)
    _set(body, "companyId", _id_ref(record.organisation_key, "organisation_key"))
    _set(body, "address", record.street)
    _set(body, "city", record.city)
    _set(body, "postcode", record.postcode)
    _set(body, "country", record.country)
    addresses = with_primary_email(emails(body), record.email)
    entries = with_phone(with_phone(phones(body), WORK, record.phone), MOBILE, record.mobile)
    if addresses or "email" in body:
        body["email"] = addresses
    if entries or "phones" in body:
        body["phones"] = entries
    return body


def merge_company(record: Organisation, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole company to write (see :func:`merge_contact`); ``is_company`` is implied by ``/company``."""
    body = _base(current)
    _set(body, "cn", record.name)
    _set(body, "address", record.street)
    _set(body, "city", record.city)
    _set(body, "postcode", record.postcode)
    _set(body, "country", record.country)
    if record.website is not None:
        websites = [w for w in _list(body, "website") if _text(w)]
        body["website"] = [record.website, *[w for w in websites[1:] if w != record.website]]
    entries = with_phone(phones(body), WORK, record.phone)
    if entries or "phones" in body:
        body["phones"] = entries
    return body


def merge_case(record: Ticket, current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole case to write (see :func:`merge_contact`); ``tags`` and ``cf`` are kept."""
    body = _base(current)
    _set(body, "name", record.subject)
    _set(body, "description", record.description)
    _set(body, "leadUser", _id_ref(record.assignee, "assignee"))
    _set(body, "cust", _id_ref(record.requester_key, "requester_key"))
    return body
