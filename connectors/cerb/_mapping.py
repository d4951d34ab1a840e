"""Cerb record dictionaries <-> canonical records: pure functions, no I/O.

Cerb answers with flat dictionaries (``org_id``, ``org__context``, ``_label``...); text
fields come back as ``""`` when empty and timestamps as epoch seconds (``0`` for never).
Reading turns ``""`` and ``0`` into ``None`` so a record read from Cerb fingerprints the
same as one read from a CSV file with empty cells. Writing produces the ``fields[...]``
mapping the records API takes (the HTTP layer form-encodes it).

See README.md in this folder for the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ferryman.errors import ValidationFailed
from ferryman.records import Contact, Organisation, Record, Ticket
from ferryman.timeutil import ensure_utc, from_epoch

__all__ = [
    "NATIVE_TYPES",
    "contact_fields",
    "contact_to_cerb",
    "epoch",
    "importance_to_priority",
    "org_fields",
    "org_to_cerb",
    "priority_to_importance",
    "ticket_fields",
    "ticket_to_cerb",
    "to_cerb",
]

#: stream -> Cerb record type alias (the ``{type}`` in ``/rest/records/{type}/...``)
NATIVE_TYPES = {"tickets": "ticket", "contacts": "contact", "organisations": "org"}

STATUS_FROM_CERB = {"open": "open", "waiting": "pending", "closed": "closed"}
STATUS_TO_CERB = {"open": "open", "pending": "waiting", "closed": "closed"}
# Cerb's importance is 0..100 (new tickets get 50). Canonical priorities sit on the
# quarter marks; anything else is read into the nearest band and kept exactly in extra.
PRIORITY_IMPORTANCE = {"low": 25, "normal": 50, "high": 75, "urgent": 100}
_BANDS = ((37, "low"), (62, "normal"), (87, "high"))


# -- small converters ---------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _id(value: Any) -> str | None:
    """A Cerb foreign key: ``0`` / ``""`` / ``None`` mean "none"."""
    if value is None or value == "":
        return None
    number = int(value)
    return str(number) if number else None


def _epoch_to_utc(value: Any, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: not epoch seconds: {value!r}") from None
    return from_epoch(seconds) if seconds else None


def _required_epoch(value: Any, name: str) -> datetime:
    stamp = _epoch_to_utc(value, name)
    if stamp is None:
        raise ValueError(f"{name}: missing (Cerb sets it on every record)")
    return stamp


def epoch(value: datetime) -> int:
    """Whole epoch seconds of an aware datetime in any zone (a naive one is refused)."""
    return int(ensure_utc(value).timestamp())


def _extra(native: Mapping[str, Any], consumed: frozenset[str]) -> dict[str, Any]:
    """Native fields no canonical field holds, without Cerb's dictionary plumbing or empty values."""
    return {
        key: value
        for key, value in native.items()
        if key not in consumed
        and value not in (None, "")
        and not key.startswith("_")
        and not key.endswith(("__context", "__label"))
    }


def _foreign_key(value: str | None, name: str) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        raise ValidationFailed(f"{name} {value!r} is not a Cerb record id (map or drop it in the pipeline's mapping)")
    return int(value)


def _extra_id(record: Record, name: str, default: int) -> int:
    value = record.extra.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValidationFailed(f"extra.{name} {value!r} is not a Cerb record id") from None


# -- priority ---------------------------------------------------------------------------
def importance_to_priority(importance: Any) -> str | None:
    """Cerb's 0..100 importance as a canonical priority band."""
    if importance is None or importance == "":
        return None
    value = int(importance)
    for limit, name in _BANDS:
        if value <= limit:
            return name
    return "urgent"


def priority_to_importance(priority: str | None, hint: Any = None) -> int | None:
    """A canonical priority as Cerb importance; ``hint`` (the exact native value kept in
    ``extra``) wins when it lies in the same band, so 60 survives a round trip."""
    if priority is None:
        return None
    if hint is not None and hint != "":
        try:
            if importance_to_priority(hint) == priority:
                return int(hint)
        except (TypeError, ValueError):
            pass
    if priority in PRIORITY_IMPORTANCE:
        return PRIORITY_IMPORTANCE[priority]
    if priority.isdigit() and 0 <= int(priority) <= 100:
        return int(priority)
    raise ValidationFailed(
        f"priority {priority!r} has no Cerb importance (use low, normal, high, urgent or a number 0-100)"
    )


# -- tickets ----------------------------------------------------------------------------
_TICKET_READ = frozenset(
    {"id", "subject", "status", "importance", "org_id", "owner_id", "created", "updated", "closed"}
)


def ticket_fields(native: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical :class:`Ticket` fields from a Cerb ticket dictionary."""
    status = str(native.get("status") or "open").lower()
    if status not in STATUS_FROM_CERB and status != "deleted":
        raise ValueError(f"status: unknown Cerb ticket status {status!r}")
    extra = _extra(native, _TICKET_READ)
    if native.get("importance") not in (None, ""):
        extra["importance"] = int(native["importance"])
    return {
        "key": str(native["id"]),
        "updated_at": _required_epoch(native.get("updated"), "updated"),
        "deleted": status == "deleted",
        "subject": _text(native.get("subject")),
        "status": STATUS_FROM_CERB.get(status),
        "priority": importance_to_priority(native.get("importance")),
        "assignee": _id(native.get("owner_id")),
        "organisation_key": _id(native.get("org_id")),
        "created_at": _epoch_to_utc(native.get("created"), "created"),
        "closed_at": _epoch_to_utc(native.get("closed"), "closed"),
        "extra": extra,
    }


def ticket_to_cerb(
    record: Ticket, *, creating: bool, default_group_id: int = 1, default_bucket_id: int = 0
) -> dict[str, Any]:
    """The ``fields[...]`` of a ticket create (``creating``) or update.

    On an update a canonical ``None`` clears the Cerb field (``org_id`` 0, no owner), except
    ``subject``, ``status`` and ``priority``, which Cerb cannot hold empty and are left as they are.
    """
    fields: dict[str, Any] = {}
    if record.subject is not None or creating:
        fields["subject"] = record.subject
    if record.deleted:
        fields["status"] = "deleted"
    elif record.status is not None:
        fields["status"] = STATUS_TO_CERB[record.status]
    importance = priority_to_importance(record.priority, record.extra.get("importance"))
    if importance is not None:
        fields["importance"] = importance
    org = _foreign_key(record.organisation_key, "organisation_key")
    owner = _foreign_key(record.assignee, "assignee")
    if org or not creating:
        fields["org_id"] = org
    if owner or not creating:
        fields["owner_id"] = owner
    if creating:
        fields["group_id"] = _extra_id(record, "group_id", default_group_id)
        fields["bucket_id"] = _extra_id(record, "bucket_id", default_bucket_id)
        if record.created_at is not None:
            fields["created"] = epoch(record.created_at)
    if record.closed_at is not None and record.status == "closed":
        fields["closed"] = epoch(record.closed_at)
    return fields


# -- contacts ---------------------------------------------------------------------------
_CONTACT_TEXT = ("first_name", "last_name", "email", "title", "phone", "mobile")
_CONTACT_READ = frozenset({"id", *_CONTACT_TEXT, "org_id", "created_at", "updated_at"})


def contact_fields(native: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical :class:`Contact` fields from a Cerb contact dictionary."""
    fields: dict[str, Any] = {name: _text(native.get(name)) for name in _CONTACT_TEXT}
    return {
        "key": str(native["id"]),
        "updated_at": _required_epoch(native.get("updated_at"), "updated_at"),
        **fields,
        "organisation_key": _id(native.get("org_id")),
        "created_at": _epoch_to_utc(native.get("created_at"), "created_at"),
        "extra": _extra(native, _CONTACT_READ),
    }


def contact_to_cerb(record: Contact, *, creating: bool) -> dict[str, Any]:
    """The ``fields[...]`` of a contact create or update (``None`` clears on update;
    ``first_name`` is required by Cerb and never cleared)."""
    fields: dict[str, Any] = {}
    for name in _CONTACT_TEXT:
        value = getattr(record, name)
        if value is not None or (not creating and name != "first_name"):
            fields[name] = value
    org = _foreign_key(record.organisation_key, "organisation_key")
    if org or not creating:
        fields["org_id"] = org
    if creating and record.created_at is not None:
        fields["created_at"] = epoch(record.created_at)
    return fields


# -- organisations ------------------------------------------------------------------------
# canonical name -> Cerb name
_ORG_TEXT = {"name": "name", "street": "street", "city": "city", "postcode": "postal", "country": "country"}
_ORG_TEXT |= {"phone": "phone", "website": "website"}
_ORG_READ = frozenset({"id", *_ORG_TEXT.values(), "created", "updated"})


def org_fields(native: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical :class:`Organisation` fields from a Cerb org dictionary."""
    return {
        "key": str(native["id"]),
        "updated_at": _required_epoch(native.get("updated"), "updated"),
        **{canonical: _text(native.get(cerb)) for canonical, cerb in _ORG_TEXT.items()},
        "created_at": _epoch_to_utc(native.get("created"), "created"),
        "extra": _extra(native, _ORG_READ),
    }


def org_to_cerb(record: Organisation, *, creating: bool) -> dict[str, Any]:
    """The ``fields[...]`` of an org create or update (``name`` is required and never cleared)."""
    fields: dict[str, Any] = {}
    for canonical, cerb in _ORG_TEXT.items():
        value = getattr(record, canonical)
        if value is not None or (not creating and canonical != "name"):
            fields[cerb] = value
    if creating and record.created_at is not None:
        fields["created"] = epoch(record.created_at)
    return fields


# -- dispatch ---------------------------------------------------------------------------
READERS: dict[str, tuple[type[Record], Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "tickets": (Ticket, ticket_fields),
    "contacts": (Contact, contact_fields),
    "organisations": (Organisation, org_fields),
}


def to_cerb(
    stream: str, record: Record, *, creating: bool, default_group_id: int = 1, default_bucket_id: int = 0
) -> dict[str, Any]:
    """The ``fields[...]`` for ``record`` of ``stream``."""
    if isinstance(record, Ticket):
        return ticket_to_cerb(
            record, creating=creating, default_group_id=default_group_id, default_bucket_id=default_bucket_id
        )
    if isinstance(record, Contact):
        return contact_to_cerb(record, creating=creating)
    if isinstance(record, Organisation):
        return org_to_cerb(record, creating=creating)
    raise ValidationFailed(f"{stream}: Cerb cannot hold a {record.kind} record")
