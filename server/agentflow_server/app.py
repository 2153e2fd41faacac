"""Assembling and running the service: storage, keys, the gRPC server, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import datetime
import gc
import inspect
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from agentflow_payments.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    admin_pb2,
    admin_pb2_grpc,
    escrow_pb2,
    escrow_pb2_grpc,
    events_pb2,
    payments_pb2,
    payments_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)

from .api.accounts import AccountServicer, DepositTarget
from .api.admin import AdminServicer
from .api.escrow import EscrowServicer
from .api.events import EventServicer, add_event_service
from .api.interceptors import AuthInterceptor, ErrorInterceptor
from .api.payments import PaymentServicer
from .api.registration import generic_only
from .api.webhooks import WebhookServicer
from .auth import ApiKeyRegistry, RateLimiter
from .chain.relayer import RelayerConfig
from .chain.runtime import ChainConnection, ChainOptions, ChainRuntime, ChainSetupError
from .chain.settlement import SettlementConfig
from .clock import Clock
from .config import Settings
from .engine.engine import Engine, EngineConfig
from .engine.expiry import ExpiryTimer
from .engine.fees import FeeSchedule
from .event_loop import running_kind
from .events import EventHub
from .ledger import Database
from .ledger.accounts import AccountReader
from .ledger.api_keys import ApiKeyStore
from .ledger.batches import BatchReader
from .ledger.escrows import EscrowReader
from .ledger.events import EventReader
from .ledger.payments import PaymentReader
from .ledger.webhooks import WebhookReader
from .metrics import Metrics
from .tokens import TokenRegistry
from .webhooks.dispatcher import WebhookConfig, WebhookDispatcher
from .webhooks.retry import RetryPolicy

log = logging.getLogger("agentflow.server")

# grpcio-health-checking ships no types for its asyncio servicer.
AsyncHealthServicer: Any = health.aio.HealthServicer  # type: ignore[attr-defined]

SERVICE_NAMES: tuple[str, ...] = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (payments_pb2, "PaymentService"),
        (escrow_pb2, "EscrowService"),
        (webhooks_pb2, "WebhookService"),
        (events_pb2, "EventService"),
        (accounts_pb2, "AccountService"),
        (admin_pb2, "AdminService"),
    )
)
"""The full names of the six v1 services, as health and reflection know them."""

# Keepalive pings from the SDK (every 60 s) must not be taken for abuse.
_SERVER_OPTIONS: tuple[tuple[str, Any], ...] = (
    # A second server on the same port must fail to bind, not share the port.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
)


class StartupError(Exception):
    """The service could not start: a port in use, an unreadable certificate, a database that refuses."""


@dataclass(frozen=True)
class Endpoints:
    """Where a started server listens."""

    grpc_port: int
    metrics_port: int | None


class Service:
    """The running service. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        engine: Engine,
        server: grpc.aio.Server,
        health_servicer: Any,
        metrics: Metrics,
        endpoints: Endpoints,
        metrics_http: Any,
        chain: ChainRuntime | None = None,
        expiry: ExpiryTimer | None = None,
        hub: EventHub | None = None,
        webhooks: WebhookDispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.database = database
        self.engine = engine
        self.server = server
        self.health = health_servicer
        self.metrics = metrics
        self.endpoints = endpoints
        self._metrics_http = metrics_http
        self.chain = chain
        self.expiry = expiry
        self.hub = hub
        self.webhooks = webhooks
        self.clock = engine.clock
        self.keys: ApiKeyRegistry | None = None
        self._stopped = False

    @classmethod
    async def start(cls, settings: Settings, clock: Clock | None = None) -> Service:
        """Open the ledger, load the keys, start the engine, bind the ports and start serving.

        ``clock`` is the service's time (tests pass one they move forward to reach escrow deadlines).
        """
        # The ledger's threads (its reader, and its writer or the threads feeding the writer process) need the
        # GIL back after each call while the event loop is busy; the default 5 ms switch interval left them
        # waiting (bulk throughput +20% measured at 0.5 ms, with the writer on a thread).
        sys.setswitchinterval(0.0005)
        chain: ChainConnection | None = None
        if settings.settlement_enabled:
            try:
                chain = await ChainConnection.open(chain_options(settings))
            except ChainSetupError as error:
                raise StartupError(str(error)) from error
        try:
            try:
                addresses = chain.token_addresses if chain is not None else settings.token_addresses
                tokens = TokenRegistry.configure(addresses, settings.min_fees)
                if chain is not None:
                    # On a chain, a token is accepted only where it has a contract to settle through.
                    tokens = tokens.settleable()
                fee_schedule = FeeSchedule(rate_bps=settings.fee_rate_bps)
            except ValueError as error:
                raise StartupError(f"invalid token or fee configuration: {error}") from error
            try:
                database = await Database.open(settings.ledger_url)
            except Exception as error:
                raise StartupError(f"cannot open the ledger at {settings.ledger_url}: {error}") from error
        except BaseException:
            if chain is not None:
                await chain.close()
            raise
        metrics = Metrics()
        engine = Engine(
            database,
            tokens,
            EngineConfig(
                max_group_size=settings.group_max_size,
                max_group_wait=settings.group_max_wait_ms / 1000,
                max_queue_size=settings.max_queue_size,
                max_inflight=settings.group_pipeline_depth,
                pipeline_min_commands=settings.group_pipeline_min,
                writer_process=settings.ledger_writer == "process",
                wal_limit=settings.sqlite_wal_limit_mb << 20,
                fee_schedule=fee_schedule,
                escrow_default_expiry=datetime.timedelta(seconds=settings.escrow_default_expiry),
            ),
            metrics=metrics,
            clock=clock,
        )
        limiter = RateLimiter()
        registry = ApiKeyRegistry(ApiKeyStore(database), limiter)
        default_limit = (settings.rate_limit_per_minute, settings.rate_limit_burst)
        admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
        await registry.load(admin_key, default_limit)
        metrics.api_keys_active.set_function(registry.active_count)

        server = grpc.aio.server(
            interceptors=[ErrorInterceptor(metrics), AuthInterceptor(registry, limiter, metrics)],
            options=_SERVER_OPTIONS,
        )
        services = generic_only(server)
        batches = BatchReader(database)
        event_log = EventReader(database)
        hub = EventHub(event_log, max_backlog=settings.event_subscriber_backlog)
        engine.add_commit_listener(hub.committed)
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(
            PaymentServicer(engine, PaymentReader(database), batches, hub, settings.max_bulk_size), services
        )
        escrow_pb2_grpc.add_EscrowServiceServicer_to_server(
            EscrowServicer(
                engine,
                EscrowReader(database),
                engine.clock,
                settings.escrow_max_expiry,
            ),
            services,
        )
        webhook_reader = WebhookReader(database)
        dispatcher = WebhookDispatcher(
            engine, webhook_reader, event_log, _owner_lookup(registry), webhook_config(settings), metrics
        )
        engine.add_commit_listener(dispatcher.committed)
        webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(
            WebhookServicer(dispatcher, webhook_reader, tokens, engine.clock), services
        )
        add_event_service(
            services, EventServicer(hub, event_log, tokens, engine.clock, settings.event_heartbeat_interval)
        )
        deposits = (
            DepositTarget(chain.identity.chain_id, chain.identity.contract, settings.confirmations)
            if chain is not None
            else None
        )
        chain_id = chain.identity.chain_id if chain is not None else (settings.chain_id or 0)
        accounts_pb2_grpc.add_AccountServiceServicer_to_server(
            AccountServicer(engine, AccountReader(database), tokens, chain_id, deposits), services
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(registry, default_limit, engine, metrics, EscrowReader(database)), services
        )
        health_servicer = AsyncHealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, services)
        health = _HealthReporter(health_servicer)
        engine.add_writer_lost_listener(health.writer_lost)
        # reflection.enable_server_reflection does this for an asyncio server it recognises.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]  # public (in __all__), not re-exported
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            ),
            services,
        )

        try:
            port = _bind(server, settings)
        except Exception:
            await _close(database, chain)
            raise
        metrics_http, metrics_port = None, None
        if settings.metrics_listen:
            host, _, raw_port = settings.metrics_listen.rpartition(":")
            try:
                metrics_http, _thread = start_http_server(int(raw_port), addr=host, registry=metrics.registry)
            except OSError as error:
                await _close(database, chain)
                raise StartupError(f"cannot serve metrics on {settings.metrics_listen}: {error}") from error
            metrics_port = metrics_http.server_port
        await engine.start()
        await hub.start()
        await dispatcher.start()
        expiry = ExpiryTimer(engine, engine.deadlines, engine.clock)
        expiry.start()
        runtime: ChainRuntime | None = None
        if chain is not None:
            # NOT_SERVING until the stage has reached the chain once; it reports every change after that.
            await health_servicer.set(SETTLEMENT_HEALTH, health_pb2.HealthCheckResponse.NOT_SERVING)
            try:
                runtime = await ChainRuntime.start(chain, engine, batches, tokens, health.settlement, metrics)
            except Exception as error:
                await expiry.stop()
                await dispatcher.stop()
                await hub.stop()
                await engine.stop()
                await _close(database, chain)
                raise StartupError(str(error)) from error
        await server.start()
        for name in ("", LEDGER_HEALTH, *SERVICE_NAMES):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if health.ledger_lost:  # while starting
            health.set(("", LEDGER_HEALTH), serving=False)
        endpoints = Endpoints(grpc_port=port, metrics_port=metrics_port)
        log.info(
            "serving",
            extra={
                "event": "server.started",
                "grpc_port": port,
                "metrics_port": metrics_port,
                "event_loop": running_kind(),
            },
        )
        service = cls(
            settings,
            database,
            engine,
            server,
            health_servicer,
            metrics,
            endpoints,
            metrics_http,
            runtime,
            expiry,
            hub,
            dispatcher,
        )
        service.keys = registry
        return service

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: report NOT_SERVING, refuse new calls, let in-flight ones finish within
        ``grace`` seconds (the configured grace by default), then close the ledger."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        if self.hub is not None:
            # Event streams never end by themselves: end them now, so that they do not hold the grace.
            self.hub.shut_down()
        await self.server.stop(self.settings.shutdown_grace if grace is None else grace)
        if self.hub is not None:
            await self.hub.stop()
        if self.webhooks is not None:
            # Before the engine: deliveries record their outcomes through it. One under way is made again.
            await self.webhooks.stop()
        if self.chain is not None:
            # Before the engine: the stage hands it commands. A batch under way is finished at next start.
            await self.chain.stop()
        if self.expiry is not None:
            await self.expiry.stop()
        # Calls in flight are answered; commands they handed over are committed before the ledger closes.
        await self.engine.stop()
        if self._metrics_http is not None:
            # shutdown() waits for the serving thread's next poll (up to 0.5 s): not on the event loop.
            await asyncio.to_thread(self._metrics_http.shutdown)
            self._metrics_http.server_close()
        await self.database.close()
        log.info("stopped", extra={"event": "server.stopped"})


SETTLEMENT_HEALTH = "agentflow.payments.v1.Settlement"
"""The health service name of settlement: NOT_SERVING while the chain cannot be reached (payments are
still accepted and queued)."""

LEDGER_HEALTH = "agentflow.payments.v1.Ledger"
"""The health service name of the ledger: NOT_SERVING, with the server as a whole (""), once the ledger
writer process is lost. Every write then fails until the server is restarted; reads go on."""


def chain_options(settings: Settings) -> ChainOptions:
    """How to reach and settle on the chain, from the settings."""
    poll = settings.chain_poll_interval
    return ChainOptions(
        rpc_url=settings.chain_rpc_url,
        chain_id=settings.chain_id,
        contract_address=settings.contract_address,
        operator_key=settings.operator_private_key.get_secret_value() if settings.operator_private_key else None,
        token_addresses=dict(settings.token_addresses),
        confirmations=settings.confirmations,
        deposits_from_block=settings.deposits_from_block,
        poll_interval=poll,
        rpc_failure_threshold=settings.rpc_failure_threshold,
        rpc_reset_timeout=settings.rpc_reset_timeout,
        relayer=RelayerConfig(
            max_fee_per_gas=settings.max_fee_per_gas,
            replace_after=settings.tx_replace_after,
            poll_interval=min(poll, 0.5),
        ),
        settlement=SettlementConfig(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout_ms / 1000,
            confirmations=settings.confirmations,
            retries=settings.chain_retries,
            poll_interval=min(poll, 0.2),
            fee_payout_interval=settings.fee_payout_interval,
        ),
    )


def webhook_config(settings: Settings) -> WebhookConfig:
    """How webhooks are delivered, from the settings."""
    return WebhookConfig(
        timeout=settings.webhook_timeout_ms / 1000,
        retry=RetryPolicy(
            max_retries=settings.webhook_max_retries,
            initial=settings.webhook_retry_initial,
            multiplier=settings.webhook_retry_multiplier,
            max_delay=settings.webhook_retry_max_delay,
        ),
        breaker_threshold=settings.webhook_breaker_threshold,
        breaker_reset=settings.webhook_breaker_reset,
        disable_after=settings.webhook_disable_after,
        allow_private=settings.webhook_allow_private,
    )


def _owner_lookup(registry: ApiKeyRegistry) -> Callable[[str], tuple[bool, frozenset[str] | None]]:
    """Whether an endpoint owner's key is active, and the addresses it may see (None: all)."""

    def lookup(key_id: str) -> tuple[bool, frozenset[str] | None]:
        principal = registry.active(key_id)
        if principal is None:
            return False, frozenset()
        return True, None if principal.reads_everything else principal.addresses

    return lookup


class _HealthReporter:
    """Sets health statuses from the callbacks of the settlement stage and the engine (plain functions on the
    event loop; the servicer's ``set`` is a coroutine)."""

    def __init__(self, servicer: Any) -> None:
        self._servicer = servicer
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settlement: bool | None = None
        self.ledger_lost = False

    def set(self, names: tuple[str, ...], *, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in names:
            task = asyncio.ensure_future(self._servicer.set(name, status))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def settlement(self, serving: bool) -> None:
        """The settlement stage's callback: SETTLEMENT_HEALTH follows it."""
        if serving != self._settlement:
            self._settlement = serving
            self.set((SETTLEMENT_HEALTH,), serving=serving)

    def writer_lost(self, _reason: str) -> None:
        """The engine's callback: no write succeeds any more, so the server is not fit for traffic."""
        self.ledger_lost = True
        self.set(("", LEDGER_HEALTH), serving=False)


async def _close(database: Database, chain: ChainConnection | None) -> None:
    await database.close()
    if chain is not None:
        await chain.close()


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    address = settings.listen
    try:
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())]
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as error:
        raise StartupError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise StartupError(f"cannot listen on {address}")
    return port


def freeze_startup_heap() -> None:
    """Keep what is alive once the service has started out of the cycle collector's full passes.

    The modules, types and functions of grpc, web3, SQLAlchemy and the rest are some 170,000 tracked
    objects that live as long as the process. A full collection walked all of them, 50-85 ms on this
    2-core machine, several times a minute under load: that was the tail of SubmitPayment's latency.
    ``gc.freeze`` moves them to a generation the collector never scans. Process-wide, so it is for the
    process that serves (``serve`` and the benchmark's server), not for tests that start many services.
    """
    gc.collect()
    gc.freeze()


async def serve(settings: Settings, on_started: Any = None) -> None:
    """Run the service until SIGTERM or SIGINT, then shut down gracefully.

    ``on_started`` is called with the started :class:`Service` (the dev
    command prints its banner from it).
    """
    # Handlers first: a SIGTERM that arrives while starting still means a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    service = await Service.start(settings)
    freeze_startup_heap()
    if on_started is not None:
        started = on_started(service)
        if inspect.isawaitable(started):
            await started
    try:
        await stop.wait()
        log.info("shutting down", extra={"event": "server.stopping"})
    finally:
        await service.stop()
