"""Python SDK for AgentFlow Payments.

``AsyncClient`` talks to the service; ``agentflow_payments.v1`` holds the
generated messages and stubs; failed calls raise ``AgentflowError`` subclasses
whose ``reason`` is one of ``Reason``.
"""

from . import v1
from ._attestation import attestation_message
from ._client import DEFAULT_TIMEOUT, AsyncClient
from ._exceptions import (
    AgentflowError,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    EscrowNotActive,
    FailedPrecondition,
    FieldViolation,
    IdempotencyConflict,
    InsufficientBalance,
    InternalError,
    InvalidArgument,
    InvalidAttestation,
    InvalidToken,
    NotFound,
    PermissionDenied,
    QueueFull,
    RateLimited,
    ResourceExhausted,
    SubscriberTooSlow,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_rpc_error,
)
from ._reasons import ERROR_DOMAIN, Reason
from ._webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "AgentflowError",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "DeadlineExceeded",
    "EscrowNotActive",
    "FailedPrecondition",
    "FieldViolation",
    "IdempotencyConflict",
    "InsufficientBalance",
    "InternalError",
    "InvalidArgument",
    "InvalidAttestation",
    "InvalidToken",
    "NotFound",
    "PermissionDenied",
    "QueueFull",
    "RateLimited",
    "Reason",
    "ResourceExhausted",
    "SubscriberTooSlow",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WebhookVerificationError",
    "attestation_message",
    "from_rpc_error",
    "sign_webhook",
    "v1",
    "verify_webhook",
]
