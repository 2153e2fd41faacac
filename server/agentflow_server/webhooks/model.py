"""Webhook endpoints and deliveries as the service holds them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EndpointState(enum.IntEnum):
    """Whether an endpoint receives deliveries (``WebhookState`` in the API)."""

    ENABLED = 1
    DISABLED = 2
    DISABLED_BY_FAILURE = 3


class DeliveryStatus(enum.IntEnum):
    """Where a delivery is (``WebhookDeliveryStatus`` in the API)."""

    PENDING = 1
    SUCCEEDED = 2
    FAILED = 3


@dataclass(frozen=True, slots=True)
class SigningSecret:
    """A ``whsec_`` secret; ``expire_time_us`` is set on the previous one while a rotation's grace lasts."""

    secret: str
    expire_time_us: int | None = None

    @property
    def prefix(self) -> str:
        """Enough of the secret to tell it apart from another, too little to sign with."""
        return self.secret[:10]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered HTTP endpoint. Replaced whole on every change (see :class:`WebhookRegistry`)."""

    webhook_id: str
    owner_key_id: str
    url: str
    event_types: tuple[str, ...]
    description: str
    state: EndpointState
    disabled_reason: str
    secrets: tuple[SigningSecret, ...]
    # The last event sequence considered for this endpoint: deliveries exist for the matching events up to it.
    cursor: int
    # When the current run of failed attempts began; None after a success.
    failing_since_us: int | None
    request_id: str
    request_hash: str
    create_time_us: int
    update_time_us: int

    @property
    def name(self) -> str:
        """The resource name, ``webhooks/{webhook_id}``."""
        return f"webhooks/{self.webhook_id}"

    def active_secrets(self, now_us: int) -> list[SigningSecret]:
        """The secrets that sign a delivery made now: the current one, and the previous during its grace."""
        return [s for s in self.secrets if s.expire_time_us is None or s.expire_time_us > now_us]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt. ``retry_after`` is the endpoint's Retry-After, in seconds, when it sent one."""

    http_status: int
    duration_us: int
    body_excerpt: str
    error: str
    success: bool
    attempt_time_us: int
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """The delivery of one event to one endpoint. ``delivery_id`` is the ``webhook-id`` header."""

    delivery_id: str
    webhook_id: str
    event_sequence: int
    event_type: str
    status: DeliveryStatus
    attempt_count: int
    # Attempts allowed in all: the first and the configured retries, one more for each manual retry.
    attempt_limit: int
    next_attempt_time_us: int | None
    last_attempt: Attempt | None
    create_time_us: int
    complete_time_us: int | None

    @property
    def name(self) -> str:
        """The resource name, ``webhooks/{webhook_id}/deliveries/{delivery_id}``."""
        return f"webhooks/{self.webhook_id}/deliveries/{self.delivery_id}"
