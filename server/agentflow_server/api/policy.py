"""Who may call what: the scopes each RPC admits, and what a call costs against the rate limit.

Every RPC of the v1 services must appear here; a method without a policy is
refused, so a new RPC is closed until someone decides who may call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..auth import Scope

_V1 = "/agentflow.payments.v1."

# Methods anyone may call without a key: health checks and server reflection.
PUBLIC_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

READ = frozenset(Scope)
MOVE_MONEY = frozenset({Scope.ADMIN, Scope.PAYER})
ESCROW_DECIDE = frozenset({Scope.ADMIN, Scope.PAYER, Scope.ARBITER})
ARBITRATE = frozenset({Scope.ADMIN, Scope.ARBITER})
ADMIN = frozenset({Scope.ADMIN})


def _one(_request: Any) -> int:
    return 1


def _bulk(request: Any) -> int:
    return max(1, len(request.requests))


@dataclass(frozen=True)
class MethodPolicy:
    """The scopes that may call a method, and the rate-limit tokens a request costs."""

    scopes: frozenset[Scope]
    cost: Callable[[Any], int] = _one

    @property
    def needs(self) -> str:
        """The admitted scopes, for error messages."""
        return ",".join(sorted(scope.value for scope in self.scopes))


def _methods(service: str, policies: dict[str, MethodPolicy]) -> dict[str, MethodPolicy]:
    return {f"{_V1}{service}/{name}": policy for name, policy in policies.items()}


POLICIES: dict[str, MethodPolicy] = {
    **_methods(
        "PaymentService",
        {
            "SubmitPayment": MethodPolicy(MOVE_MONEY),
            "SubmitPayments": MethodPolicy(MOVE_MONEY, cost=_bulk),
            "GetPayment": MethodPolicy(READ),
            "ListPayments": MethodPolicy(READ),
            "CancelPayment": MethodPolicy(MOVE_MONEY),
            "QuoteFee": MethodPolicy(READ),
            "WatchPayment": MethodPolicy(READ),
            "GetBatch": MethodPolicy(READ),
        },
    ),
    **_methods(
        "EscrowService",
        {
            "CreateEscrow": MethodPolicy(MOVE_MONEY),
            "GetEscrow": MethodPolicy(READ),
            "ListEscrows": MethodPolicy(READ),
            "ReleaseEscrow": MethodPolicy(ESCROW_DECIDE),
            "RefundEscrow": MethodPolicy(ESCROW_DECIDE),
            "DisputeEscrow": MethodPolicy(MOVE_MONEY),
            "ResolveDispute": MethodPolicy(ARBITRATE),
            "SubmitTaskResult": MethodPolicy(ESCROW_DECIDE),
        },
    ),
    **_methods(
        "WebhookService",
        {
            "CreateWebhook": MethodPolicy(MOVE_MONEY),
            "GetWebhook": MethodPolicy(READ),
            "ListWebhooks": MethodPolicy(READ),
            "UpdateWebhook": MethodPolicy(MOVE_MONEY),
            "DeleteWebhook": MethodPolicy(MOVE_MONEY),
            "RotateWebhookSecret": MethodPolicy(MOVE_MONEY),
            "TestWebhook": MethodPolicy(MOVE_MONEY),
            "ListWebhookDeliveries": MethodPolicy(READ),
            "RetryWebhookDelivery": MethodPolicy(MOVE_MONEY),
        },
    ),
    **_methods(
        "EventService",
        {
            "SubscribeEvents": MethodPolicy(READ),
            "ListEvents": MethodPolicy(READ),
        },
    ),
    **_methods(
        "AccountService",
        {
            "GetBalances": MethodPolicy(READ),
            "ListLedgerEntries": MethodPolicy(READ),
            "Withdraw": MethodPolicy(MOVE_MONEY),
            "ListTokens": MethodPolicy(READ),
            "GetDepositInfo": MethodPolicy(READ),
        },
    ),
    **_methods(
        "AdminService",
        {
            "CreateApiKey": MethodPolicy(ADMIN),
            "ListApiKeys": MethodPolicy(ADMIN),
            "RevokeApiKey": MethodPolicy(ADMIN),
            "GetMetrics": MethodPolicy(ADMIN),
        },
    ),
}


def is_public(method: str) -> bool:
    """Whether ``method`` (a full ``/package.Service/Method`` name) needs no key."""
    return method.startswith(PUBLIC_SERVICE_PREFIXES)
