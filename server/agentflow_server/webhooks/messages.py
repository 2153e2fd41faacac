"""The v1 message form of endpoints, deliveries and attempts."""

from __future__ import annotations

from agentflow_payments.v1 import webhooks_pb2

from ..wire import timestamp
from .model import Attempt, Delivery, Endpoint


def webhook_message(endpoint: Endpoint, now_us: int) -> webhooks_pb2.Webhook:
    """An endpoint as the API shows it: never its secrets, only their prefixes."""
    return webhooks_pb2.Webhook(
        name=endpoint.name,
        url=endpoint.url,
        event_types=endpoint.event_types,
        description=endpoint.description,
        state=int(endpoint.state),  # type: ignore[arg-type]
        disabled_reason=endpoint.disabled_reason,
        secret_prefixes=[s.prefix for s in endpoint.active_secrets(now_us)],
        create_time=timestamp(endpoint.create_time_us),
        update_time=timestamp(endpoint.update_time_us),
    )


def attempt_message(attempt: Attempt) -> webhooks_pb2.WebhookAttempt:
    """One HTTP attempt as the API shows it."""
    message = webhooks_pb2.WebhookAttempt(
        http_status=attempt.http_status,
        response_body_excerpt=attempt.body_excerpt,
        error=attempt.error,
        success=attempt.success,
        attempt_time=timestamp(attempt.attempt_time_us),
    )
    message.duration.FromMicroseconds(attempt.duration_us)
    return message


def delivery_message(delivery: Delivery) -> webhooks_pb2.WebhookDelivery:
    """A delivery as the API shows it."""
    message = webhooks_pb2.WebhookDelivery(
        name=delivery.name,
        event_sequence=delivery.event_sequence,
        event_type=delivery.event_type,
        status=int(delivery.status),  # type: ignore[arg-type]
        attempt_count=delivery.attempt_count,
        create_time=timestamp(delivery.create_time_us),
    )
    if delivery.next_attempt_time_us is not None:
        message.next_attempt_time.CopyFrom(timestamp(delivery.next_attempt_time_us))
    if delivery.last_attempt is not None:
        message.last_attempt.CopyFrom(attempt_message(delivery.last_attempt))
    if delivery.complete_time_us is not None:
        message.complete_time.CopyFrom(timestamp(delivery.complete_time_us))
    return message
