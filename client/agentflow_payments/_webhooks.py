"""Checking that a webhook came from the service, per the Standard Webhooks specification.

Each delivery carries ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: one or
more space-separated ``v1,<base64 HMAC-SHA256>`` of ``"{id}.{timestamp}.{body}"``, one per secret that is
active (while a secret is rotated, the old and the new both sign).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_TOLERANCE = 300.0
"""Seconds a delivery's timestamp may be away from now: older ones may be replays."""


class WebhookVerificationError(Exception):
    """The delivery is not the service's: a header is missing, the timestamp is too far off, or no
    signature matches."""


def _key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is whsec_ followed by base64") from None


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,...`` signature of a delivery with one secret (what the service sends; handy in tests)."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    secret: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """The delivery's JSON body, once its signature is checked; :class:`WebhookVerificationError` if not.

    ``headers`` are the request's (any case); ``body`` its raw bytes, before any parsing. ``secret`` is the
    endpoint's ``whsec_`` secret, or several while you rotate: any of them may match any signature.
    Comparisons take constant time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        webhook_id = lowered["webhook-id"]
        raw_timestamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"missing header {missing.args[0]}") from None
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a whole number of seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance:.0f} s from now")
    secrets = [secret] if isinstance(secret, str) else list(secret)
    expected = [sign_webhook(s, webhook_id, timestamp, body) for s in secrets]
    offered = [part for part in signatures.split(" ") if part.startswith("v1,")]
    if not any(hmac.compare_digest(e, o) for e in expected for o in offered):
        raise WebhookVerificationError("no signature matches the secret")
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
