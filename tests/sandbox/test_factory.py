"""Generated data: realistic, deterministic, with the timestamp clusters cursors must survive."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal

from ferryman.sandbox import ANCHOR, DataFactory


def generate(seed: int, n: int = 300) -> tuple[list[dict], list[dict], list[dict]]:
    factory = DataFactory(seed)
    people = factory.people(n)
    tickets = factory.tickets(n, [p["email"] for p in people])
    invoices = factory.invoices(n, list(range(1, n + 1)))
    return people, tickets, invoices


def test_same_seed_same_data_different_seed_different_data():
    assert generate(5) == generate(5)
    assert generate(5) != generate(6)


def test_emails_are_unique_even_when_names_repeat():
    people = DataFactory(1).people(20_000)
    emails = [p["email"] for p in people]
    assert len(set(emails)) == len(emails)
    assert all("@" in e and e.endswith((".example", "example.com", "example.net", "example.org")) for e in emails)
    assert any(not p["first_name"].isascii() for p in people)  # names are not all ASCII


def test_updated_at_lies_in_the_window_before_the_anchor_and_after_created_at():
    factory = DataFactory(2)
    created, updated = factory.timeline(5000)
    assert all(c <= u for c, u in zip(created, updated, strict=True))
    assert all(ANCHOR - timedelta(days=90) <= u <= ANCHOR for u in updated)
    assert created == sorted(created)  # ids are handed out in creation order
    assert all(u.tzinfo is not None and u.utcoffset() == timedelta(0) and u.microsecond == 0 for u in updated)


def test_about_a_fifth_of_rows_share_their_second_with_others():
    _, updated = DataFactory(3).timeline(10_000)
    counts = Counter(updated)
    shared = sum(n for n in counts.values() if n > 1)
    assert 0.1 < shared / len(updated) < 0.3
    assert max(counts.values()) >= 5


def test_invoices_carry_exact_money_and_sensible_dates():
    _, _, invoices = generate(4)
    for invoice in invoices:
        assert isinstance(invoice["amount"], Decimal)
        assert invoice["amount"] == invoice["amount"].quantize(Decimal("0.01")) > 0
        assert invoice["due_on"] > invoice["issued_on"] == invoice["created_at"].date()
        assert invoice["currency"] in {"USD", "EUR", "GBP"}
    assert len({i["number"] for i in invoices}) == len(invoices)


def test_tickets_have_varied_text_and_valid_enums():
    _, tickets, _ = generate(4)
    assert len({t["subject"] for t in tickets}) > 100
    assert {t["status"] for t in tickets} == {"open", "pending", "closed"}
    assert {t["priority"] for t in tickets} <= {"low", "normal", "high", "urgent"}
