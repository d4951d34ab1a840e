"""Harvest entities <-> canonical records: pure functions over typed-XML dicts.

A native entity here is what :func:`ferryman.http.codecs.typed_xml_to_python` makes of
one ``<contact>``, ``<client>`` or ``<invoice>``: a dict keyed by Harvest's dashed tags
(``client-id``) holding ``int``, exact ``Decimal``, ``bool``, ``date`` and aware UTC
``datetime`` values. The tables in ``README.md`` document every field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ferryman.errors import ValidationFailed
from ferryman.records import Contact, Invoice, Organisation
from ferryman.timeutil import format_utc, parse_datetime

from ._common import (
    CURRENCIES,
    INVOICE_STATES,
    LineItem,
    address_of,
    compose_details,
    currency_code,
    currency_name,
    due_from_terms,
    format_line_items,
    invoice_totals,
    money,
    parse_details,
    parse_line_items,
    terms_for,
    to_decimal,
)

__all__ = [
    "CONTACT_FIELDS",
    "contact_fields",
    "contact_payload",
    "invoice_fields",
    "invoice_payload",
    "json_ready",
    "organisation_fields",
    "organisation_payload",
    "status_to_state",
]

#: Harvest contact tag -> canonical Contact field (both directions).
CONTACT_FIELDS: tuple[tuple[str, str], ...] = (
    ("email", "email"),
    ("first-name", "first_name"),
    ("last-name", "last_name"),
    ("title", "title"),
    ("phone-office", "phone"),
    ("phone-mobile", "mobile"),
)
_REQUIRED_NAMES = ("first-name", "last-name")
_ADDRESS = ("street", "postcode", "city", "country")
_INVOICE_TEXT = (("number", "number"), ("subject", "subject"), ("notes", "notes"))
_INVOICE_DECIMAL_EXTRA = ("tax", "tax2", "discount")


def json_ready(value: Any) -> Any:
    """A native value as plain JSON data for ``extra``: Decimal as an exact string, dates ISO, datetimes ``Z``."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _datetime(native: Mapping[str, Any], name: str, *, required: bool) -> datetime | None:
    value = native.get(name)
    if value is None:
        if required:
            raise ValueError(f"{name}: missing; Harvest always sends it")
        return None
    if isinstance(value, datetime):
        return value
    return parse_datetime(str(value))  # a naive one is refused: Harvest writes UTC with Z


def _date(value: Any, name: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a date") from None


def _id(native: Mapping[str, Any]) -> str:
    value = native.get("id")
    if value is None or isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"id: {value!r} is not a Harvest id")
    return str(int(value))


def _client_id(native: Mapping[str, Any]) -> int | None:
    value = native.get("client-id")
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"client-id: {value!r} is not a Harvest id")
    return int(value)


def _extra(native: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: json_ready(v) for k, v in native.items() if k not in used}


# -- contacts ------------------------------------------------------------------------------


def contact_fields(native: Mapping[str, Any], client_names: Mapping[int, str]) -> dict[str, Any]:
    """A Harvest ``<contact>`` as :class:`Contact` fields; ``organisation`` is the client's name."""
    client = _client_id(native)
    data: dict[str, Any] = {
        "key": _id(native),
        "updated_at": _datetime(native, "updated-at", required=True),
        "created_at": _datetime(native, "created-at", required=False),
        "organisation_key": str(client) if client is not None else None,
        "organisation": client_names.get(client) if client is not None else None,
    }
    for tag, name in CONTACT_FIELDS:
        data[name] = _text(native.get(tag))
    used = {"id", "updated-at", "created-at", "client-id", *(tag for tag, _ in CONTACT_FIELDS)}
    data["extra"] = _extra(native, used)
    return data


def contact_payload(record: Contact, client_id: int | None, *, clear_empty: bool, create: bool) -> dict[str, Any]:
    """The ``<contact>`` to POST or PUT for ``record``.

    An empty canonical field leaves Harvest's value alone unless ``clear_empty`` (Harvest's
    PUT changes the attributes sent and no others). ``fax`` comes from ``extra.fax``.
    """
    body: dict[str, Any] = {}
    if client_id is not None:
        body["client-id"] = client_id
    for tag, name in CONTACT_FIELDS:
        value = _text(getattr(record, name))
        if value is not None:
            body[tag] = value
        elif clear_empty and not create and tag not in _REQUIRED_NAMES:
            body[tag] = None
    fax = record.extra.get("fax")
    if _text(fax) is not None:
        body["fax"] = str(fax)
    elif clear_empty and not create and "fax" in record.extra:
        body["fax"] = None
    if create:
        missing = [tag for tag in _REQUIRED_NAMES if tag not in body]
        if missing:
            raise ValidationFailed(
                f"Harvest requires {' and '.join(missing)} for a client contact (map first_name and last_name)"
            )
    return body


# -- organisations (Harvest clients) -------------------------------------------------------


def organisation_fields(native: Mapping[str, Any]) -> dict[str, Any]:
    """A Harvest ``<client>`` as :class:`Organisation` fields; the address is parsed from ``details``."""
    details = native.get("details")
    data: dict[str, Any] = {
        "key": _id(native),
        "updated_at": _datetime(native, "updated-at", required=True),
        "created_at": _datetime(native, "created-at", required=False),
        "name": _text(native.get("name")),
        **parse_details(details if isinstance(details, str) else None),
    }
    data["extra"] = _extra(native, {"id", "updated-at", "created-at", "name"})
    return data


def organisation_payload(record: Organisation, *, clear_empty: bool, create: bool) -> dict[str, Any]:
    """The ``<client>`` to POST or PUT for ``record``.

    ``details`` is the address as Harvest keeps it: the original text from
    ``extra.details`` when the record's address parts still say the same, else composed
    from street, postcode, city and country. ``currency`` and ``active`` come from
    ``extra`` when they are there.
    """
    body: dict[str, Any] = {}
    name = _text(record.name)
    if name is not None:
        body["name"] = name
    elif create:
        raise ValidationFailed("Harvest requires a name for a client")
    address = address_of({k: getattr(record, k) for k in _ADDRESS})
    raw = record.extra.get("details")
    if isinstance(raw, str) and raw.strip() and parse_details(raw) == address:
        body["details"] = raw
    else:
        composed = compose_details(**address)
        if composed is not None:
            body["details"] = composed
        elif clear_empty and not create:
            body["details"] = None
    raw_currency = record.extra.get("currency")
    code = currency_code(raw_currency) if isinstance(raw_currency, str) else None
    if code in CURRENCIES:
        # Harvest accepts only its current names; an old one read back ("United States
        # Dollars - USD") is written as today's.
        body["currency"] = currency_name(code)
    elif code is not None and isinstance(raw_currency, str) and raw_currency.strip() != code:
        body["currency"] = raw_currency.strip()  # Harvest's own name for a code we do not list
    active = record.extra.get("active")
    if isinstance(active, bool):
        body["active"] = active
    return body


# -- invoices ------------------------------------------------------------------------------


def invoice_fields(native: Mapping[str, Any], client_names: Mapping[int, str]) -> dict[str, Any]:
    """A Harvest ``<invoice>`` as :class:`Invoice` fields; money stays exact, at least to the cent."""
    client = _client_id(native)
    raw_currency = native.get("currency")
    code = currency_code(raw_currency) if isinstance(raw_currency, str) else None
    state = native.get("state")
    data: dict[str, Any] = {
        "key": _id(native),
        "updated_at": _datetime(native, "updated-at", required=True),
        "created_at": _datetime(native, "created-at", required=False),
        "customer_key": str(client) if client is not None else None,
        "customer_name": client_names.get(client) if client is not None else None,
        "amount": money(native["amount"], "amount") if native.get("amount") is not None else None,
        "balance_due": money(native["due-amount"], "due-amount") if native.get("due-amount") is not None else None,
        "currency": code,
        "status": state if state in INVOICE_STATES else None,
        "issued_on": _date(native.get("issued-at"), "issued-at"),
    }
    # The terms (net 30, upon receipt, ...) override due-at; only "custom" keeps it.
    terms = native.get("due-at-human-format")
    data["due_on"] = due_from_terms(
        data["issued_on"], _date(native.get("due-at"), "due-at"), terms if isinstance(terms, str) else None
    )
    for tag, name in _INVOICE_TEXT:
        data[name] = _text(native.get(tag))
    used = {"id", "updated-at", "created-at", "client-id", "amount", "due-amount", "issued-at", "due-at"}
    used.update(tag for tag, _ in _INVOICE_TEXT)
    if code is not None:
        used.add("currency")  # the ISO code is canonical; an unreadable one stays in extra
    if data["status"] is not None:
        used.add("state")
    data["extra"] = _extra(native, used)
    return data


def status_to_state(status: str | None) -> str | None:
    """The Harvest state a canonical status asks for (``void`` is Harvest's ``closed``)."""
    if status is None:
        return None
    return "closed" if status == "void" else status


def _line_items_from_extra(record: Invoice) -> tuple[str, dict[str, Decimal | None]] | None:
    text = record.extra.get("csv-line-items")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        items = parse_line_items(text)
        rates = {
            name: to_decimal(record.extra[name], name) if record.extra.get(name) not in (None, "") else None
            for name in _INVOICE_DECIMAL_EXTRA
        }
    except ValueError as exc:
        raise ValidationFailed(str(exc)) from None
    if not items:
        raise ValidationFailed("extra.csv-line-items has a header but no lines")
    if record.amount is not None and not any(rates.values()):
        total = invoice_totals(items).amount
        if total != record.amount:
            raise ValidationFailed(
                f"extra.csv-line-items add up to {format(total, 'f')} but amount is {format(record.amount, 'f')}"
            )
    return format_line_items(items), rates


def invoice_payload(
    record: Invoice,
    client_id: int | None,
    *,
    current: Mapping[str, Any] | None,
    clear_empty: bool,
    line_item_kind: str = "Service",
) -> dict[str, Any]:
    """The ``<invoice>`` to POST (``current`` is ``None``) or PUT for ``record``.

    Harvest computes an invoice's amount from its line items, so the amount travels as
    ``csv-line-items``: the lines in ``extra.csv-line-items`` when the record carries them
    (with ``extra.tax``/``tax2``/``discount``), else one untaxed line of quantity 1 at the
    amount. On an update the lines are only rewritten when the amount changed, so an
    invoice's own detailed lines survive edits to its subject or notes. ``state`` cannot
    be written here (Harvest derives it): see the connector's state reconciliation.
    """
    create = current is None
    body: dict[str, Any] = {}
    if client_id is not None:
        body["client-id"] = client_id
    for tag, name in _INVOICE_TEXT:
        value = _text(getattr(record, name))
        if value is not None:
            body[tag] = value
        elif clear_empty and not create and tag != "number":
            body[tag] = None
    if record.issued_on is not None:
        body["issued-at"] = record.issued_on
    if record.due_on is not None:
        # due-at alone is overridden by the invoice's terms: send the terms that keep it.
        body["due-at"] = record.due_on
        body["due-at-human-format"] = terms_for(record.issued_on, record.due_on)
    if record.currency is not None:
        if record.currency not in CURRENCIES:
            raise ValidationFailed(
                f"currency {record.currency!r}: Harvest accepts only the currencies it lists, and Ferryman "
                f"knows Harvest's name for {', '.join(sorted(CURRENCIES))}"
            )
        body["currency"] = currency_name(record.currency)
    purchase_order = _text(record.extra.get("purchase-order"))
    if purchase_order is not None:
        body["purchase-order"] = purchase_order
    explicit = _line_items_from_extra(record)
    if explicit is not None:
        body["csv-line-items"], rates = explicit
        for name, rate in rates.items():
            if rate is not None:
                body[name] = rate
    elif record.amount is not None:
        current_amount = money(current["amount"]) if current and current.get("amount") is not None else None
        if current_amount != record.amount:
            description = _text(record.subject) or (f"Invoice {record.number}" if record.number else "Invoice")
            line = LineItem(line_item_kind, description, Decimal("1.00"), record.amount)
            body["csv-line-items"] = format_line_items([line])
    elif create:
        raise ValidationFailed("an invoice needs an amount (or extra.csv-line-items) for Harvest to bill")
    if create:
        body["kind"] = "free_form"
    return body
