"""Clientexec native entities <-> canonical records: pure functions, no I/O.

Everything here is tested without a network. The connector (``__init__``) only moves
bodies between these functions and the HTTP client.

Three things make Clientexec data awkward, and each is handled strictly here rather than
guessed at:

- **Local time.** ``dateSubmitted`` and ``dateUpdated`` are epoch seconds (unambiguous),
  but the formatted dates (``dateSubmittedFormatted`` "2003-03-28 17:42:46", comment
  ``createdAt`` "03/28/2003 05:42:46 pm", invoice ``billdate`` "06/14/2017") are in the
  install's own timezone and date format. They are parsed with the configured
  ``timezone`` and ``date_format`` and converted to UTC.
- **Formatted money.** ``amount`` and ``balancedue`` arrive as display strings
  ("$1,234.56 USD"). :func:`parse_money` accepts exactly one layout (the configured
  decimal separator, optional thousands groups of three, the currency's number of
  decimals) and refuses anything else, so "1.234,56 EUR" read with a ``.`` separator is a
  rejected invoice, never a silent 1.234.
- **Status codes.** Ticket status ``"-1"`` is closed; invoice ``statusenum`` codes map to
  canonical invoice statuses through tables the user can override.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from ferryman.errors import RecordRejected, ValidationFailed
from ferryman.records import Contact, Invoice, Ticket
from ferryman.timeutil import format_utc, from_epoch, parse_datetime

__all__ = [
    "DEFAULT_INVOICE_STATUSES",
    "DEFAULT_INVOICE_STATUS_CODES",
    "DEFAULT_PRIORITIES",
    "DEFAULT_PRIORITY_CODES",
    "DEFAULT_TICKET_STATUSES",
    "DEFAULT_TICKET_STATUS_CODES",
    "MappingSettings",
    "contact_fields",
    "contact_to_native",
    "invoice_fields",
    "invoice_to_native",
    "parse_money",
    "ticket_fields",
    "ticket_to_native",
]

#: Clientexec ticket status code -> canonical status. Any other code is an open state
#: (Clientexec installs add their own "In Progress"-like statuses); only -1 is closed.
DEFAULT_TICKET_STATUSES: dict[str, str] = {"-1": "closed", "1": "open", "2": "open", "3": "pending"}
#: canonical ticket status -> the code written to Clientexec.
DEFAULT_TICKET_STATUS_CODES: dict[str, str] = {"open": "1", "pending": "3", "closed": "-1"}

#: Clientexec ticket priority (1 high .. 3 low) <-> canonical priority words.
DEFAULT_PRIORITIES: dict[str, str] = {"1": "high", "2": "normal", "3": "low"}
DEFAULT_PRIORITY_CODES: dict[str, str] = {"urgent": "1", "high": "1", "normal": "2", "medium": "2", "low": "3"}

#: Clientexec invoice ``statusenum`` -> canonical invoice status.
DEFAULT_INVOICE_STATUSES: dict[str, str] = {
    "-1": "draft",  # draft
    "0": "open",  # unpaid
    "1": "paid",  # paid
    "2": "void",  # void
    "3": "closed",  # refunded
    "4": "open",  # pending
    "5": "partial",  # partially paid
    "6": "closed",  # credited
}
#: canonical invoice status -> ``statusenum`` written. ``closed`` has no single Clientexec
#: meaning (refunded? credited?), so it is refused unless the user maps it.
DEFAULT_INVOICE_STATUS_CODES: dict[str, str] = {"draft": "-1", "open": "0", "paid": "1", "void": "2", "partial": "5"}

#: ``billstatus`` text -> canonical, for answers that carry no ``statusenum``.
_BILLSTATUS: dict[str, str] = {
    "draft": "draft",
    "not paid": "open",
    "unpaid": "open",
    "pending": "open",
    "paid": "paid",
    "void": "void",
    "voided": "void",
    "refunded": "closed",
    "credited": "closed",
    "partially paid": "partial",
}

_SYMBOLS = {"$": None, "€": "EUR", "£": "GBP", "¥": "JPY"}  # "$" is many currencies: see parse_money
_DOLLARS = frozenset({"USD", "CAD", "AUD", "NZD", "SGD", "HKD", "MXN", "TWD", "BSD", "JMD", "TTD"})
_ZERO_DECIMALS = frozenset({"JPY", "KRW", "VND", "CLP", "ISK", "UGX", "XAF", "XOF", "PYG", "RWF"})
_THREE_DECIMALS = frozenset({"BHD", "KWD", "OMR", "JOD", "TND", "IQD", "LYD"})


@dataclass(frozen=True, slots=True)
class MappingSettings:
    """The install's conventions the mapping needs (from the connector's options)."""

    timezone: str = "UTC"
    date_format: str = "%m/%d/%Y"
    decimal_separator: str = "."
    currency: str = "USD"
    ticket_statuses: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TICKET_STATUSES))
    ticket_status_codes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TICKET_STATUS_CODES))
    priorities: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    priority_codes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITY_CODES))
    invoice_statuses: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INVOICE_STATUSES))
    invoice_status_codes: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INVOICE_STATUS_CODES))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def datetime_format(self) -> str:
        """The layout of comment times: the install's date format plus a 12-hour clock."""
        return f"{self.date_format} %I:%M:%S %p"


# -- scalars -------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _id(value: Any) -> str | None:
    """A native id as text; ``0``/empty mean none (Clientexec uses 0 for "no user", "nobody")."""
    text = _text(value)
    return None if text in (None, "0", "-") else text


def _epoch(value: Any, name: str) -> datetime:
    if value is None or value == "" or isinstance(value, bool):
        raise ValidationFailed(f"{name}: missing")
    try:
        seconds = int(str(value).strip())
    except ValueError:
        raise ValidationFailed(f"{name}: {value!r} is not epoch seconds") from None
    return from_epoch(seconds)


def local_datetime(text: str, fmt: str, settings: MappingSettings, name: str) -> datetime:
    """A formatted local date-time of the install, as aware UTC."""
    try:
        return parse_datetime(text, assume_tz=settings.zone, fmt=fmt)
    except ValueError:
        raise ValidationFailed(f"{name}: {text!r} does not match the install's format {fmt!r}") from None


def local_date(text: Any, settings: MappingSettings, name: str, fmt: str | None = None) -> date | None:
    """A formatted calendar date (``06/14/2017``) as a :class:`date`; ``None`` when empty."""
    raw = _text(text)
    if raw is None or raw in ("00/00/0000", "0000-00-00"):
        return None
    layout = fmt or settings.date_format
    try:
        return datetime.strptime(raw, layout).date()
    except ValueError:
        raise ValidationFailed(f"{name}: {raw!r} does not match the install's date format {layout!r}") from None


def midnight_utc(day: date, settings: MappingSettings) -> datetime:
    """The first instant of a local calendar day, in UTC."""
    return parse_datetime(datetime.combine(day, time()).isoformat(), assume_tz=settings.zone)


def parse_money(text: Any, settings: MappingSettings, name: str = "amount") -> tuple[Decimal, str] | None:
    """``"$1,234.56 USD"`` -> ``(Decimal("1234.56"), "USD")``; ``None`` for an empty value.

    Strict on purpose: the configured decimal separator, thousands groups of exactly
    three digits separated by the other mark, as many decimals as the currency has (or
    none), an optional symbol that agrees with the code, and an optional ISO code
    (default: the install's ``currency``). Anything else raises
    :class:`~ferryman.errors.ValidationFailed` naming the value and the expected layout.
    """
    if text is None:
        return None
    if isinstance(text, int | Decimal) and not isinstance(text, bool):
        return Decimal(text), settings.currency
    raw = str(text).replace("\u00a0", " ").strip()
    if not raw:
        return None
    dec = settings.decimal_separator
    group = "," if dec == "." else "."
    pattern = (
        r"(?P<sign>-)?\s*(?P<symbol>[$€£¥])?\s*(?P<sign2>-)?"
        rf"(?P<whole>\d{{1,3}}(?:{re.escape(group)}\d{{3}})+|\d+)"
        rf"(?:{re.escape(dec)}(?P<frac>\d+))?"
        r"(?:\s*(?P<code>[A-Z]{3}))?"
    )
    match = re.fullmatch(pattern, raw)
    example = "1,234.56" if dec == "." else "1.234,56"
    if match is None or (match["sign"] and match["sign2"]):
        raise ValidationFailed(
            f"{name}: cannot read {raw!r} as money (expected e.g. '$ {example} USD' with decimal separator "
            f"{dec!r}; set decimal_separator if this install formats amounts differently)"
        )
    code = match["code"]
    symbol = match["symbol"]
    implied = _SYMBOLS.get(symbol) if symbol else None
    if code is None:
        if symbol == "$" and settings.currency not in _DOLLARS:
            raise ValidationFailed(
                f"{name}: {raw!r} has a '$' but no currency code, and the install currency is {settings.currency}"
            )
        code = implied or settings.currency
    elif implied is not None and implied != code and not (symbol == "¥" and code == "CNY"):
        raise ValidationFailed(f"{name}: {raw!r}: the symbol {symbol!r} does not match the currency {code}")
    elif symbol == "$" and code not in _DOLLARS:
        raise ValidationFailed(f"{name}: {raw!r}: the symbol '$' does not match the currency {code}")
    places = 0 if code in _ZERO_DECIMALS else 3 if code in _THREE_DECIMALS else 2
    frac = match["frac"]
    if frac is not None and len(frac) != places:
        raise ValidationFailed(
            f"{name}: cannot read {raw!r}: {code} has {places} decimals, found {len(frac)} after {dec!r} "
            "(is decimal_separator right for this install?)"
        )
    whole = match["whole"].replace(group, "")
    try:
        amount = Decimal(f"{whole}.{frac}" if frac else whole)
    except InvalidOperation:  # pragma: no cover - the pattern admits digits only
        raise ValidationFailed(f"{name}: cannot read {raw!r} as money") from None
    if match["sign"] or match["sign2"]:
        amount = -amount
    return amount, code


def plain_amount(value: Decimal) -> str:
    """A Decimal as Clientexec takes it on write: plain digits and a dot (``1234.56``)."""
    return format(value, "f")


# -- tickets -------------------------------------------------------------------------------
def ticket_fields(item: Mapping[str, Any], settings: MappingSettings) -> dict[str, Any]:
    """A ticket answer (``{"metadata": {...}, "comments": [...]}``) as :class:`Ticket` fields."""
    meta = item.get("metadata", item)
    if not isinstance(meta, Mapping):
        raise ValidationFailed("metadata: not an object")
    key = _text(meta.get("id"))
    if key is None:
        raise ValidationFailed("id: missing")
    if meta.get("dateSubmitted") not in (None, ""):
        created = _epoch(meta.get("dateSubmitted"), "dateSubmitted")
    elif _text(meta.get("dateSubmittedFormatted")):
        created = local_datetime(
            meta["dateSubmittedFormatted"], "%Y-%m-%d %H:%M:%S", settings, "dateSubmittedFormatted"
        )
    else:
        created = None
    code = _text(meta.get("status"))
    status = None
    if code is not None:
        status = settings.ticket_statuses.get(code) or ("closed" if code == "-1" else "open")
    comments = []
    newest = created
    for i, comment in enumerate(item.get("comments") or []):
        if not isinstance(comment, Mapping):
            raise ValidationFailed(f"comments[{i}]: not an object")
        out = dict(comment)
        stamp = _text(comment.get("createdAt"))
        if stamp is not None:
            at = local_datetime(stamp, settings.datetime_format, settings, f"comments[{i}].createdAt")
            out["createdAt"] = format_utc(at)
            newest = at if newest is None or at > newest else newest
        comments.append(out)
    if meta.get("dateUpdated") not in (None, ""):
        updated = _epoch(meta.get("dateUpdated"), "dateUpdated")
    elif newest is not None:
        # No documented answer has an update time: the newest time the ticket shows (its
        # latest comment) is a lower bound, which a status change does not move.
        updated = newest
    else:
        raise ValidationFailed("dateSubmitted: missing (and no dateUpdated or comment time to use instead)")
    description = None
    if comments:
        description = _text(comments[0].get("message"))
    priority_code = _text(meta.get("priority"))
    extra = {
        k: v
        for k, v in meta.items()
        if k
        not in {
            "id",
            "subject",
            "userEmail",
            "userid",
            "ticket_type",
            "assignedToId",
            "dateSubmitted",
            "dateSubmittedFormatted",
            "dateUpdated",
            "dateUpdatedFormatted",
        }
    }
    extra["comments"] = comments
    return {
        "key": key,
        "updated_at": updated,
        "created_at": created,
        "subject": _text(meta.get("subject")),
        "description": description,
        "status": status,
        "priority": settings.priorities.get(priority_code, priority_code) if priority_code else None,
        "type": _text(meta.get("ticket_type")),
        "requester_email": _text(meta.get("userEmail")),
        "requester_key": _id(meta.get("userid")),
        "assignee": _id(meta.get("assignedToId")),
        "extra": extra,
    }


def ticket_status_code(status: str | None, settings: MappingSettings, current: str | None = None) -> str | None:
    """The Clientexec code for a canonical status; keeps ``current`` when it already means it."""
    if status is None:
        return None
    if (
        current is not None
        and (settings.ticket_statuses.get(current) or ("closed" if current == "-1" else "open")) == status
    ):
        return current
    code = settings.ticket_status_codes.get(status)
    if code is None:
        raise RecordRejected(f"no Clientexec ticket status for {status!r} (map it under ticket_status_codes)")
    return code


def ticket_to_native(
    record: Ticket, settings: MappingSettings, *, create: bool, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The body of ``POST /ticket`` (``create``) or ``PUT /ticket/{id}``.

    The opening message (``description``) is sent on create only: Clientexec keeps a
    ticket's messages as a log, and rewriting its first entry is not something the API
    offers. The requester travels by email, never by a key from another system.
    """
    meta = (current or {}).get("metadata", current or {})
    body: dict[str, Any] = {}
    if create or record.subject is not None:
        body["subject"] = record.subject or ""
    code = ticket_status_code(record.status, settings, _text(meta.get("status")))
    if code is not None:
        body["status"] = code
    if record.priority is not None:
        current_priority = _text(meta.get("priority"))
        if (
            current_priority is not None
            and settings.priorities.get(current_priority, current_priority) == record.priority
        ):
            body["priority"] = current_priority
        else:
            prio = settings.priority_codes.get(record.priority.lower())
            if prio is None and record.priority.isdigit():
                prio = record.priority
            if prio is None:
                raise RecordRejected(
                    f"no Clientexec ticket priority for {record.priority!r} (map it under priority_codes)"
                )
            body["priority"] = prio
    if record.type is not None:
        body["ticket_type"] = record.type
    if record.assignee is not None:
        if not record.assignee.isdigit():
            raise RecordRejected(f"assignee {record.assignee!r} is not a Clientexec staff id")
        body["assignedToId"] = int(record.assignee)
    if create:
        if record.requester_email:
            body["email"] = record.requester_email
        body["message"] = record.description or ""
    return body


# -- users (contacts) -----------------------------------------------------------------------
_USER_MAPPED = {"userid", "firstname", "lastname", "email", "phone", "date_activated", "dateUpdated", "local"}
_LOCAL_MAPPED = {"organization", "address", "city", "zipcode", "zip", "country"}


def contact_fields(item: Mapping[str, Any], settings: MappingSettings) -> dict[str, Any]:
    """A Clientexec user as :class:`Contact` fields."""
    key = _id(item.get("userid"))
    if key is None:
        raise ValidationFailed("userid: missing")
    local = item.get("local") or {}
    if not isinstance(local, Mapping):
        raise ValidationFailed("local: not an object")
    activated = local_date(item.get("date_activated"), settings, "date_activated", "%Y-%m-%d")
    created = midnight_utc(activated, settings) if activated else None
    if item.get("dateUpdated") not in (None, ""):
        updated = _epoch(item.get("dateUpdated"), "dateUpdated")
    elif created is not None:
        updated = created
    else:
        raise ValidationFailed("date_activated: missing (and no dateUpdated to use instead)")
    extra = {k: v for k, v in item.items() if k not in _USER_MAPPED}
    extra.update({f"local.{k}": v for k, v in local.items() if k not in _LOCAL_MAPPED})
    if activated is not None:
        extra["date_activated"] = activated.isoformat()
    return {
        "key": key,
        "updated_at": updated,
        "created_at": created,
        "email": _text(item.get("email")),
        "first_name": _text(item.get("firstname")),
        "last_name": _text(item.get("lastname")),
        "phone": _text(item.get("phone")),
        "organisation": _text(local.get("organization")),
        "street": _text(local.get("address")),
        "city": _text(local.get("city")),
        # local.zipcode, verified against the real API; local.zip only as an older spelling
        "postcode": _text(local.get("zipcode")) or _text(local.get("zip")),
        "country": _text(local.get("country")),
        "extra": extra,
    }


def contact_to_native(record: Contact, *, create: bool) -> dict[str, Any]:
    """The body of ``POST /user`` (email, firstname, lastname + optional fields) or ``PUT /user/{id}``.

    An update sends only the fields the record has a value for: a blank canonical
    field never erases what the user typed into Clientexec.
    """
    fields = {
        "email": record.email,
        "firstname": record.first_name,
        "lastname": record.last_name,
        "phone": record.phone,
        "organization": record.organisation,
        "address": record.street,
        "city": record.city,
        "zipcode": record.postcode,  # Add User takes zipcode (the answer has local.zipcode)
        "country": record.country,
    }
    if create:
        for required in ("email", "firstname", "lastname"):
            fields[required] = fields[required] or ""
    return {k: v for k, v in fields.items() if v is not None}


# -- invoices --------------------------------------------------------------------------------
_INVOICE_MAPPED = {
    "invoiceid",
    "customerid",
    "billdate",
    "duedate",
    "amount",
    "balancedue",
    "simplebalancedue",
    "billstatus",
    "statusenum",
    "description",
    "note",
    "dateUpdated",
}


def invoice_status(item: Mapping[str, Any], settings: MappingSettings) -> str | None:
    """The canonical status: by ``statusenum`` when the code is known, else by ``billstatus``.

    Real installs answer codes outside the documented set (the vendor's own example has
    ``statusenum: -2`` with ``billstatus: "not paid"``), so an unknown code is read through
    the words Clientexec shows beside it, and only both unknown is a rejection.
    """
    code = _text(item.get("statusenum"))
    if code is not None:
        status = settings.invoice_statuses.get(code)
        if status is not None:
            return status
    text = _text(item.get("billstatus"))
    if text is None:
        if code is not None:
            raise ValidationFailed(
                f"statusenum: unknown code {code!r} and no billstatus (map it under invoice_statuses)"
            )
        return None
    status = _BILLSTATUS.get(text.lower())
    if status is None:
        unknown = f"statusenum {code!r} and " if code is not None else ""
        raise ValidationFailed(f"billstatus: unknown status {unknown}{text!r} (map the code under invoice_statuses)")
    return status


def invoice_fields(item: Mapping[str, Any], settings: MappingSettings) -> dict[str, Any]:
    """A Clientexec invoice as :class:`Invoice` fields (money as exact Decimal + ISO currency)."""
    key = _id(item.get("invoiceid"))
    if key is None:
        raise ValidationFailed("invoiceid: missing")
    amount = parse_money(item.get("amount"), settings, "amount")
    # The vendor's own example has balancedue null and the amount due in simplebalancedue.
    due_field = "simplebalancedue" if _text(item.get("simplebalancedue")) is not None else "balancedue"
    balance = parse_money(item.get(due_field), settings, due_field)
    if amount and balance and amount[1] != balance[1]:
        raise ValidationFailed(f"{due_field} is in {balance[1]} but amount is in {amount[1]}")
    issued = local_date(item.get("billdate"), settings, "billdate")
    created = midnight_utc(issued, settings) if issued else None
    if item.get("dateUpdated") not in (None, ""):
        updated = _epoch(item.get("dateUpdated"), "dateUpdated")
    elif created is not None:
        updated = created
    else:
        raise ValidationFailed("billdate: missing (and no dateUpdated to use instead)")
    extra = {k: v for k, v in item.items() if k not in _INVOICE_MAPPED}
    extra["billstatus"] = item.get("billstatus")
    extra["statusenum"] = item.get("statusenum")
    return {
        "key": key,
        "updated_at": updated,
        "created_at": created,
        "number": key,
        "customer_key": _id(item.get("customerid")),
        "amount": amount[0] if amount else None,
        "balance_due": balance[0] if balance else None,
        "currency": (amount or balance or (None, None))[1],
        "status": invoice_status(item, settings),
        "subject": _text(item.get("description")),
        "notes": _text(item.get("note")),
        "issued_on": issued,
        "due_on": local_date(item.get("duedate"), settings, "duedate"),
        "extra": extra,
    }


def invoice_to_native(
    record: Invoice, settings: MappingSettings, *, create: bool, current: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The body of ``POST /invoice`` or ``PUT /invoice/{id}``: plain decimal amounts, dates in the install's format."""
    body: dict[str, Any] = {}
    if record.customer_key is not None:
        if not record.customer_key.isdigit():
            raise RecordRejected(f"customer_key {record.customer_key!r} is not a Clientexec user id")
        body["customerid"] = int(record.customer_key)
    if record.amount is not None:
        body["amount"] = plain_amount(record.amount)
    if record.currency is not None:
        body["currency"] = record.currency
    if record.status is not None:
        current_code = _text((current or {}).get("statusenum"))
        if current_code is not None and settings.invoice_statuses.get(current_code) == record.status:
            body["statusenum"] = int(current_code)
        else:
            code = settings.invoice_status_codes.get(record.status)
            if code is None:
                raise RecordRejected(
                    f"no Clientexec invoice status for {record.status!r} (map it under invoice_status_codes)"
                )
            body["statusenum"] = int(code)
    if record.issued_on is not None:
        body["billdate"] = record.issued_on.strftime(settings.date_format)
    if record.due_on is not None:
        body["duedate"] = record.due_on.strftime(settings.date_format)
    if record.subject is not None:
        body["description"] = record.subject
    if record.notes is not None:
        body["note"] = record.notes
    if create and "customerid" not in body:
        raise RecordRejected("an invoice needs customer_key: the Clientexec user id it bills")
    return body
