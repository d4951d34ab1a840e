"""Standard Webhooks 1.0.0 signatures, both directions.

A message is signed as ``HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")``
over the exact body bytes, and the ``webhook-signature`` header carries
``v1,<base64 signature>``; several space-separated signatures are allowed, which is
how a secret is rotated (sign with the new and the previous secret for a while).

Secrets are ``whsec_`` followed by base64 of random bytes: the spec recommends 24 to
64; fewer than 16 are refused as too weak, more than 64 are accepted, since an intake
must take whatever secret the sending app issued. Verification
compares in constant time (:func:`hmac.compare_digest`) and refuses a timestamp more
than five minutes away from now, in either direction, so a captured request cannot be
replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from ferryman.redact import register_secret
from ferryman.timeutil import utcnow

__all__ = [
    "SECRET_PREFIX",
    "TOLERANCE_SECONDS",
    "VerificationError",
    "WebhookSecret",
    "sign",
    "signature_header",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
TOLERANCE_SECONDS = 5 * 60
MIN_KEY_BYTES = 16
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")


class VerificationError(ValueError):
    """A message that must not be trusted: missing or bad signature, stale timestamp."""


@dataclass(frozen=True, slots=True)
class WebhookSecret:
    """A decoded signing key. ``repr`` never shows it."""

    key: bytes

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """``whsec_<base64>`` (the prefix is optional) to a key; raises ValueError when malformed."""
        raw = text.strip()
        if raw.startswith(SECRET_PREFIX):
            raw = raw[len(SECRET_PREFIX) :]
        if not raw:
            raise ValueError("empty webhook secret (expected whsec_ and base64)")
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not a webhook secret: expected whsec_ followed by base64") from None
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(
                f"a webhook secret must decode to at least {MIN_KEY_BYTES} bytes (24-64 recommended), "
                f"this one has {len(key)}"
            )
        # the base64 part alone is as secret as the whole value
        register_secret(text.strip())
        register_secret(raw)
        return cls(key)

    def __repr__(self) -> str:
        return "WebhookSecret(***)"


def sign(secret: WebhookSecret, msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, of ``body`` sent as message ``msg_id`` at ``timestamp``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_header(secrets: Sequence[WebhookSecret], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    if not secrets:
        raise ValueError("no webhook secret to sign with")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def verify(
    secrets: Sequence[WebhookSecret],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> str:
    """Check a received message; return its ``webhook-id`` or raise :class:`VerificationError`.

    ``headers`` may use any case. ``body`` must be the raw bytes as received: a body
    parsed and re-serialised would not verify.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id", "").strip()
    stamp = lower.get("webhook-timestamp", "").strip()
    header = lower.get("webhook-signature", "").strip()
    if not (msg_id and stamp and header):
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not _TIMESTAMP.match(stamp):
        raise VerificationError("webhook-timestamp is not Unix seconds")
    timestamp = int(stamp)
    current = (now or utcnow()).timestamp()
    if timestamp < current - tolerance:
        raise VerificationError("webhook-timestamp is too old")
    if timestamp > current + tolerance:
        raise VerificationError("webhook-timestamp is in the future")
    offered: list[bytes] = []
    for part in header.split(" "):
        version, sep, encoded = part.partition(",")
        if not sep or version != "v1":
            continue  # other schemes (v1a, future versions) are not ours to check
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not offered:
        raise VerificationError("webhook-signature holds no v1 signature")
    matched = False
    for secret in secrets:
        expected = base64.b64decode(sign(secret, msg_id, timestamp, body)[3:])
        for candidate in offered:
            # no early exit: the time taken does not depend on which signature matched
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise VerificationError("no webhook-signature matches")
    return msg_id
