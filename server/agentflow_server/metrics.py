"""Prometheus metrics, in a registry per server so that several servers can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Buckets around the promise of answers well under 100 ms.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The server's metric families."""

    def __init__(self) -> None:
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
