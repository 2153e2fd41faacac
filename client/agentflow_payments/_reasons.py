"""The catalogue of error reasons: the one list the server raises from and the SDK maps to exceptions.

Every error the service returns is a ``google.rpc.Status`` with a
``google.rpc.ErrorInfo`` in the domain :data:`ERROR_DOMAIN` whose ``reason`` is
one of :class:`Reason`. Each reason always comes with the same gRPC status code.
"""

from __future__ import annotations

import enum

import grpc

ERROR_DOMAIN = "agentflow.payments"


class Reason(enum.StrEnum):
    """Why a call failed, as carried in ``ErrorInfo.reason``. The names are a stable contract."""

    INVALID_FIELD = "INVALID_FIELD"
    INVALID_TOKEN = "INVALID_TOKEN"
    API_KEY_MISSING = "API_KEY_MISSING"
    API_KEY_INVALID = "API_KEY_INVALID"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    API_KEY_EXPIRED = "API_KEY_EXPIRED"
    SCOPE_DENIED = "SCOPE_DENIED"
    ADDRESS_NOT_ALLOWED = "ADDRESS_NOT_ALLOWED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    QUEUE_FULL = "QUEUE_FULL"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    IDEMPOTENCY_CONFLICT = "IDEMPOTENCY_CONFLICT"
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    PAYMENT_NOT_CANCELLABLE = "PAYMENT_NOT_CANCELLABLE"
    BATCH_NOT_FOUND = "BATCH_NOT_FOUND"
    ESCROW_NOT_FOUND = "ESCROW_NOT_FOUND"
    ESCROW_NOT_ACTIVE = "ESCROW_NOT_ACTIVE"
    ESCROW_INVALID_ATTESTATION = "ESCROW_INVALID_ATTESTATION"
    WEBHOOK_NOT_FOUND = "WEBHOOK_NOT_FOUND"
    WEBHOOK_DELIVERY_NOT_FOUND = "WEBHOOK_DELIVERY_NOT_FOUND"
    WEBHOOK_URL_NOT_ALLOWED = "WEBHOOK_URL_NOT_ALLOWED"
    WEBHOOK_DISABLED = "WEBHOOK_DISABLED"
    WEBHOOK_DELIVERY_SUCCEEDED = "WEBHOOK_DELIVERY_SUCCEEDED"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    SUBSCRIBER_TOO_SLOW = "SUBSCRIBER_TOO_SLOW"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    SETTLEMENT_UNAVAILABLE = "SETTLEMENT_UNAVAILABLE"
    INTERNAL = "INTERNAL"

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code that always accompanies this reason."""
        return _CATALOGUE[self][0]

    @property
    def description(self) -> str:
        """What the reason means and what a caller can do about it."""
        return _CATALOGUE[self][1]


_S = grpc.StatusCode
_CATALOGUE: dict[Reason, tuple[grpc.StatusCode, str]] = {
    Reason.INVALID_FIELD: (
        _S.INVALID_ARGUMENT,
        "A request field is missing or malformed; the BadRequest detail names each field. Fix the request.",
    ),
    Reason.INVALID_TOKEN: (
        _S.INVALID_ARGUMENT,
        "The token is not one the service accepts; see AccountService.ListTokens.",
    ),
    Reason.API_KEY_MISSING: (
        _S.UNAUTHENTICATED,
        "No `authorization: Bearer <api key>` metadata was sent.",
    ),
    Reason.API_KEY_INVALID: (_S.UNAUTHENTICATED, "The API key is not one the service issued."),
    Reason.API_KEY_REVOKED: (_S.UNAUTHENTICATED, "The API key was revoked; ask an admin for a new one."),
    Reason.API_KEY_EXPIRED: (_S.UNAUTHENTICATED, "The API key passed its expiry time; ask an admin for a new one."),
    Reason.SCOPE_DENIED: (
        _S.PERMISSION_DENIED,
        "The API key's scope does not allow this method; metadata names the scope it needs.",
    ),
    Reason.ADDRESS_NOT_ALLOWED: (
        _S.PERMISSION_DENIED,
        "The API key is not bound to the address the request acts for.",
    ),
    Reason.RATE_LIMIT_EXCEEDED: (
        _S.RESOURCE_EXHAUSTED,
        "The API key's rate limit is spent; RetryInfo says when to come back.",
    ),
    Reason.QUEUE_FULL: (
        _S.RESOURCE_EXHAUSTED,
        "The settlement queue is at its configured size; retry after the delay in RetryInfo.",
    ),
    Reason.INSUFFICIENT_BALANCE: (
        _S.FAILED_PRECONDITION,
        "The available balance does not cover amount plus fee; deposit more or pay less.",
    ),
    Reason.IDEMPOTENCY_CONFLICT: (
        _S.ALREADY_EXISTS,
        "The request_id was already used with a different request; use a new request_id.",
    ),
    Reason.PAYMENT_NOT_FOUND: (_S.NOT_FOUND, "No payment has that name (or the key may not see it)."),
    Reason.PAYMENT_NOT_CANCELLABLE: (
        _S.FAILED_PRECONDITION,
        "The payment is no longer queued: it is being settled or is final.",
    ),
    Reason.BATCH_NOT_FOUND: (_S.NOT_FOUND, "No settlement batch has that name."),
    Reason.ESCROW_NOT_FOUND: (_S.NOT_FOUND, "No escrow has that name (or the key may not see it)."),
    Reason.ESCROW_NOT_ACTIVE: (
        _S.FAILED_PRECONDITION,
        "The escrow is resolved, disputed or expired, so this step no longer applies.",
    ),
    Reason.ESCROW_INVALID_ATTESTATION: (
        _S.PERMISSION_DENIED,
        "The task result's signature is not the escrow verifier's; nothing changed.",
    ),
    Reason.WEBHOOK_NOT_FOUND: (_S.NOT_FOUND, "No webhook endpoint has that name (or the key may not see it)."),
    Reason.WEBHOOK_DELIVERY_NOT_FOUND: (_S.NOT_FOUND, "No webhook delivery has that name."),
    Reason.WEBHOOK_URL_NOT_ALLOWED: (
        _S.INVALID_ARGUMENT,
        "The webhook URL's host is (or resolves to) a loopback, private, link-local or metadata address, or "
        "does not resolve; use a public endpoint.",
    ),
    Reason.WEBHOOK_DISABLED: (
        _S.FAILED_PRECONDITION,
        "The webhook endpoint is disabled; enable it with UpdateWebhook first.",
    ),
    Reason.WEBHOOK_DELIVERY_SUCCEEDED: (
        _S.FAILED_PRECONDITION,
        "The delivery already succeeded; there is nothing to retry.",
    ),
    Reason.API_KEY_NOT_FOUND: (_S.NOT_FOUND, "No API key has that name."),
    Reason.SUBSCRIBER_TOO_SLOW: (
        _S.RESOURCE_EXHAUSTED,
        "The event stream fell too far behind; resume with start_after set to the `last_sequence` metadata.",
    ),
    Reason.NOT_IMPLEMENTED: (
        _S.UNIMPLEMENTED,
        "The method is part of the v1 contract but this server does not serve it yet.",
    ),
    Reason.SHUTTING_DOWN: (_S.UNAVAILABLE, "The server is shutting down; retry against another replica or later."),
    Reason.STORAGE_UNAVAILABLE: (
        _S.UNAVAILABLE,
        "The ledger database did not answer; nothing was changed. Retry after the delay in RetryInfo.",
    ),
    Reason.SETTLEMENT_UNAVAILABLE: (
        _S.FAILED_PRECONDITION,
        "This server does not settle on chain (an accept-only replica); ask one that does for deposit details.",
    ),
    Reason.INTERNAL: (_S.INTERNAL, "An unexpected server error; the server logged it with the method and time."),
}
