"""Facts about Harvest's classic v1 API that the connector and its simulator share.

Currencies, invoice line items in Harvest's ``csv-line-items`` text, invoice totals,
money normalisation and the free-text client address. Pure functions, no I/O; every
amount is an exact :class:`~decimal.Decimal` (a float never touches money here).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

__all__ = [
    "CENT",
    "CURRENCIES",
    "DUE_TERMS",
    "INVOICE_STATES",
    "LEGACY_CURRENCY_NAMES",
    "LINE_ITEM_COLUMNS",
    "WRITABLE_TERMS",
    "LineItem",
    "Totals",
    "address_of",
    "compose_details",
    "currency_code",
    "currency_name",
    "due_from_terms",
    "format_line_items",
    "invoice_totals",
    "money",
    "parse_details",
    "parse_line_items",
    "term_days",
    "terms_for",
    "to_decimal",
]

CENT = Decimal("0.01")

#: ISO 4217 code -> (Harvest's name, symbol). Harvest writes a currency as "Name - CODE".
CURRENCIES: dict[str, tuple[str, str]] = {
    "USD": ("United States Dollar", "$"),
    "EUR": ("Euro", "€"),
    "GBP": ("British Pound", "£"),
    "CAD": ("Canadian Dollar", "$"),
    "AUD": ("Australian Dollar", "$"),
    "NZD": ("New Zealand Dollar", "$"),
    "JPY": ("Japanese Yen", "¥"),
    "CHF": ("Swiss Franc", "CHF"),
    "SEK": ("Swedish Krona", "kr"),
    "NOK": ("Norwegian Krone", "kr"),
    "DKK": ("Danish Krone", "kr"),
    "PLN": ("Polish Zloty", "zł"),
    "CZK": ("Czech Koruna", "Kč"),
    "HUF": ("Hungarian Forint", "Ft"),
    "RON": ("Romanian Leu", "lei"),
    "TRY": ("Turkish Lira", "₺"),
    "ILS": ("Israeli New Shekel", "₪"),
    "AED": ("United Arab Emirates Dirham", "د.إ"),
    "INR": ("Indian Rupee", "₹"),
    "CNY": ("Chinese Yuan", "¥"),
    "HKD": ("Hong Kong Dollar", "$"),
    "SGD": ("Singapore Dollar", "$"),
    "KRW": ("South Korean Won", "₩"),
    "BRL": ("Brazilian Real", "R$"),
    "MXN": ("Mexican Peso", "$"),
    "ZAR": ("South African Rand", "R"),
    "NGN": ("Nigerian Naira", "₦"),
}

#: Names Harvest used for a currency before its current ones (shared/seeds README, "Verified
#: against the real systems"; the recorded ``fixtures/harvest/clients.xml`` says "United States
#: Dollars - USD"). Reads match any name by the ISO code at its end; writes send only the
#: current name from :data:`CURRENCIES`, because Harvest accepts only its listed values.
LEGACY_CURRENCY_NAMES: dict[str, str] = {
    "USD": "United States Dollars - USD",
    "GBP": "United Kingdom Pound - GBP",
}

#: ``due-at-human-format`` -> days after ``issued-at`` (shared/seeds README: ``upon receipt``,
#: ``net 15/30/45/60``, ``custom``; older data ``30 days``, ``due upon receipt``). ``custom``
#: is absent: only then does ``due-at`` itself say when the invoice is due.
DUE_TERMS: dict[str, int] = {
    "upon receipt": 0,
    "due upon receipt": 0,
    "net 15": 15,
    "net 30": 30,
    "net 45": 45,
    "net 60": 60,
}
#: the values a write may send (Harvest's current list)
WRITABLE_TERMS = ("upon receipt", "net 15", "net 30", "net 45", "net 60", "custom")
_TERMS_TEXT = re.compile(r"(?:net\s+(\d+)|(\d+)\s+days?)")

#: Harvest's invoice states, in the words Ferryman's canonical ``Invoice.status`` uses too.
INVOICE_STATES = ("draft", "open", "partial", "paid", "closed")

LINE_ITEM_COLUMNS = ("kind", "description", "quantity", "unit_price", "amount", "taxed", "taxed2", "project_id")

_CODE_AT_END = re.compile(r"(?:^|[\s(\-])([A-Z]{3})\)?\s*$")


def currency_code(value: str | None) -> str | None:
    """The ISO code in Harvest's currency text: ``"United States Dollar - USD"`` -> ``"USD"``.

    A bare code is its own code; text without a trailing three-letter code gives ``None``.
    """
    if value is None:
        return None
    match = _CODE_AT_END.search(value.strip())
    return match[1] if match else None


def currency_name(code: str) -> str:
    """Harvest's text for an ISO code (``"Euro - EUR"``); an unknown code is sent bare."""
    known = CURRENCIES.get(code)
    return f"{known[0]} - {code}" if known else code


def term_days(text: str | None) -> int | None:
    """Days after ``issued-at`` that a ``due-at-human-format`` means; ``None``: ``custom`` (or unknown)."""
    if text is None:
        return None
    words = " ".join(text.strip().lower().split())
    if words in DUE_TERMS:
        return DUE_TERMS[words]
    match = _TERMS_TEXT.fullmatch(words)
    if match is None:
        return None
    return int(match[1] or match[2])


def due_from_terms(issued: date | None, due: date | None, terms: str | None) -> date | None:
    """When an invoice is due: its terms override ``due-at``, unless they are ``custom``."""
    days = term_days(terms)
    if days is None or issued is None:
        return due
    return issued + timedelta(days=days)


def terms_for(issued: date | None, due: date) -> str:
    """The ``due-at-human-format`` to send with ``due-at``: a listed term when it says the same
    date, else ``custom`` (the only value under which Harvest keeps ``due-at`` as sent)."""
    if issued is not None:
        days = (due - issued).days
        for name in WRITABLE_TERMS:
            if DUE_TERMS.get(name) == days:
                return name
    return "custom"


def to_decimal(value: Any, what: str = "amount") -> Decimal:
    """An exact Decimal from a Decimal, int or numeric string; a float goes through its repr.

    Raises ``ValueError`` for anything else, and for NaN or infinity.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int | str | float):
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{what}: {value!r} is not a decimal number") from None
    else:
        raise ValueError(f"{what}: {value!r} is not a number")
    if not result.is_finite():
        raise ValueError(f"{what}: {value!r} is not a finite number")
    return result


def money(value: Any, what: str = "amount") -> Decimal:
    """Money with at least two decimals: Harvest writes ``100.0``, Ferryman says ``100.00``.

    Only trailing zeros are added; a third decimal (a currency with mils) is kept as is.
    """
    amount = to_decimal(value, what)
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent > -2:
        return amount.quantize(CENT)
    return amount


# -- invoice line items --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineItem:
    """One line of a Harvest invoice: ``quantity x unit_price``, rounded to the cent."""

    kind: str
    description: str
    quantity: Decimal
    unit_price: Decimal
    taxed: bool = False
    taxed2: bool = False
    project_id: str | None = None

    @property
    def amount(self) -> Decimal:
        return (self.quantity * self.unit_price).quantize(CENT, rounding=ROUND_HALF_UP)


def _flag(text: str, column: str, line: int) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ValueError(f"csv-line-items line {line}: {column} {text!r} is not true or false")


def parse_line_items(text: str) -> list[LineItem]:
    """Harvest's ``csv-line-items`` text to line items; ``ValueError`` names the bad line.

    The first row is the header (``kind,description,quantity,unit_price,amount,taxed,
    taxed2,project_id``); the ``amount`` column is ignored: it is always quantity x price.
    """
    rows = list(csv.reader(io.StringIO(text.strip())))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    for needed in ("quantity", "unit_price"):
        if needed not in header:
            raise ValueError(f"csv-line-items: the header has no {needed} column")
    items = []
    for number, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        row = dict(zip(header, cells, strict=False))
        try:
            quantity = to_decimal(row.get("quantity", ""), "quantity")
            price = to_decimal(row.get("unit_price", ""), "unit_price")
        except ValueError as exc:
            raise ValueError(f"csv-line-items line {number}: {exc}") from None
        items.append(
            LineItem(
                kind=row.get("kind", "").strip() or "Service",
                description=row.get("description", ""),
                quantity=quantity,
                unit_price=price,
                taxed=_flag(row.get("taxed", ""), "taxed", number),
                taxed2=_flag(row.get("taxed2", ""), "taxed2", number),
                project_id=row.get("project_id", "").strip() or None,
            )
        )
    return items


def format_line_items(items: Iterable[LineItem]) -> str:
    """Line items as Harvest's ``csv-line-items`` text, amounts exact."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LINE_ITEM_COLUMNS)
    for item in items:
        writer.writerow(
            (
                item.kind,
                item.description,
                format(item.quantity, "f"),
                format(item.unit_price, "f"),
                format(item.amount, "f"),
                "true" if item.taxed else "false",
                "true" if item.taxed2 else "false",
                item.project_id or "",
            )
        )
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class Totals:
    """What an invoice's line items, taxes and discount add up to."""

    subtotal: Decimal
    tax_amount: Decimal
    tax2_amount: Decimal
    discount_amount: Decimal
    amount: Decimal


def _percent(base: Decimal, rate: Decimal | None) -> Decimal:
    if not rate:
        return Decimal("0.00")
    return (base * rate / 100).quantize(CENT, rounding=ROUND_HALF_UP)


def invoice_totals(
    items: Iterable[LineItem],
    tax: Decimal | None = None,
    tax2: Decimal | None = None,
    discount: Decimal | None = None,
) -> Totals:
    """Subtotal of the lines, taxes (percent, on taxed lines), discount (percent) and the amount."""
    lines = list(items)
    subtotal = sum((i.amount for i in lines), Decimal("0.00"))
    tax_amount = _percent(sum((i.amount for i in lines if i.taxed), Decimal("0.00")), tax)
    tax2_amount = _percent(sum((i.amount for i in lines if i.taxed2), Decimal("0.00")), tax2)
    discount_amount = _percent(subtotal, discount)
    return Totals(
        subtotal, tax_amount, tax2_amount, discount_amount, subtotal + tax_amount + tax2_amount - discount_amount
    )


# -- client address ------------------------------------------------------------------------

_POSTCODE_FIRST = re.compile(r"(\S*\d\S*)\s+(\S.*)")
_COUNTRY_CODE = re.compile(r"[A-Z]{2,3}")
# Lines of a client's details that are not its address: a web address, a phone or fax number.
_NOT_ADDRESS = re.compile(r"(?:https?://|www\.)\S+|[+()\d][\d\s().+-]{6,}(?:\s*\((?:fax|tel|phone)\))?", re.I)


def compose_details(street: str | None, postcode: str | None, city: str | None, country: str | None) -> str | None:
    """A client's free-text ``details`` from address parts: street, "postcode city", country."""
    place = " ".join(p.strip() for p in (postcode, city) if p and p.strip())
    lines = [p.strip() for p in (street, place, country) if p and p.strip()]
    return "\n".join(lines) or None


def parse_details(text: str | None) -> dict[str, str | None]:
    """Best-effort address parts from ``details`` laid out as :func:`compose_details` does.

    Web addresses and phone or fax numbers (Harvest's own example puts them there) are not
    address lines. The last line is the country when it is a two- or three-letter code
    (``US``, ``USA``); the line before it is
    "postcode city" when it starts with a token holding a digit, else the city; what
    is above is the street. A single line is the street.
    """
    parts: dict[str, str | None] = {"street": None, "postcode": None, "city": None, "country": None}
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    lines = [line for line in lines if not _NOT_ADDRESS.fullmatch(line)]
    if len(lines) >= 2 and _COUNTRY_CODE.fullmatch(lines[-1]):
        parts["country"] = lines.pop()
    if len(lines) >= 2:
        place = lines.pop()
        match = _POSTCODE_FIRST.fullmatch(place)
        if match:
            parts["postcode"], parts["city"] = match[1], match[2]
        else:
            parts["city"] = place
    if lines:
        parts["street"] = "\n".join(lines)
    return parts


def address_of(values: Mapping[str, Any]) -> dict[str, str | None]:
    """The four address parts of a record-like mapping."""
    return {k: values.get(k) for k in ("street", "postcode", "city", "country")}
