"""Ferryman's Standard Webhooks signatures against a third-party implementation (the
``standardwebhooks`` package from PyPI), in both directions."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ferryman.records import Ticket
from ferryman.redact import redact
from ferryman.timeutil import utcnow
from ferryman.webhooks.outbox import build_event
from ferryman.webhooks.signing import VerificationError, WebhookSecret, sign, signature_header, verify

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
BODY = b'{"type":"ticket.updated","timestamp":"2026-01-01T00:00:00Z","data":{"key":"T1","subject":"caf\xc3\xa9"}}'


def headers_for(
    secrets: list[str], body: bytes, *, msg_id: str = "msg_1", at: datetime | None = None
) -> dict[str, str]:
    stamp = int((at or utcnow()).timestamp())
    keys = [WebhookSecret.parse(s) for s in secrets]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature_header(keys, msg_id, stamp, body),
    }


def test_ferryman_signatures_verify_with_the_standardwebhooks_package() -> None:
    headers = headers_for([SECRET], BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {
        "type": "ticket.updated",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"key": "T1", "subject": "café"},
    }


def test_a_real_event_body_verifies_with_the_package() -> None:
    record = Ticket(key="T7", updated_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC), subject="naïve ☃", status="open")
    event = build_event("hooks", "tickets", record, "created")
    body = event.body.encode()
    parsed = Webhook(SECRET).verify(body, headers_for([SECRET], body, msg_id=event.event_id))
    assert parsed["type"] == "ticket.created"
    assert parsed["data"]["updated_at"] == "2026-03-01T09:30:00Z"
    assert parsed["timestamp"].endswith("Z")


def test_while_rotating_both_secrets_sign_and_either_verifies() -> None:
    headers = headers_for([SECRET, OTHER], BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(SECRET).verify(BODY, headers)
    Webhook(OTHER).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(BODY, headers)


def test_ferryman_verifies_what_the_package_signs() -> None:
    now = utcnow()
    signature = Webhook(SECRET).sign("msg_abc", now, BODY.decode())
    headers = {"Webhook-Id": "msg_abc", "Webhook-Timestamp": str(int(now.timestamp())), "Webhook-Signature": signature}
    assert verify([WebhookSecret.parse(SECRET)], headers, BODY) == "msg_abc"
    # the previous secret is accepted during a rotation on the sending side
    assert verify([WebhookSecret.parse(OTHER), WebhookSecret.parse(SECRET)], headers, BODY) == "msg_abc"
    assert sign(WebhookSecret.parse(SECRET), "msg_abc", int(now.timestamp()), BODY) == signature


def _package_headers(body: bytes = BODY, at: datetime | None = None, msg_id: str = "msg_abc") -> dict[str, str]:
    at = at or utcnow()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, at, body.decode()),
    }


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("tampered body", lambda h, b: (h, b.replace(b"T1", b"T2"))),
        ("one byte more", lambda h, b: (h, b + b" ")),
        ("other id", lambda h, b: ({**h, "webhook-id": "msg_other"}, b)),
        ("other timestamp", lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 1)}, b)),
        ("stale timestamp", lambda h, b: (_package_headers(b, utcnow() - timedelta(minutes=5, seconds=5)), b)),
        ("future timestamp", lambda h, b: (_package_headers(b, utcnow() + timedelta(minutes=5, seconds=5)), b)),
        ("missing signature", lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b)),
        ("missing id", lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b)),
        ("missing timestamp", lambda h, b: ({k: v for k, v in h.items() if k != "webhook-timestamp"}, b)),
        ("timestamp not a number", lambda h, b: ({**h, "webhook-timestamp": "yesterday"}, b)),
        ("timestamp with fraction", lambda h, b: ({**h, "webhook-timestamp": h["webhook-timestamp"] + ".5"}, b)),
        ("no comma", lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace(",", "")}, b)),
        ("unknown version", lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b)),
        ("not base64", lambda h, b: ({**h, "webhook-signature": "v1,***not-base64***"}, b)),
        ("empty signature", lambda h, b: ({**h, "webhook-signature": "v1,"}, b)),
        ("truncated signature", lambda h, b: ({**h, "webhook-signature": h["webhook-signature"][:-8]}, b)),
        ("blank header", lambda h, b: ({**h, "webhook-signature": "   "}, b)),
    ],
)
def test_ferryman_refuses_what_must_not_be_trusted(
    case: str, change: Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
) -> None:
    headers, body = change(_package_headers(), BODY)
    with pytest.raises(VerificationError):
        verify([WebhookSecret.parse(SECRET)], headers, body)


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(VerificationError, match="no webhook-signature matches"):
        verify([WebhookSecret.parse(OTHER)], _package_headers(), BODY)


def test_a_valid_signature_among_garbage_still_verifies() -> None:
    headers = _package_headers()
    headers["webhook-signature"] = "v1a,AAAA v1,@@@ " + headers["webhook-signature"]
    assert verify([WebhookSecret.parse(SECRET)], headers, BODY) == "msg_abc"


def test_timestamps_just_inside_the_tolerance_are_accepted() -> None:
    for offset in (timedelta(minutes=-4, seconds=-50), timedelta(minutes=4, seconds=50)):
        assert verify([WebhookSecret.parse(SECRET)], _package_headers(at=utcnow() + offset), BODY) == "msg_abc"


@pytest.mark.parametrize("text", ["", "whsec_", "whsec_***", "whsec_" + base64.b64encode(b"short").decode()])
def test_malformed_secrets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        WebhookSecret.parse(text)


def test_secrets_parse_with_or_without_prefix_and_padding_and_are_redacted() -> None:
    raw = base64.b64encode(bytes(range(33))).decode().rstrip("=")
    assert WebhookSecret.parse(raw).key == WebhookSecret.parse("whsec_" + raw).key == bytes(range(33))
    assert "***" in repr(WebhookSecret.parse(SECRET))
    assert SECRET not in redact(f"config had {SECRET} and {SECRET[6:]}")
