"""Webhook signing secrets: ``whsec_`` and the base64 of 24 to 64 random bytes (Standard Webhooks)."""

from __future__ import annotations

import base64
import binascii
import secrets

PREFIX = "whsec_"
MIN_BYTES = 24
MAX_BYTES = 64


def new_secret() -> str:
    """A fresh secret of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def check_secret(value: str) -> str | None:
    """Why ``value`` cannot be a signing secret, or None when it can."""
    if not value.startswith(PREFIX):
        return f"must start with {PREFIX}"
    try:
        key = base64.b64decode(value[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"must be {PREFIX} followed by base64"
    if not MIN_BYTES <= len(key) <= MAX_BYTES:
        return f"must hold {MIN_BYTES} to {MAX_BYTES} bytes of key"
    return None
