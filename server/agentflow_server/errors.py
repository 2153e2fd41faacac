"""The server's one error type. Domain code raises :class:`ApiError`; the API layer turns it into a gRPC status."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from agentflow_payments import FieldViolation, Reason


class ApiError(Exception):
    """A refusal with a catalogued reason; its gRPC code is the reason's.

    Args:
        reason: one of the catalogue's reasons.
        message: for people; never contains secrets.
        metadata: ``ErrorInfo`` metadata, details a program can act on.
        field_violations: the fields at fault, for invalid input.
        retry_delay: when to come back, where waiting helps (``RetryInfo``).
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: datetime.timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_delay = retry_delay


def invalid_field(field: str, description: str) -> ApiError:
    """An INVALID_ARGUMENT error naming one field."""
    return ApiError(
        Reason.INVALID_FIELD,
        f"{field}: {description}",
        field_violations=[FieldViolation(field, description)],
    )


def invalid_fields(violations: Sequence[FieldViolation]) -> ApiError:
    """An INVALID_ARGUMENT error naming every field at fault."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return ApiError(Reason.INVALID_FIELD, summary, field_violations=violations)


def payment_not_found(name: str) -> ApiError:
    """NOT_FOUND for a payment that does not exist, or that the caller may not see (so ids are not probed)."""
    return ApiError(Reason.PAYMENT_NOT_FOUND, f"no payment {name}", metadata={"name": name})


def webhook_not_found(webhook_id: str) -> ApiError:
    """NOT_FOUND for an endpoint that does not exist, or that the caller's key does not own."""
    name = f"webhooks/{webhook_id}"
    return ApiError(Reason.WEBHOOK_NOT_FOUND, f"no webhook {name}", metadata={"name": name})
