"""Cerb record dictionaries <-> canonical records: pure functions, no I/O.

Cerb answers with flat dictionaries (``org_id``, ``org__context``, ``_label``...); text
fields come back as ``""`` when empty and timestamps as epoch seconds (``0`` for never).
Reading turns ``""`` and ``0`` into ``None`` so a record read from Cerb fingerprints the
same as one read from a CSV file with empty cells. Writing produces the ``fields[...]``
mapping the records API takes (the HTTP layer form-encodes it).

See README.md in this folder for the tables.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ferryman.errors import ValidationFailed
from ferryman.records import Contact, Organisation, Record, Ticket
from ferryman.timeutil import ensure_utc, from_epoch, utcnow

__all__ = [
    "NATIVE_TYPES",
    "VOLATILE_FIELDS",
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


#: native fields that change without the record changing (a clock, a message count): kept
#: out of ``extra`` so they never make a record look edited (options: ``volatile_fields``)
VOLATILE_FIELDS: tuple[str, ...] = ("elapsed_*", "num_messages*")


def _extra(
    native: Mapping[str, Any], consumed: frozenset[str], volatile: Sequence[str] = VOLATILE_FIELDS
) -> dict[str, Any]:
    """Native fields no canonical field holds, without Cerb's dictionary plumbing, volatile
    fields or empty values."""
    return {
        key: value
        for key, value in native.items()
        if key not in consumed
        and value not in (None, "")
        and not key.startswith("_")
        and not key.endswith(("__context", "__label"))
        and not any(fnmatch.fnmatchcase(key, pattern) for pattern in volatile)
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
    {"id", "subject", "status", "importance", "org_id", "owner_id", "created", "updated", "closed", "closed_at"}
)


def ticket_fields(native: Mapping[str, Any], volatile: Sequence[str] = VOLATILE_FIELDS) -> dict[str, Any]:
    """Canonical :class:`Ticket` fields from a Cerb ticket dictionary.

    ``closed_at`` is only read for a closed ticket: Cerb keeps the old ``closed`` stamp when
    a ticket is reopened. Cerb 7 named the field ``closed_at``.
    """
    status = str(native.get("status") or "open").lower()
    if status not in STATUS_FROM_CERB and status != "deleted":
        raise ValueError(f"status: unknown Cerb ticket status {status!r}")
    extra = _extra(native, _TICKET_READ, volatile)
    if native.get("importance") not in (None, ""):
        extra["importance"] = int(native["importance"])
    closed = native.get("closed", native.get("closed_at"))
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
        "closed_at": _epoch_to_utc(closed, "closed") if status == "closed" else None,
        "extra": extra,
    }


def ticket_to_cerb(
    record: Ticket,
    *,
    creating: bool,
    default_group_id: int = 1,
    default_bucket_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The ``fields[...]`` of a ticket create (``creating``) or update.

    On an update a canonical ``None`` clears the Cerb field (``org_id`` 0, no owner), except
    ``subject``, ``status`` and ``priority``, which Cerb cannot hold empty and are left as they are.
    An update carries ``updated`` (``now``): a ticket PUT does not move Cerb's ``updated`` by
    itself, so without it the change would be invisible to every incremental read. A
    ``bucket_id`` is only sent when configured or carried in ``extra``: Cerb has no bucket
    0, and leaving it out puts the ticket in its group's inbox.
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
        bucket = _extra_id(record, "bucket_id", default_bucket_id or 0)
        if bucket:
            fields["bucket_id"] = bucket
        if record.created_at is not None:
            fields["created"] = epoch(record.created_at)
    if record.closed_at is not None and record.status == "closed":
        fields["closed"] = epoch(record.closed_at)
    elif not creating and record.status in ("open", "pending"):
        fields["closed"] = 0  # Cerb keeps the old stamp on reopen; a reopened ticket is not closed
    if not creating:
        fields["updated"] = epoch(now if now is not None else utcnow())
    return fields


# -- contacts ---------------------------------------------------------------------------
_CONTACT_TEXT = ("first_name", "last_name", "email", "title", "phone", "mobile")
_CONTACT_READ = frozenset({"id", *_CONTACT_TEXT, "org_id", "created_at", "updated_at"})
#: the contact's address record, rendered by ``expand=email_address`` (``email_address``,
#: ``email_id``, ``email_is_banned``...): the address is read from it, the rest is plumbing
_ADDRESS_PREFIX = "email_"
#: what a write answer must hold to be taken as the record (else it is read back)
CONTACT_EXPANDED = "email_address"


def contact_fields(native: Mapping[str, Any], volatile: Sequence[str] = VOLATILE_FIELDS) -> dict[str, Any]:
    """Canonical :class:`Contact` fields from a Cerb contact dictionary.

    Cerb 10.4 renders a contact without its email unless asked (``expand=email_address``);
    the address then arrives as ``email_address``. A plain ``email`` (older Cerb) is read too.
    """
    fields: dict[str, Any] = {name: _text(native.get(name)) for name in _CONTACT_TEXT}
    if CONTACT_EXPANDED in native:
        fields["email"] = _text(native.get(CONTACT_EXPANDED))
    address = {key for key in native if key.startswith(_ADDRESS_PREFIX)}
    return {
        "key": str(native["id"]),
        "updated_at": _required_epoch(native.get("updated_at"), "updated_at"),
        **fields,
        "organisation_key": _id(native.get("org_id")),
        "created_at": _epoch_to_utc(native.get("created_at"), "created_at"),
        "extra": _extra(native, _CONTACT_READ | address, volatile),
    }


def contact_to_cerb(record: Contact, *, creating: bool) -> dict[str, Any]:
    """The ``fields[...]`` of a contact create or update (``None`` clears on update;
    ``first_name`` is required by Cerb and never cleared).

    Never sent: ``created_at`` (Cerb: "'created_at' is not an editable field.") and an empty
    ``email`` (Cerb: "Failed to lookup address: "); a contact losing its email keeps the old one.
    """
    fields: dict[str, Any] = {}
    for name in _CONTACT_TEXT:
        value = getattr(record, name)
        if value is None and name in ("first_name", "email"):
            continue
        if value is not None or not creating:
            fields[name] = value
    org = _foreign_key(record.organisation_key, "organisation_key")
    if org or not creating:
        fields["org_id"] = org
    return fields


# -- organisations ------------------------------------------------------------------------
# canonical name -> Cerb name
_ORG_TEXT = {"name": "name", "street": "street", "city": "city", "postcode": "postal", "country": "country"}
_ORG_TEXT |= {"phone": "phone", "website": "website"}
_ORG_READ = frozenset({"id", *_ORG_TEXT.values(), "created", "updated"})


def org_fields(native: Mapping[str, Any], volatile: Sequence[str] = VOLATILE_FIELDS) -> dict[str, Any]:
    """Canonical :class:`Organisation` fields from a Cerb org dictionary."""
    return {
        "key": str(native["id"]),
        "updated_at": _required_epoch(native.get("updated"), "updated"),
        **{canonical: _text(native.get(cerb)) for canonical, cerb in _ORG_TEXT.items()},
        "created_at": _epoch_to_utc(native.get("created"), "created"),
        "extra": _extra(native, _ORG_READ, volatile),
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
READERS: dict[str, tuple[type[Record], Callable[[Mapping[str, Any], Sequence[str]], dict[str, Any]]]] = {
    "tickets": (Ticket, ticket_fields),
    "contacts": (Contact, contact_fields),
    "organisations": (Organisation, org_fields),
}


def to_cerb(
    stream: str,
    record: Record,
    *,
    creating: bool,
    default_group_id: int = 1,
    default_bucket_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The ``fields[...]`` for ``record`` of ``stream``."""
    if isinstance(record, Ticket):
        return ticket_to_cerb(
            record,
            creating=creating,
            default_group_id=default_group_id,
            default_bucket_id=default_bucket_id,
            now=now,
        )
    if isinstance(record, Contact):
        return contact_to_cerb(record, creating=creating)
    if isinstance(record, Organisation):
        return org_to_cerb(record, creating=creating)
    raise ValidationFailed(f"{stream}: Cerb cannot hold a {record.kind} record")
