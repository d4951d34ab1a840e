"""``sandbox generic``: every pagination, filter, auth and write style the rest connector speaks."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ferryman.sandbox import SimulatorThread
from ferryman_connectors.rest.simulator import GenericSimulator, parse_since

KEY = {"X-API-Key": "sandbox-key"}


@pytest.fixture(scope="module")
def sandbox():
    # Shared read-mostly sandbox: tests that write use their own records or `fresh`.
    with SimulatorThread(GenericSimulator(records=137, seed=3)) as running:
        yield running


@pytest.fixture(scope="module")
def client(sandbox):
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=10) as c:
        yield c


@pytest.fixture
def fresh():
    with (
        SimulatorThread(GenericSimulator(records=20, seed=9)) as running,
        httpx.Client(base_url=running.url, headers=KEY, timeout=10) as c,
    ):
        yield running, c


def order_key(record: dict) -> tuple[str, int]:
    return record["updated_at"], record["id"]


def walk(client: httpx.Client, style: str, stream: str = "tickets", size: int = 10, **params: Any) -> list[dict]:
    """Every record of a stream, following the style's own way to the next page."""
    records: list[dict] = []
    url = f"/api/{style}/{stream}"
    query: dict = {**params}
    page, offset = 1, 0
    for _ in range(1000):
        if style == "page" or (style == "link" and page == 1):
            query.update(page=page, per_page=size)
        elif style == "offset":
            query.update(offset=offset, limit=size)
        elif style == "cursor" or (style == "next" and not records):
            query["limit"] = size
        # Next and Link URLs are followed as given.
        response = client.get(url, params=query or None)
        assert response.status_code == 200, response.text
        body = response.json()
        records += body["data"]
        if style == "page":
            if page >= body["total_pages"]:
                return records
            page += 1
        elif style == "offset":
            offset += size
            if offset >= body["total"]:
                return records
        elif style == "cursor":
            if body["next_cursor"] is None:
                return records
            query["cursor"] = body["next_cursor"]
        elif style == "next":
            if body["next"] is None:
                return records
            assert "api_key" not in body["next"]
            url, query = body["next"], {}
        elif style == "link":
            nxt = response.links.get("next")
            if nxt is None:
                return records
            url, query = nxt["url"], {}
            page += 1
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "next", "link"])
def test_each_pagination_style_walks_every_record_once_in_order(client, style):
    records = walk(client, style, size=10)
    assert len(records) == 137 == len({r["id"] for r in records})
    assert records == sorted(records, key=order_key)


@pytest.mark.parametrize("style", ["page", "offset", "cursor", "next", "link"])
def test_paginate_parameter_selects_the_style_on_the_plain_path(client, style):
    path = client.get(f"/api/{style}/contacts", params={"per_page": 5, "limit": 5}).json()
    plain = client.get("/api/contacts", params={"paginate": style, "per_page": 5, "limit": 5}).json()
    assert path["data"] == plain["data"] and set(path) == set(plain)


def test_page_style_reports_totals(client):
    body = client.get("/api/invoices", params={"page": 3, "per_page": 50}).json()
    assert (body["page"], body["per_page"], body["total"], body["total_pages"]) == (3, 50, 137, 3)
    assert len(body["data"]) == 37


def test_link_style_sends_rfc8288_links_and_a_total(client):
    response = client.get("/api/link/tickets", params={"page": 2, "per_page": 50})
    assert response.headers["X-Total-Count"] == "137"
    assert set(response.links) == {"next", "prev", "first", "last"}
    assert "page=3" in response.links["next"]["url"] and "page=3" in response.links["last"]["url"]


def test_cursor_walk_survives_records_sharing_a_second_across_pages():
    # With page size 1, every shared timestamp straddles a page boundary.
    sim = GenericSimulator(records=150, seed=11)
    stamps = [r["updated_at"].replace(microsecond=0) for r in sim.table("tickets").query()]
    assert len(set(stamps)) < len(stamps)  # the data really has shared seconds
    with SimulatorThread(sim) as running, httpx.Client(base_url=running.url, headers=KEY) as c:
        records = walk(c, "cursor", size=1)
    assert [r["id"] for r in records] == [r["id"] for r in sim.table("tickets").query()]


def test_records_look_native_with_whole_second_z_timestamps(client):
    ticket, contact, invoice = (
        client.get(f"/api/{s}", params={"per_page": 1}).json()["data"][0] for s in ("tickets", "contacts", "invoices")
    )
    assert set(ticket) == {
        "id",
        "subject",
        "description",
        "status",
        "priority",
        "requester_email",
        "created_at",
        "updated_at",
    }
    assert set(contact) == {"id", "email", "first_name", "last_name", "phone", "company", "created_at", "updated_at"}
    assert set(invoice) == {
        "id",
        "number",
        "customer_id",
        "amount",
        "currency",
        "status",
        "issued_on",
        "due_on",
        "created_at",
        "updated_at",
    }
    assert ticket["updated_at"].endswith("Z") and len(ticket["updated_at"]) == 20
    assert isinstance(invoice["amount"], str) and "." in invoice["amount"]


SINCE_FORMS = [
    "2025-05-01T00:00:00Z",
    "2025-05-01T02:00:00+02:00",
    "2025-05-01T02:00:00 02:00",  # a '+' a client forgot to encode arrives as a space
    "2025-05-01 00:00:00",
    "2025-05-01",
    str(int(datetime(2025, 5, 1, tzinfo=UTC).timestamp())),
]


@pytest.mark.parametrize("since", SINCE_FORMS)
def test_updated_since_accepts_every_documented_form(client, since):
    assert parse_since(since) == datetime(2025, 5, 1, tzinfo=UTC)
    records = walk(client, "cursor", "contacts", size=50, updated_since=since)
    everything = walk(client, "cursor", "contacts", size=50)
    expected = [r for r in everything if r["updated_at"] >= "2025-05-01T00:00:00Z"]
    assert records == expected and 0 < len(records) < len(everything)


def test_query_language_form_with_inclusive_and_strict_bounds(client):
    everything = walk(client, "offset", "tickets", size=100)
    pivot = everything[60]["updated_at"]
    at_or_after = walk(client, "offset", "tickets", size=100, q=f"updated >= '{pivot}'")
    after = walk(client, "offset", "tickets", size=100, q=f'updated_at > "{pivot}"')
    assert at_or_after == [r for r in everything if r["updated_at"] >= pivot]
    assert after == [r for r in everything if r["updated_at"] > pivot]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"updated_since": "yesterday"}, "updated_since"),
        ({"q": "status = 'open'"}, "q"),
        ({"per_page": 0}, "per_page"),
        ({"per_page": 1001}, "per_page"),
        ({"page": "two"}, "page"),
        ({"paginate": "scroll"}, "paginate"),
        ({"paginate": "cursor", "cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(client, params, field):
    response = client.get("/api/tickets", params=params)
    assert response.status_code == 422
    assert field in response.json()["fields"]


@pytest.mark.parametrize(
    "auth",
    [
        {"headers": {"X-API-Key": "sandbox-key"}},
        {"params": {"api_key": "sandbox-key"}},
        {"auth": ("sandbox-key", "X")},
        {"headers": {"Authorization": "Bearer sandbox-key"}},
    ],
    ids=["header", "query", "basic", "bearer"],
)
def test_every_auth_style_is_accepted_by_default(sandbox, auth):
    kwargs = {"headers": {}, **auth}
    assert httpx.get(sandbox.url + "/api/tickets", **kwargs).status_code == 200


def test_wrong_or_missing_credentials_are_401(sandbox):
    assert httpx.get(sandbox.url + "/api/tickets").status_code == 401
    assert httpx.get(sandbox.url + "/api/tickets", headers={"X-API-Key": "nope"}).status_code == 401
    response = httpx.get(sandbox.url + "/api/tickets", auth=("nope", "sandbox-key"))
    assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]


def test_auth_styles_can_be_narrowed():
    sim = GenericSimulator(records=1, auth=["basic"], credentials={"api_key": "tok-123"})
    with SimulatorThread(sim) as running:
        url = running.url + "/api/tickets"
        assert httpx.get(url, auth=("tok-123", "")).status_code == 200
        assert httpx.get(url, headers={"X-API-Key": "tok-123"}).status_code == 401
        assert httpx.get(url, params={"api_key": "tok-123"}).status_code == 401


def test_the_envelope_key_is_configurable():
    with SimulatorThread(GenericSimulator(records=2, envelope="results")) as running:
        body = httpx.get(running.url + "/api/contacts", headers=KEY).json()
    assert len(body["results"]) == 2 and "data" not in body


def test_a_post_is_seen_by_the_next_incremental_pull(fresh):
    _, client = fresh
    before = walk(client, "cursor", "tickets", size=50)
    cursor = before[-1]["updated_at"]
    created = client.post("/api/tickets", json={"subject": "Printer on fire", "requester_email": "a@b.example"})
    assert created.status_code == 201
    ticket = created.json()
    assert created.headers["Location"] == f"/api/tickets/{ticket['id']}"
    assert ticket["status"] == "open" and ticket["priority"] == "normal" and ticket["updated_at"] >= cursor
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ticket["updated_at"])  # whole seconds, Z
    pulled = walk(client, "cursor", "tickets", size=50, updated_since=cursor)
    assert pulled[-1] == ticket
    assert client.get(f"/api/tickets/{ticket['id']}").json() == ticket


def test_form_encoded_create(fresh):
    _, client = fresh
    response = client.post("/api/contacts", data={"email": "form@x.example", "first_name": "Zoë", "phone": ""})
    assert response.status_code == 201
    contact = response.json()
    assert contact["first_name"] == "Zoë" and contact["phone"] is None


def test_put_replaces_and_patch_changes_only_what_it_says(fresh):
    _, client = fresh
    original = client.get("/api/contacts/1").json()
    patched = client.patch("/api/contacts/1", json={"phone": "+44 20 7946 0999"}).json()
    assert patched == {**original, "phone": "+44 20 7946 0999", "updated_at": patched["updated_at"]}
    replaced = client.put("/api/contacts/1", json={**patched, "company": None, "first_name": "Ana"})
    assert replaced.status_code == 200
    assert replaced.json()["first_name"] == "Ana" and replaced.json()["company"] is None
    assert client.put("/api/contacts/1", json={"first_name": "No Email"}).status_code == 422


def test_invoice_writes_keep_money_exact_and_check_the_customer(fresh):
    _, client = fresh
    response = client.post("/api/invoices", data={"customer_id": "3", "amount": "1234.50", "currency": "EUR"})
    assert response.status_code == 201, response.text
    invoice = response.json()
    assert invoice["amount"] == "1234.50" and invoice["number"] == f"INV-{invoice['id']:06d}"
    assert invoice["status"] == "draft" and invoice["issued_on"]
    bad = client.post("/api/invoices", json={"customer_id": 999, "amount": 0.125, "colour": "red"})
    assert bad.status_code == 422
    assert set(bad.json()["fields"]) == {"customer_id", "amount", "colour"}


def test_duplicate_email_is_422(fresh):
    _, client = fresh
    email = client.get("/api/contacts/2").json()["email"]
    response = client.post("/api/contacts", json={"email": email})
    assert response.status_code == 422 and "email" in response.json()["fields"]


def test_delete_then_404_and_visible_only_with_include_deleted(fresh):
    _, client = fresh
    assert client.delete("/api/tickets/5").status_code == 204
    assert client.get("/api/tickets/5").status_code == 404
    assert client.delete("/api/tickets/5").status_code == 404
    visible = walk(client, "cursor", "tickets", size=50)
    assert 5 not in {r["id"] for r in visible}
    deleted = client.get("/api/cursor/tickets", params={"include_deleted": "true", "limit": 100}).json()["data"]
    assert deleted[-1]["id"] == 5 and deleted[-1]["deleted"] is True


@pytest.mark.parametrize("path", ["/api/tickets/999", "/api/tickets/abc", "/api/contacts/0"])
def test_unknown_ids_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_invalid_json_body_is_422(fresh):
    _, client = fresh
    response = client.post("/api/tickets", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_cursor_is_opaque_but_positional(client):
    body = client.get("/api/cursor/tickets", params={"limit": 3}).json()
    raw = base64.urlsafe_b64decode(body["next_cursor"] + "==").decode()
    last = body["data"][-1]
    stamp = datetime.fromisoformat(last["updated_at"].replace("Z", "+00:00"))
    assert raw == f"{int(stamp.timestamp())}:{last['id']}"


def test_same_seed_serves_the_same_data():
    a = GenericSimulator(records=25, seed=4)
    b = GenericSimulator(records=25, seed=4)
    c = GenericSimulator(records=25, seed=5)
    assert a.table("tickets").query() == b.table("tickets").query()
    assert a.table("tickets").query() != c.table("tickets").query()
    assert (
        timedelta(0)
        <= max(r["updated_at"] for r in a.table("contacts").query())
        - min(r["updated_at"] for r in a.table("contacts").query())
        <= timedelta(days=90)
    )


def test_precomputed_pages_are_the_same_json_and_follow_writes():
    """``precompute=True`` (benchmarks) serves list pages from bytes encoded at start-up:
    byte for byte what the rendering path answers, in every style, and a row written
    through the API is listed with its new content."""
    plain, fast = GenericSimulator(records=60, seed=5), GenericSimulator(records=60, seed=5, precompute=True)
    with (
        SimulatorThread(plain) as a,
        SimulatorThread(fast) as b,
        httpx.Client(base_url=a.url, headers=KEY, timeout=10) as ca,
        httpx.Client(base_url=b.url, headers=KEY, timeout=10) as cb,
    ):
        for url in (
            "/api/page/tickets?per_page=25&page=2",
            "/api/offset/contacts?limit=30&offset=10",
            "/api/cursor/contacts?limit=1000",
            "/api/next/invoices?limit=7&include_deleted=true",
            "/api/link/tickets?per_page=9&page=3",
            "/api/page/contacts?per_page=5&page=999",
        ):
            ra, rb = ca.get(url), cb.get(url)
            assert ra.status_code == rb.status_code == 200
            assert rb.content == ra.content.replace(a.url.encode(), b.url.encode()), url
            assert rb.headers.get("Link", "").replace(b.url, a.url) == ra.headers.get("Link", "")
        assert cb.patch("/api/contacts/7", json={"first_name": "Précomputé"}).status_code == 200
        assert cb.delete("/api/invoices/3").status_code == 204
        listed = cb.get("/api/cursor/contacts?limit=1000").json()["data"]
        assert [c["first_name"] for c in listed if c["id"] == 7] == ["Précomputé"]
        deleted = cb.get("/api/cursor/invoices?limit=1000&include_deleted=true").json()["data"]
        assert [i.get("deleted") for i in deleted if i["id"] == 3] == [True]
