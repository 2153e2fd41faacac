"""AdminService: API keys, and the operating figures of GetMetrics."""

from __future__ import annotations

import logging
import time

from google.protobuf import duration_pb2

from agentflow_payments import FieldViolation
from agentflow_payments.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from ..activity import MAX_WINDOW_SECONDS
from ..addresses import parse_address
from ..auth import ApiKeyRegistry, Scope, current_principal
from ..engine.engine import Engine
from ..engine.model import EscrowStatus
from ..errors import invalid_fields
from ..ledger.api_keys import ApiKeyRecord
from ..ledger.escrows import EscrowReader
from ..metrics import Metrics
from ..wire import timestamp
from . import pagination
from .context import Context

audit = logging.getLogger("agentflow.audit")

_SCOPES = {
    admin_pb2.API_KEY_SCOPE_ADMIN: Scope.ADMIN,
    admin_pb2.API_KEY_SCOPE_PAYER: Scope.PAYER,
    admin_pb2.API_KEY_SCOPE_ARBITER: Scope.ARBITER,
    admin_pb2.API_KEY_SCOPE_READ_ONLY: Scope.READ_ONLY,
}
_SCOPE_ENUMS = {scope: value for value, scope in _SCOPES.items()}
_KEY_NAME_PREFIX = "apiKeys/"
MAX_KEY_ADDRESSES = 100
MAX_DISPLAY_NAME = 128
# Generous ceilings that still catch a unit mistake (per second for per minute).
MAX_REQUESTS_PER_MINUTE = 6_000_000
MAX_BURST = 1_000_000


def api_key_message(record: ApiKeyRecord) -> admin_pb2.ApiKey:
    """The API's view of a stored key: never its hash."""
    message = admin_pb2.ApiKey(
        name=_KEY_NAME_PREFIX + record.key_id,
        display_name=record.display_name,
        scope=_SCOPE_ENUMS[Scope(record.scope)],
        addresses=record.addresses,
        rate_limit=admin_pb2.RateLimit(requests_per_minute=record.requests_per_minute, burst=record.burst),
        key_prefix=record.key_prefix,
        create_time=timestamp(record.create_time_us),
    )
    if record.revoke_time_us is not None:
        message.revoke_time.CopyFrom(timestamp(record.revoke_time_us))
    if record.expire_time_us is not None:
        message.expire_time.CopyFrom(timestamp(record.expire_time_us))
    return message


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Serves AdminService. Only admin keys get here (see api.policy)."""

    def __init__(
        self,
        registry: ApiKeyRegistry,
        default_rate_limit: tuple[int, int],
        engine: Engine,
        metrics: Metrics,
        escrows: EscrowReader,
    ) -> None:
        self._registry = registry
        self._default_rate_limit = default_rate_limit
        self._engine = engine
        self._metrics = metrics
        self._escrows = escrows

    async def CreateApiKey(
        self, request: admin_pb2.CreateApiKeyRequest, context: Context
    ) -> admin_pb2.CreateApiKeyResponse:
        violations: list[FieldViolation] = []
        scope = _SCOPES.get(request.scope)
        if scope is None:
            violations.append(FieldViolation("scope", "is required: ADMIN, PAYER, ARBITER or READ_ONLY"))
        if len(request.display_name) > MAX_DISPLAY_NAME:
            violations.append(FieldViolation("display_name", f"must be at most {MAX_DISPLAY_NAME} characters"))
        addresses: list[str] = []
        if len(request.addresses) > MAX_KEY_ADDRESSES:
            violations.append(FieldViolation("addresses", f"must hold at most {MAX_KEY_ADDRESSES} addresses"))
        else:
            for i, raw in enumerate(request.addresses):
                try:
                    address = parse_address(raw)
                except ValueError as error:
                    violations.append(FieldViolation(f"addresses[{i}]", str(error)))
                    continue
                if address not in addresses:
                    addresses.append(address)
        if scope is Scope.ADMIN and request.addresses:
            violations.append(FieldViolation("addresses", "must be empty for an admin key, which acts for all"))
        if scope in (Scope.PAYER, Scope.ARBITER) and not request.addresses:
            violations.append(FieldViolation("addresses", f"a {scope.value} key must be bound to an address"))
        requests_per_minute, burst = self._default_rate_limit
        if request.HasField("rate_limit"):
            requests_per_minute, burst = request.rate_limit.requests_per_minute, request.rate_limit.burst
            if not 1 <= requests_per_minute <= MAX_REQUESTS_PER_MINUTE:
                violations.append(
                    FieldViolation("rate_limit.requests_per_minute", f"must be 1 to {MAX_REQUESTS_PER_MINUTE}")
                )
            if not 1 <= burst <= MAX_BURST:
                violations.append(FieldViolation("rate_limit.burst", f"must be 1 to {MAX_BURST}"))
        expire_time_us: int | None = None
        if request.HasField("expire_time"):
            expire_time_us = request.expire_time.ToMicroseconds()
            if expire_time_us <= time.time_ns() // 1000:
                violations.append(FieldViolation("expire_time", "must be in the future"))
        if violations:
            raise invalid_fields(violations)
        assert scope is not None
        created = await self._registry.create(
            display_name=request.display_name,
            scope=scope,
            addresses=tuple(addresses),
            requests_per_minute=requests_per_minute,
            burst=burst,
            expire_time_us=expire_time_us,
        )
        audit.info(
            "api key created",
            extra={
                "event": "api_key.created",
                "actor": current_principal().key_id,
                "key": created.record.key_id,
                "scope": scope.value,
                "addresses": addresses,
            },
        )
        return admin_pb2.CreateApiKeyResponse(api_key=api_key_message(created.record), secret=created.secret)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: Context
    ) -> admin_pb2.ListApiKeysResponse:
        size = pagination.page_size(request.page_size)
        cursor = pagination.decode_token(request, 2)
        before = None
        if cursor is not None:
            if not isinstance(cursor[0], int) or not isinstance(cursor[1], str):
                raise invalid_fields([FieldViolation("page_token", "is not a token this server issued")])
            before = (cursor[0], cursor[1])
        # One extra row tells whether another page follows.
        records = await self._registry.page(include_revoked=request.show_revoked, limit=size + 1, before=before)
        response = admin_pb2.ListApiKeysResponse(api_keys=[api_key_message(r) for r in records[:size]])
        if len(records) > size:
            last = records[size - 1]
            response.next_page_token = pagination.encode_token(request, [last.create_time_us, last.key_id])
        return response

    async def RevokeApiKey(
        self, request: admin_pb2.RevokeApiKeyRequest, context: Context
    ) -> admin_pb2.RevokeApiKeyResponse:
        key_id = request.name.removeprefix(_KEY_NAME_PREFIX)
        if not request.name.startswith(_KEY_NAME_PREFIX) or not key_id:
            raise invalid_fields([FieldViolation("name", "must be an API key name, apiKeys/{key_id}")])
        record = await self._registry.revoke(key_id)
        audit.info(
            "api key revoked",
            extra={"event": "api_key.revoked", "actor": current_principal().key_id, "key": key_id},
        )
        return admin_pb2.RevokeApiKeyResponse(api_key=api_key_message(record))

    async def GetMetrics(self, request: admin_pb2.GetMetricsRequest, context: Context) -> admin_pb2.GetMetricsResponse:
        seconds = 60.0
        if request.HasField("window"):
            window = request.window
            seconds = window.seconds + window.nanos / 1e9
            if not (0 < seconds <= MAX_WINDOW_SECONDS) or window.nanos < 0:
                raise invalid_fields([FieldViolation("window", f"must be positive and at most {MAX_WINDOW_SECONDS} s")])
        recent = self._metrics.activity.window(seconds)
        finished = recent.completed + recent.failed
        payments = admin_pb2.PaymentMetrics(
            payments_per_second=recent.accepted / seconds,
            mean_response_ms=recent.mean_response_seconds * 1000,
            p99_response_ms=recent.p99_response_seconds * 1000,
            queue_depth=sum(len(queue) for queue in self._engine.queues.values()),
            success_rate=recent.completed / finished if finished else 1.0,
            accepted=recent.accepted,
            completed=recent.completed,
            failed=recent.failed,
            volume=[common_pb2.TokenAmount(token=t, amount=str(a)) for t, a in sorted(recent.volume.items())],
        )
        figures = await self._escrows.figures()
        escrows = admin_pb2.EscrowMetrics(
            total=figures.total,
            active=figures.by_status.get(EscrowStatus.ACTIVE, 0),
            released=figures.by_status.get(EscrowStatus.RELEASED, 0),
            refunded=figures.by_status.get(EscrowStatus.REFUNDED, 0),
            disputed=figures.by_status.get(EscrowStatus.DISPUTED, 0),
            value_locked=[
                common_pb2.TokenAmount(token=t, amount=str(a)) for t, a in sorted(figures.value_locked.items())
            ],
        )
        duration = duration_pb2.Duration()
        duration.FromNanoseconds(round(seconds * 1e9))
        return admin_pb2.GetMetricsResponse(
            compute_time=timestamp(self._engine.clock.now_us()),
            window=duration,
            payments=payments,
            escrows=escrows,
            webhooks=admin_pb2.WebhookMetrics(
                delivery_success_rate=recent.webhook_successes / recent.webhook_attempts
                if recent.webhook_attempts
                else 1.0,
                mean_delivery_ms=recent.mean_webhook_seconds * 1000,
                failures=recent.webhook_failures,
                retries=recent.webhook_retries,
                attempts=recent.webhook_attempts,
            ),
        )
