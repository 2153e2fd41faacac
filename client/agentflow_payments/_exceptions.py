"""Typed exceptions for the service's errors.

Every failed call raises an :class:`AgentflowError` subclass chosen by the
``ErrorInfo`` reason (``InsufficientBalance``, ``RateLimited``...) or, for a
reason this SDK does not know yet, by the gRPC status code (``NotFound``...).
The original ``grpc.aio.AioRpcError`` is kept as ``__cause__``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from ._reasons import Reason

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: its path (``"amount"``, ``"requests[3].payee"``) and what is wrong."""

    field: str
    description: str


class AgentflowError(Exception):
    """A call the service refused or could not complete.

    Attributes:
        code: the gRPC status code.
        reason: the ``ErrorInfo`` reason (a :class:`Reason` value when known, else the raw string).
        message: the status message, for people.
        metadata: the ``ErrorInfo`` metadata: details a program can act on.
        field_violations: the ``BadRequest`` field violations, for invalid input.
        retry_delay: the ``RetryInfo`` delay, where waiting helps.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: Reason | str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: datetime.timedelta | None = None,
    ) -> None:
        super().__init__(f"{code.name} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.retry_delay = retry_delay


class InvalidArgument(AgentflowError):
    """The request was malformed; ``field_violations`` says which fields."""


class InvalidToken(InvalidArgument):
    """The token is not one the service accepts."""


class Unauthenticated(AgentflowError):
    """The API key is missing, unknown, revoked or expired."""


class PermissionDenied(AgentflowError):
    """The API key may not do this: wrong scope, or an address it is not bound to."""


class InvalidAttestation(PermissionDenied):
    """The task result's signature is not the escrow verifier's."""


class ScopeDenied(PermissionDenied):
    """The API key's scope does not allow this method (a read-only key submitting, say)."""


class AddressNotAllowed(PermissionDenied):
    """The API key is not bound to the address it acts for (a payer key paying from another's address)."""


class WebhookUrlNotAllowed(InvalidArgument):
    """The webhook URL is, or resolves to, a private, loopback or otherwise non-public address."""


class NotFound(AgentflowError):
    """The named resource does not exist, or the key may not see it."""


class AlreadyExists(AgentflowError):
    """The resource already exists."""


class IdempotencyConflict(AlreadyExists):
    """The request_id was already used with a different request."""


class FailedPrecondition(AgentflowError):
    """The system is not in a state that allows this call."""


class InsufficientBalance(FailedPrecondition):
    """The available balance does not cover amount plus fee."""


class EscrowNotActive(FailedPrecondition):
    """The escrow is resolved, disputed or past its expiry, so this step no longer applies."""


class PaymentNotCancellable(FailedPrecondition):
    """The payment is processing or final; only a queued payment can be cancelled (``metadata["status"]``)."""


class WebhookDisabled(FailedPrecondition):
    """The webhook endpoint is disabled; enable it with UpdateWebhook first."""


class ResourceExhausted(AgentflowError):
    """A limit was reached; ``retry_delay`` says when to come back when the server knows."""


class RateLimited(ResourceExhausted):
    """The API key's rate limit is spent; wait ``retry_delay``."""


class QueueFull(ResourceExhausted):
    """The settlement queue is full; wait ``retry_delay``."""


class SubscriberTooSlow(ResourceExhausted):
    """An event stream fell behind; resume after ``metadata["last_sequence"]``."""


class Unimplemented(AgentflowError):
    """The method is in the contract but the server does not serve it yet."""


class Unavailable(AgentflowError):
    """The server cannot be reached or is shutting down; retrying later may work."""


class Cancelled(AgentflowError):
    """The call ended before it finished without the caller cancelling it: the server ended it, or the
    connection broke (a keepalive went unanswered). Streams resume after it by themselves."""


class DeadlineExceeded(AgentflowError):
    """The call's deadline passed before the server answered."""


class InternalError(AgentflowError):
    """An unexpected server error."""


_BY_REASON: dict[str, type[AgentflowError]] = {
    Reason.INVALID_TOKEN: InvalidToken,
    Reason.ESCROW_INVALID_ATTESTATION: InvalidAttestation,
    Reason.IDEMPOTENCY_CONFLICT: IdempotencyConflict,
    Reason.INSUFFICIENT_BALANCE: InsufficientBalance,
    Reason.ESCROW_NOT_ACTIVE: EscrowNotActive,
    Reason.PAYMENT_NOT_CANCELLABLE: PaymentNotCancellable,
    Reason.SCOPE_DENIED: ScopeDenied,
    Reason.ADDRESS_NOT_ALLOWED: AddressNotAllowed,
    Reason.WEBHOOK_URL_NOT_ALLOWED: WebhookUrlNotAllowed,
    Reason.WEBHOOK_DISABLED: WebhookDisabled,
    Reason.RATE_LIMIT_EXCEEDED: RateLimited,
    Reason.QUEUE_FULL: QueueFull,
    Reason.SUBSCRIBER_TOO_SLOW: SubscriberTooSlow,
}

_BY_CODE: dict[grpc.StatusCode, type[AgentflowError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def _reason(raw: str) -> Reason | str:
    try:
        return Reason(raw)
    except ValueError:
        return raw


def from_rpc_error(error: grpc.aio.AioRpcError) -> AgentflowError:
    """Turn a failed call into the matching :class:`AgentflowError`, reading its rich status details."""
    code = error.code()
    message = error.details() or ""
    reason: Reason | str = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: datetime.timedelta | None = None
    trailing: Any = error.trailing_metadata() or ()
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        message = status.message or message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = _reason(info.reason)
                metadata = dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta()
    return _error(code, reason, message, metadata, violations, retry_delay)


def from_item_error(item: Any) -> AgentflowError:
    """The :class:`AgentflowError` for one refused item of a batch call (a ``v1.common_pb2.ItemError``)."""
    code = _CODES.get(item.code, grpc.StatusCode.UNKNOWN)
    violations = [FieldViolation(v.field, v.description) for v in item.field_violations]
    return _error(code, _reason(item.reason), item.message, dict(item.metadata), violations, None)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _error(
    code: grpc.StatusCode,
    reason: Reason | str,
    message: str,
    metadata: Mapping[str, str],
    violations: Sequence[FieldViolation],
    retry_delay: datetime.timedelta | None,
) -> AgentflowError:
    cls = _BY_REASON.get(reason) or _BY_CODE.get(code, InternalError)
    return cls(
        code,
        reason or code.name,
        message,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry_delay,
    )
