"""Body codecs: strict JSON, bracketed forms, XML that cannot hurt us, typed and plain XML."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest

from ferryman.errors import MalformedResponseError
from ferryman.http.codecs import (
    dict_to_xml,
    dumps_json,
    form_encode,
    loads_json,
    parse_xml,
    python_to_typed_xml,
    typed_xml_to_python,
    xml_to_dict,
)
from ferryman.redact import register_secret

# -- JSON --------------------------------------------------------------------------------


def test_loads_json_parses_and_names_the_request_when_it_cannot() -> None:
    assert loads_json(b'{"a": [1, 2]}') == {"a": [1, 2]}
    register_secret("s3cr3t-key-value")
    request = httpx.Request("GET", "https://api.example.com/x?key=s3cr3t-key-value")
    response = httpx.Response(200, text="<html>Bad Gateway</html>", request=request)
    with pytest.raises(MalformedResponseError) as caught:
        loads_json(response)
    message = str(caught.value)
    assert message.startswith("GET https://api.example.com/x?key=***: response is not valid JSON")
    assert "<html>Bad Gateway</html>" in message
    assert "s3cr3t" not in message


def test_loads_json_refuses_an_empty_body() -> None:
    with pytest.raises(MalformedResponseError, match="empty"):
        loads_json(b"  ")


def test_dumps_json_keeps_money_exact_and_time_utc() -> None:
    at = datetime(2024, 3, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    assert dumps_json({"amount": Decimal("0.10"), "at": at}) == b'{"amount":"0.10","at":"2024-03-01T12:30:00Z"}'


# -- forms -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        ({"fields": {"subject": "x"}, "expand": "a"}, "fields[subject]=x&expand=a"),
        ({"tags": ["a", "b"]}, "tags[]=a&tags[]=b"),
        ({"items": [{"n": 1}, {"n": 2}]}, "items[0][n]=1&items[1][n]=2"),
        ({"q": 'updated:"-1 day to now" sort:updated'}, "q=updated%3A%22-1+day+to+now%22+sort%3Aupdated"),
        ({"ok": True, "no": False, "none": None}, "ok=1&no=0&none="),
        (
            {"amount": Decimal("10.50"), "at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)},
            "amount=10.50&at=2024-01-02T03%3A04%3A05Z",
        ),
        ({"fields": {"custom": {"12": "é&"}}}, "fields[custom][12]=%C3%A9%26"),
    ],
)
def test_form_encode(data, encoded) -> None:
    assert form_encode(data) == encoded


# -- safe XML ----------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE contact [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<contact><email>&xxe;</email></contact>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_entity_declarations_are_refused_quickly(body: bytes) -> None:
    started = time.perf_counter()
    with pytest.raises(MalformedResponseError) as caught:
        parse_xml(body)
    assert time.perf_counter() - started < 0.5
    assert str(caught.value) == "XML refused: entity declarations are not allowed"
    assert "root:" not in str(caught.value)  # nothing of /etc/passwd was read


def test_plain_doctype_without_entities_and_bad_xml() -> None:
    assert parse_xml(b"<!DOCTYPE note><note>hi</note>").text == "hi"
    with pytest.raises(MalformedResponseError, match="not well-formed XML"):
        parse_xml(b"<contacts><contact></contacts>")


# -- Rails typed XML (Harvest) -----------------------------------------------------------

HARVEST_CONTACTS = b"""<?xml version="1.0" encoding="UTF-8"?>
<contacts type="array">
  <contact>
    <id type="integer">9</id>
    <client-id type="integer">11072</client-id>
    <email>Jane@Doe.com</email>
    <first-name>Jane</first-name>
    <fax></fax>
    <title nil="true"></title>
    <updated-at type="datetime">2008-04-09T12:07:56Z</updated-at>
  </contact>
</contacts>"""


def test_typed_xml_reads_harvest_contacts() -> None:
    assert typed_xml_to_python(parse_xml(HARVEST_CONTACTS)) == [
        {
            "id": 9,
            "client-id": 11072,
            "email": "Jane@Doe.com",
            "first-name": "Jane",
            "fax": None,  # empty untyped element: nil, as Rails reads it
            "title": None,
            "updated-at": datetime(2008, 4, 9, 12, 7, 56, tzinfo=UTC),
        }
    ]


def test_typed_xml_round_trip_keeps_decimals_exact_and_datetimes_utc() -> None:
    invoice = {
        "id": 42,
        "amount": Decimal("1234.56"),
        "due-amount": Decimal("0.00"),
        "paid": False,
        "issued-at": date(2024, 3, 1),
        "updated-at": datetime(2008, 4, 9, 14, 7, 56, tzinfo=timezone(timedelta(hours=2))),
        "notes": None,
        "subject": "Hosting <March> & more",
        "line-items": [{"quantity": Decimal("1.5"), "kind": "Service"}],
    }
    body = python_to_typed_xml("invoice", invoice)
    assert b'<amount type="decimal">1234.56</amount>' in body
    assert b'<updated-at type="datetime">2008-04-09T12:07:56Z</updated-at>' in body
    assert b'<notes nil="true" />' in body
    assert b'<line-items type="array"><line-item>' in body
    back = typed_xml_to_python(parse_xml(body))
    assert back == {**invoice, "updated-at": datetime(2008, 4, 9, 12, 7, 56, tzinfo=UTC)}
    assert back["amount"] == Decimal("1234.56") and str(back["amount"]) == "1234.56"
    assert back["updated-at"].tzinfo is UTC


def test_typed_xml_bad_value_is_malformed() -> None:
    with pytest.raises(MalformedResponseError, match=r"<id> is not a valid integer"):
        typed_xml_to_python(parse_xml(b'<contact><id type="integer">nine</id></contact>'))
    with pytest.raises(MalformedResponseError, match="not a valid datetime"):
        typed_xml_to_python(parse_xml(b'<c><at type="datetime">2008-04-09 12:07</at></c>'))  # no zone


# -- plain XML (ASP.NET DataContract) ----------------------------------------------------

DATACONTRACT = b"""<ArrayOfTicket xmlns:i="http://www.w3.org/2001/XMLSchema-instance"
    xmlns="http://schemas.datacontract.org/2004/07/Helpdesk.Models">
  <Ticket>
    <ClosedTime i:nil="true"/>
    <Description>Printer on fire</Description>
    <Id>1</Id>
    <Services><Service><Id>3</Id></Service></Services>
  </Ticket>
  <Ticket><ClosedTime>2024-03-01T10:00:00Z</ClosedTime><Description/><Id>2</Id></Ticket>
</ArrayOfTicket>"""


def test_xml_to_dict_reads_datacontract() -> None:
    root = parse_xml(DATACONTRACT)
    tickets = [xml_to_dict(child, force_list={"Service"}) for child in root]
    assert tickets == [
        {"ClosedTime": None, "Description": "Printer on fire", "Id": "1", "Services": {"Service": [{"Id": "3"}]}},
        {"ClosedTime": "2024-03-01T10:00:00Z", "Description": "", "Id": "2"},
    ]
    assert xml_to_dict(root)["Ticket"][1]["Id"] == "2"  # a repeated tag becomes a list


def test_dict_to_xml_round_trip_with_namespace_and_nil() -> None:
    ns = "http://schemas.datacontract.org/2004/07/Helpdesk.Models"
    body = dict_to_xml(
        "Customer",
        {"Email": "a@b.example", "Id": 7, "Mobile": None, "DoNotSendEmail": True, "Tags": {"string": ["x", "y"]}},
        namespace=ns,
    )
    assert body.startswith(b"<?xml")
    assert f'<Customer xmlns="{ns}"'.encode() in body
    assert b'<Mobile xsi:nil="true" />' in body and b"<DoNotSendEmail>true</DoNotSendEmail>" in body
    assert xml_to_dict(parse_xml(body)) == {
        "Email": "a@b.example",
        "Id": "7",
        "Mobile": None,
        "DoNotSendEmail": "true",
        "Tags": {"string": ["x", "y"]},
    }


def test_real_harvest_xml_types_datetimes_as_dateTime_and_the_codec_reads_it() -> None:
    """Real Harvest v1 XML says type="dateTime" (shared/seeds README, verified); every
    entity was a dead letter while the codec knew only "datetime"."""
    from xml.etree import ElementTree as ET

    from ferryman.http.codecs import typed_xml_to_python

    root = ET.fromstring(
        '<contact><updated-at type="dateTime">2010-04-02T01:34:59+00:00</updated-at>'
        '<created-at type="DATETIME">2008-04-09T12:07:56Z</created-at></contact>'
    )
    assert typed_xml_to_python(root) == {
        "updated-at": datetime(2010, 4, 2, 1, 34, 59, tzinfo=UTC),
        "created-at": datetime(2008, 4, 9, 12, 7, 56, tzinfo=UTC),
    }
