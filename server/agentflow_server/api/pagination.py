"""``page_size`` and opaque ``page_token`` handling (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from google.protobuf.message import Message

from ..errors import invalid_field

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_NOT_OURS = "is not a token this server issued"
_OTHER_REQUEST = "was issued for another request: repeat the request that returned it, changing only page_size"


def page_size(value: int) -> int:
    """The page size to use: the default for 0, refused when negative, capped at the maximum."""
    if value < 0:
        raise invalid_field("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _fingerprint(request: Message) -> str:
    """What a token is bound to: the request's type and every field but ``page_size`` and ``page_token``.

    AIP-158: a page token is only valid with the request that returned it, where only the page size may
    change; a token carried over to other filters would page through a listing it was not cut from."""
    bound = type(request)()
    bound.CopyFrom(request)
    bound.ClearField("page_size")
    bound.ClearField("page_token")
    digest = hashlib.sha256(request.DESCRIPTOR.full_name.encode())
    digest.update(bound.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def encode_token(request: Message, cursor: list[Any]) -> str:
    """An opaque token for the page after ``cursor`` (a short JSON list) of the listing ``request`` asked for."""
    payload = json.dumps([_fingerprint(request), *cursor], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_token(request: Message, arity: int) -> list[Any] | None:
    """The cursor in ``request.page_token`` (from :func:`encode_token`); ``None`` for the first page.

    A token that is not ours, or that was issued for another request, is INVALID_ARGUMENT naming
    ``page_token``."""
    token: str = request.page_token  # type: ignore[attr-defined]
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid_field("page_token", _NOT_OURS) from None
    if not isinstance(decoded, list) or len(decoded) != arity + 1 or not isinstance(decoded[0], str):
        raise invalid_field("page_token", _NOT_OURS)
    if decoded[0] != _fingerprint(request):
        raise invalid_field("page_token", _OTHER_REQUEST)
    return decoded[1:]
