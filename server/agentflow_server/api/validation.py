"""Checking request fields: every problem of a request is collected and named, then refused at once."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import TypeVar

from google.protobuf.message import Message

from agentflow_payments import FieldViolation, Reason

from ..addresses import parse_address
from ..amounts import parse_amount
from ..engine.model import Priority
from ..errors import ApiError
from ..tokens import Token, TokenRegistry
from .pagination import decode_token

MAX_TASK_ID = 128
MAX_MEMO = 512
MAX_REASON = 512
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 256
MAX_REQUEST_ID = 64
# Idempotency keys travel in logs and URLs: printable ASCII without spaces (a UUID fits).
_REQUEST_ID = re.compile(r"[!-~]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
E = TypeVar("E", bound=enum.IntEnum)
D = TypeVar("D")


class Fields:
    """Collects the violations of one request (or one item of a bulk request, with ``prefix``)."""

    def __init__(self, tokens: TokenRegistry, prefix: str = "") -> None:
        self._tokens = tokens
        self._prefix = prefix
        self.violations: list[FieldViolation] = []
        self._token_violation = False

    def add(self, field: str, description: str) -> None:
        """Record that ``field`` is wrong."""
        self.violations.append(FieldViolation(self._prefix + field, description))

    def address(self, field: str, value: str) -> str:
        """A required address in EIP-55 form ("" after recording a violation)."""
        try:
            return parse_address(value)
        except ValueError as error:
            self.add(field, "is required: a 0x-prefixed 20-byte hex address" if not value else str(error))
            return ""

    def optional_address(self, field: str, value: str) -> str | None:
        """An address filter: ``None`` when empty."""
        return self.address(field, value) if value else None

    def amount(self, field: str, value: str, *, allow_zero: bool = False) -> int:
        """A required positive (or, with ``allow_zero``, non-negative) amount below 2^256 (0 after
        recording a violation)."""
        try:
            return parse_amount(value, allow_zero=allow_zero)
        except ValueError as error:
            self.add(field, str(error))
            return 0

    def token(self, field: str, value: str) -> Token | None:
        """A required accepted token."""
        if not value:
            self.add(field, f"is required: one of {', '.join(t.symbol for t in self._tokens)}")
            return None
        try:
            return self._tokens.get(value, self._prefix + field)
        except ApiError as refusal:  # the registry's own INVALID_TOKEN refusal, collected with the rest
            self._token_violation = True
            self.violations.extend(refusal.field_violations)
            return None

    def text(self, field: str, value: str, limit: int, *, single_line: bool = False) -> str:
        """A bounded free-form string."""
        if len(value) > limit:
            self.add(field, f"must be at most {limit} characters")
        elif single_line and _CONTROL.search(value):
            self.add(field, "must not contain control characters")
        return value

    def request_id(self, field: str, value: str) -> str:
        """An optional idempotency key."""
        if value and not _REQUEST_ID.fullmatch(value):
            self.add(field, f"must be 1 to {MAX_REQUEST_ID} printable ASCII characters without spaces")
        return value

    def metadata(self, field: str, value: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """Bounded key/value metadata, as sorted pairs."""
        if not value:  # the common case; iterating even an empty protobuf map is not free
            return ()
        if len(value) > MAX_METADATA_ENTRIES:
            self.add(field, f"must hold at most {MAX_METADATA_ENTRIES} entries")
            return ()
        for key, item in value.items():
            if not key or len(key) > MAX_METADATA_KEY or _CONTROL.search(key):
                self.add(f"{field}[{key!r}]", f"keys must be 1 to {MAX_METADATA_KEY} characters, no control characters")
            if len(item) > MAX_METADATA_VALUE:
                self.add(f"{field}[{key!r}]", f"values must be at most {MAX_METADATA_VALUE} characters")
        return tuple(sorted(value.items()))

    def choice(self, field: str, value: int, kind: type[E], default: D, description: str) -> E | D:
        """An enum field by number: ``default`` when unset (0), a violation saying ``description`` when the
        number is not one of ``kind``'s."""
        if not value:
            return default
        try:
            return kind(value)
        except ValueError:
            self.add(field, description)
            return default

    def priority(self, field: str, value: int) -> Priority:
        """A payment's priority, normal when unset."""
        return self.choice(
            field,
            value,
            Priority,
            Priority.NORMAL,
            "must be PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH or PRIORITY_URGENT",
        )

    def id_cursor(self, request: Message, pattern: re.Pattern[str]) -> str | None:
        """The resource id ``request.page_token`` carries (pages of resources by descending id); None on
        the first page. A token this server did not issue, or issued for another request, is a violation
        of ``page_token``."""
        cursor = decode_token(request, 1)
        if cursor is None:
            return None
        if not (isinstance(cursor[0], str) and pattern.fullmatch(cursor[0])):
            self.add("page_token", "is not a token this server issued")
            return None
        return cursor[0]

    def page_size(self, value: int) -> None:
        """Refuse a negative page size."""
        if value < 0:
            self.add("page_size", "must not be negative")

    def error(self) -> ApiError | None:
        """The refusal for what was collected, if anything: INVALID_TOKEN when the token alone is wrong."""
        if not self.violations:
            return None
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        reason = Reason.INVALID_TOKEN if self._token_violation and len(self.violations) == 1 else Reason.INVALID_FIELD
        return ApiError(reason, summary, field_violations=self.violations)

    def check(self) -> None:
        """Raise the refusal, if any."""
        error = self.error()
        if error is not None:
            raise error


def resource_id(fields: Fields, field: str, name: str, collection: str, pattern: re.Pattern[str]) -> str:
    """The id of a resource name ``{collection}/{id}``."""
    prefix = f"{collection}/"
    resource = name.removeprefix(prefix)
    if not name.startswith(prefix) or not pattern.fullmatch(resource):
        fields.add(field, f"must be a resource name {collection}/{{id}}")
        return ""
    return resource
