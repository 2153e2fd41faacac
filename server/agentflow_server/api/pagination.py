"""``page_size`` and opaque ``page_token`` handling (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import invalid_field

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(value: int) -> int:
    """The page size to use: the default for 0, refused when negative, capped at the maximum."""
    if value < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(cursor: list[Any]) -> str:
    """An opaque token for a cursor (a short JSON list)."""
    return base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode()


def decode_token(token: str, arity: int) -> list[Any] | None:
    """The cursor of a token from :func:`encode_token`; ``None`` for the first page."""
    if not token:
        return None
    try:
        cursor = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_field("page_token", "is not a token this server issued") from None
    if not isinstance(cursor, list) or len(cursor) != arity:
        raise invalid_field("page_token", "is not a token this server issued")
    return cursor
