"""Prometheus metrics, in a registry per server so that several servers can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .activity import Activity

# Buckets around the promise of answers well under 100 ms.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The server's metric families."""

    def __init__(self) -> None:
        # The trailing windows GetMetrics reports; Prometheus has the counts since start.
        self.activity = Activity()
        self.registry = CollectorRegistry()
        self.rpc_requests = Counter(
            "agentflow_rpc_requests",
            "RPCs finished, by full method name and gRPC status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "agentflow_rpc_duration_seconds",
            "Time from receiving a unary RPC to its answer (server streams are not timed).",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "agentflow_auth_failures",
            "Calls refused by authentication or authorisation, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "agentflow_rate_limited",
            "Calls refused by a key's rate limit.",
            registry=self.registry,
        )
        self.api_keys_active = Gauge(
            "agentflow_api_keys_active",
            "API keys that are neither revoked nor expired.",
            registry=self.registry,
        )
        self.group_commands = Histogram(
            "agentflow_engine_group_commands",
            "Commands per engine group commit.",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.group_commit_seconds = Histogram(
            "agentflow_engine_commit_seconds",
            "Time to write and durably commit one engine group.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.group_failures = Counter(
            "agentflow_engine_failed_groups",
            "Engine groups whose commit failed (every command in them was refused).",
            registry=self.registry,
        )
        self.abandoned_commands = Counter(
            "agentflow_engine_abandoned_commands",
            "Commands not applied because their callers went away first (a deadline passed, a cancelled call).",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "agentflow_settlement_queue_depth",
            "Payments waiting for settlement, by token.",
            ["token"],
            registry=self.registry,
        )
        self.batches = Counter(
            "agentflow_settlement_batches",
            "Settlement batches finished, by outcome (confirmed or failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.batch_items = Histogram(
            "agentflow_settlement_batch_items",
            "Payments and withdrawals per confirmed batch.",
            buckets=(1, 10, 50, 100, 200, 300, 400, 500, 1000, 2000),
            registry=self.registry,
        )
        self.batch_gas = Histogram(
            "agentflow_settlement_batch_gas",
            "Gas used by a confirmed batch's transaction.",
            buckets=(10**5, 5 * 10**5, 10**6, 2 * 10**6, 4 * 10**6, 8 * 10**6, 16 * 10**6),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "agentflow_settlement_batch_seconds",
            "Time from a batch's forming to its confirmation.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.escrow_steps = Counter(
            "agentflow_escrow_steps",
            "Escrow events recorded: created, released (each part), refunded, disputed, resolved, expired.",
            ["step"],
            registry=self.registry,
        )
        self.escrow_expiry_lateness = Histogram(
            "agentflow_escrow_expiry_lateness_seconds",
            "Time from an escrow's deadline to the commit of its expiry.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0),
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "agentflow_webhook_attempts",
            "Webhook delivery attempts, by outcome: success (a 2xx answer) or failure.",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "agentflow_webhook_attempt_seconds",
            "Time of one webhook delivery attempt, from the request to the end of the answer read.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "agentflow_webhook_deliveries_failed",
            "Webhook deliveries that failed for good: attempts spent, or the endpoint disabled.",
            registry=self.registry,
        )
        self.deposits_block = Gauge(
            "agentflow_deposits_block",
            "The last block whose deposits are credited.",
            registry=self.registry,
        )
