"""WebhookService: checks each request and the caller's hold on the endpoint, then hands it to the dispatcher.

An endpoint belongs to the API key that registered it: other keys get WEBHOOK_NOT_FOUND (ids are not
probed), except admin keys, which see and manage every endpoint. Deliveries carry only the events the
owner's key may see.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re

from agentflow_payments.v1 import webhooks_pb2, webhooks_pb2_grpc

from ..auth import current_principal
from ..clock import Clock
from ..errors import invalid_field, webhook_not_found
from ..events.filter import EVENT_TYPES
from ..ledger.webhooks import WebhookReader
from ..tokens import TokenRegistry
from ..webhooks.dispatcher import EndpointChanges, WebhookDispatcher
from ..webhooks.messages import attempt_message, delivery_message, webhook_message
from ..webhooks.model import DeliveryStatus, Endpoint, EndpointState
from ..webhooks.secrets import check_secret
from ..webhooks.urls import check_url
from ..wire import timestamp
from . import pagination
from .context import Context
from .events import event_type_patterns
from .validation import Fields, resource_id

audit = logging.getLogger("agentflow.audit")

_WEBHOOK_ID = re.compile(r"[0-9a-f]{22}")
_DELIVERY_ID = re.compile(r"msg_[0-9a-f]{26}")
_DELIVERY_NAME = re.compile(r"webhooks/([0-9a-f]{22})/deliveries/(msg_[0-9a-f]{26})")
_MAX_DESCRIPTION = 256
_DEFAULT_GRACE = datetime.timedelta(hours=24)
_MAX_GRACE = datetime.timedelta(days=7)
_UPDATABLE = ("url", "event_types", "description", "state")
TEST_EVENT_TYPE = "webhook.test"


def _url(fields: Fields, field: str, url: str) -> str:
    problem = check_url(url)
    if problem is not None:
        fields.add(field, problem)
    return url


def _request_hash(*parts: str) -> str:
    return hashlib.sha256("".join(f"{len(p)}:{p}" for p in parts).encode()).hexdigest()


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    """Serves WebhookService."""

    def __init__(
        self, dispatcher: WebhookDispatcher, reader: WebhookReader, tokens: TokenRegistry, clock: Clock
    ) -> None:
        self._dispatcher = dispatcher
        self._reader = reader
        self._tokens = tokens
        self._clock = clock

    def _fields(self) -> Fields:
        return Fields(self._tokens)

    def _owned(self, fields: Fields, field: str, name: str) -> Endpoint:
        """The endpoint a request names, if the caller's key may manage it."""
        webhook_id = resource_id(fields, field, name, "webhooks", _WEBHOOK_ID)
        fields.check()
        return self._visible(webhook_id)

    def _visible(self, webhook_id: str) -> Endpoint:
        principal = current_principal()
        endpoint = self._dispatcher.endpoint(webhook_id)
        if endpoint is None or not (principal.is_admin or endpoint.owner_key_id == principal.key_id):
            raise webhook_not_found(webhook_id)
        return endpoint

    def _message(self, endpoint: Endpoint) -> webhooks_pb2.Webhook:
        return webhook_message(endpoint, self._clock.now_us())

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        fields = self._fields()
        url = _url(fields, "url", request.url)
        event_types = event_type_patterns(fields, "event_types", request.event_types)
        if request.secret:
            problem = check_secret(request.secret)
            if problem is not None:
                fields.add("secret", problem)
        description = fields.text("description", request.description, _MAX_DESCRIPTION, single_line=True)
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        await self._dispatcher.check_url(url, "url")
        principal = current_principal()
        endpoint, secret = await self._dispatcher.create(
            owner_key_id=principal.key_id,
            url=url,
            event_types=event_types,
            secret=request.secret,
            description=description,
            request_id=request_id,
            request_hash=_request_hash(url, request.secret, description, *event_types),
        )
        audit.info(
            "webhook created",
            extra={"event": "webhook.created", "actor": principal.key_id, "webhook": endpoint.name},
        )
        return webhooks_pb2.CreateWebhookResponse(webhook=self._message(endpoint), secret=secret)

    async def GetWebhook(
        self, request: webhooks_pb2.GetWebhookRequest, context: Context
    ) -> webhooks_pb2.GetWebhookResponse:
        return webhooks_pb2.GetWebhookResponse(webhook=self._message(self._owned(self._fields(), "name", request.name)))

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Context
    ) -> webhooks_pb2.ListWebhooksResponse:
        fields = self._fields()
        fields.page_size(request.page_size)
        before = fields.id_cursor(request, _WEBHOOK_ID)
        fields.check()
        size = pagination.page_size(request.page_size)
        principal = current_principal()
        mine = [
            e
            for e in self._dispatcher.endpoints()
            if (principal.is_admin or e.owner_key_id == principal.key_id) and (before is None or e.webhook_id < before)
        ]
        response = webhooks_pb2.ListWebhooksResponse(webhooks=[self._message(e) for e in mine[:size]])
        if len(mine) > size:
            response.next_page_token = pagination.encode_token(request, [mine[size - 1].webhook_id])
        return response

    async def UpdateWebhook(
        self, request: webhooks_pb2.UpdateWebhookRequest, context: Context
    ) -> webhooks_pb2.UpdateWebhookResponse:
        fields = self._fields()
        webhook = request.webhook
        webhook_id = resource_id(fields, "webhook.name", webhook.name, "webhooks", _WEBHOOK_ID)
        paths = list(request.update_mask.paths)
        if not paths:
            fields.add("update_mask", f"is required: any of {', '.join(_UPDATABLE)}")
        for index, path in enumerate(paths):
            if path not in _UPDATABLE:
                fields.add(f"update_mask.paths[{index}]", f"must be one of {', '.join(_UPDATABLE)}")
        url = event_types = description = state = None
        if "url" in paths:
            url = _url(fields, "webhook.url", webhook.url)
        if "event_types" in paths:
            event_types = event_type_patterns(fields, "webhook.event_types", webhook.event_types)
        if "description" in paths:
            description = fields.text("webhook.description", webhook.description, _MAX_DESCRIPTION, single_line=True)
        if "state" in paths:
            if webhook.state not in (int(EndpointState.ENABLED), int(EndpointState.DISABLED)):
                fields.add("webhook.state", "must be WEBHOOK_STATE_ENABLED or WEBHOOK_STATE_DISABLED")
            else:
                state = EndpointState(webhook.state)
        fields.check()
        self._visible(webhook_id)
        if url is not None:
            await self._dispatcher.check_url(url, "webhook.url")
        endpoint = await self._dispatcher.update(
            webhook_id, EndpointChanges(url=url, event_types=event_types, description=description, state=state)
        )
        audit.info(
            "webhook updated",
            extra={
                "event": "webhook.updated",
                "actor": current_principal().key_id,
                "webhook": endpoint.name,
                "fields": ",".join(paths),
            },
        )
        return webhooks_pb2.UpdateWebhookResponse(webhook=self._message(endpoint))

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookResponse:
        endpoint = self._owned(self._fields(), "name", request.name)
        await self._dispatcher.delete(endpoint.webhook_id)
        audit.info(
            "webhook deleted",
            extra={"event": "webhook.deleted", "actor": current_principal().key_id, "webhook": endpoint.name},
        )
        return webhooks_pb2.DeleteWebhookResponse()

    async def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: Context
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        fields = self._fields()
        webhook_id = resource_id(fields, "name", request.name, "webhooks", _WEBHOOK_ID)
        if request.secret:
            problem = check_secret(request.secret)
            if problem is not None:
                fields.add("secret", problem)
        grace = _DEFAULT_GRACE
        if request.HasField("grace_period"):
            grace = request.grace_period.ToTimedelta()
            if not (datetime.timedelta(0) <= grace <= _MAX_GRACE) or request.grace_period.nanos < 0:
                fields.add("grace_period", "must be between 0 and 7 days")
        fields.check()
        self._visible(webhook_id)
        endpoint, secret, expire_us = await self._dispatcher.rotate(
            webhook_id, request.secret, grace // datetime.timedelta(microseconds=1)
        )
        audit.info(
            "webhook secret rotated",
            extra={"event": "webhook.secret_rotated", "actor": current_principal().key_id, "webhook": endpoint.name},
        )
        return webhooks_pb2.RotateWebhookSecretResponse(
            webhook=self._message(endpoint), secret=secret, previous_secret_expire_time=timestamp(expire_us)
        )

    async def TestWebhook(
        self, request: webhooks_pb2.TestWebhookRequest, context: Context
    ) -> webhooks_pb2.TestWebhookResponse:
        fields = self._fields()
        webhook_id = resource_id(fields, "name", request.name, "webhooks", _WEBHOOK_ID)
        event_type = request.event_type or TEST_EVENT_TYPE
        if event_type != TEST_EVENT_TYPE and event_type not in EVENT_TYPES:
            fields.add("event_type", f"must be {TEST_EVENT_TYPE} or an event type such as payment.completed")
        fields.check()
        self._visible(webhook_id)
        attempt = await self._dispatcher.test(webhook_id, event_type)
        return webhooks_pb2.TestWebhookResponse(attempt=attempt_message(attempt))

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        fields = self._fields()
        webhook_id = resource_id(fields, "parent", request.parent, "webhooks", _WEBHOOK_ID)
        status = fields.choice("status", request.status, DeliveryStatus, None, "is not a WebhookDeliveryStatus")
        fields.page_size(request.page_size)
        before = fields.id_cursor(request, _DELIVERY_ID)
        fields.check()
        self._visible(webhook_id)
        size = pagination.page_size(request.page_size)
        found = await self._reader.deliveries(webhook_id, status, size + 1, before)
        response = webhooks_pb2.ListWebhookDeliveriesResponse(deliveries=[delivery_message(d) for d in found[:size]])
        if len(found) > size:
            response.next_page_token = pagination.encode_token(request, [found[size - 1].delivery_id])
        return response

    async def RetryWebhookDelivery(
        self, request: webhooks_pb2.RetryWebhookDeliveryRequest, context: Context
    ) -> webhooks_pb2.RetryWebhookDeliveryResponse:
        match = _DELIVERY_NAME.fullmatch(request.name)
        if match is None:
            raise invalid_field("name", "must be a delivery name webhooks/{webhook_id}/deliveries/{delivery_id}")
        webhook_id, delivery_id = match.groups()
        self._visible(webhook_id)
        delivery = await self._dispatcher.retry(webhook_id, delivery_id)
        audit.info(
            "webhook delivery retried",
            extra={"event": "webhook.delivery_retried", "actor": current_principal().key_id, "delivery": delivery.name},
        )
        return webhooks_pb2.RetryWebhookDeliveryResponse(delivery=delivery_message(delivery))
