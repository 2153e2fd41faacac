"""Python SDK for AgentFlow Payments.

``AsyncClient`` (for asyncio) and ``Client`` (blocking) talk to the service
with one typed method per RPC; ``agentflow_payments.v1`` holds the generated
messages and stubs; failed calls raise ``AgentflowError`` subclasses whose
``reason`` is one of ``Reason``; ``verify_webhook`` checks a delivery.
"""

from . import v1
from ._attestation import attestation_message
from ._client import DEFAULT_TIMEOUT, AsyncClient
from ._convert import Page
from ._exceptions import (
    AddressNotAllowed,
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
    PaymentNotCancellable,
    PermissionDenied,
    QueueFull,
    RateLimited,
    ResourceExhausted,
    ScopeDenied,
    SubscriberTooSlow,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    WebhookDisabled,
    WebhookUrlNotAllowed,
    from_rpc_error,
)
from ._reasons import ERROR_DOMAIN, Reason
from ._retry import RetryConfig
from ._sync import Client
from ._webhooks import WebhookVerificationError, sign_webhook, verify_webhook

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "ERROR_DOMAIN",
    "AddressNotAllowed",
    "AgentflowError",
    "AlreadyExists",
    "AsyncClient",
    "Cancelled",
    "Client",
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
    "Page",
    "PaymentNotCancellable",
    "PermissionDenied",
    "QueueFull",
    "RateLimited",
    "Reason",
    "ResourceExhausted",
    "RetryConfig",
    "ScopeDenied",
    "SubscriberTooSlow",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "WebhookDisabled",
    "WebhookUrlNotAllowed",
    "WebhookVerificationError",
    "attestation_message",
    "from_rpc_error",
    "sign_webhook",
    "v1",
    "verify_webhook",
]
