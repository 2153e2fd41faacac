"""WebhookService: in the v1 contract; each method answers UNIMPLEMENTED until its feature lands."""

from __future__ import annotations

from agentflow_payments.v1 import webhooks_pb2, webhooks_pb2_grpc

from .context import Context
from .unimplemented import not_served


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    """Serves WebhookService."""

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        raise not_served("WebhookService.CreateWebhook", "webhooks")

    async def GetWebhook(
        self, request: webhooks_pb2.GetWebhookRequest, context: Context
    ) -> webhooks_pb2.GetWebhookResponse:
        raise not_served("WebhookService.GetWebhook", "webhooks")

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Context
    ) -> webhooks_pb2.ListWebhooksResponse:
        raise not_served("WebhookService.ListWebhooks", "webhooks")

    async def UpdateWebhook(
        self, request: webhooks_pb2.UpdateWebhookRequest, context: Context
    ) -> webhooks_pb2.UpdateWebhookResponse:
        raise not_served("WebhookService.UpdateWebhook", "webhooks")

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookResponse:
        raise not_served("WebhookService.DeleteWebhook", "webhooks")

    async def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: Context
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        raise not_served("WebhookService.RotateWebhookSecret", "webhooks")

    async def TestWebhook(
        self, request: webhooks_pb2.TestWebhookRequest, context: Context
    ) -> webhooks_pb2.TestWebhookResponse:
        raise not_served("WebhookService.TestWebhook", "webhooks")

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        raise not_served("WebhookService.ListWebhookDeliveries", "webhooks")

    async def RetryWebhookDelivery(
        self, request: webhooks_pb2.RetryWebhookDeliveryRequest, context: Context
    ) -> webhooks_pb2.RetryWebhookDeliveryResponse:
        raise not_served("WebhookService.RetryWebhookDelivery", "webhooks")
