"""Server interceptors: the error boundary with metrics (outermost), then authentication,
authorisation and rate limiting.

grpc.aio interceptors only see the method name and metadata, so each one wraps
the handler's behaviour to reach the request (a bulk call's cost is its size).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from agentflow_payments import Reason

from ..auth import ApiKeyRegistry, Principal, RateLimiter
from ..auth.principal import reset_principal, set_principal
from ..errors import ApiError
from ..ledger import StorageError
from ..metrics import Metrics
from .context import Context, Handler, ServerInterceptor
from .policy import POLICIES, is_public
from .status import to_grpc_status

log = logging.getLogger("agentflow.api")
audit = logging.getLogger("agentflow.audit")

# A database that did not answer usually answers again within a second or so.
_STORAGE_RETRY_DELAY = datetime.timedelta(seconds=1)

Unary = Callable[[Any, Context], Awaitable[Any]]
Stream = Callable[[Any, Context], AsyncIterator[Any]]
HandlerContinuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]


class _WrappedHandlers:
    """An interceptor's wrapped handlers, made once per method: everything a call needs besides the method
    comes from its context, so the wrapper is the same for every call (grpc.aio asks for a handler on each)."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[Handler, Handler]] = {}

    def get(self, method: str, handler: Handler, wrap: Callable[[str, Handler], Handler]) -> Handler:
        found = self._by_method.get(method)
        if found is None or found[0] is not handler:
            found = self._by_method[method] = (handler, wrap(method, handler))
        return found[1]


async def _responses(behavior: Stream, request: Any, context: Context) -> AsyncIterator[Any]:
    """The messages of a server-streaming handler, whichever of grpc.aio's two styles it uses: an async
    generator, or a coroutine that writes with ``context.write`` (the health service's Watch)."""
    result: Any = behavior(request, context)
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result


def _wrap(
    handler: Handler,
    unary: Callable[[Unary], Unary],
    stream: Callable[[Stream], Stream],
) -> Handler:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(cast(Unary, handler.unary_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(cast(Stream, handler.unary_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # the v1 API has no client streams


class ErrorInterceptor(ServerInterceptor):
    """Turns exceptions into rich statuses and counts every RPC by method and code.

    ``ApiError`` becomes its catalogued status; ``StorageError`` becomes
    UNAVAILABLE/STORAGE_UNAVAILABLE; anything else is logged and answered
    INTERNAL without leaking its text.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._wrapped = _WrappedHandlers()

    async def intercept_service(
        self, continuation: HandlerContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        return self._wrapped.get(method, handler, self._wrap)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        metrics = self._metrics

        def unary(behavior: Unary) -> Unary:
            async def call(request: Any, context: Context) -> Any:
                async with _Boundary(method, context, metrics, timed=True):
                    return await behavior(request, context)

            return call

        def stream(behavior: Stream) -> Stream:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                async with _Boundary(method, context, metrics, timed=False):
                    async for response in _responses(behavior, request, context):
                        yield response

            return call

        return _wrap(handler, unary, stream)


class _Boundary:
    """Around one call: turns an exception that escapes the handler into its status, and counts the call
    by the code it ended with; unary calls are timed too (a stream's life is not a latency)."""

    def __init__(self, method: str, context: Context, metrics: Metrics, *, timed: bool) -> None:
        self._method = method
        self._timed = timed
        self._context = context
        self._metrics = metrics
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(self, _type: type[BaseException] | None, error: BaseException | None, _tb: Any) -> None:
        # A handler may end the call itself (context.abort, as the health service does); its code is then
        # the context's. A cancelled call (client gone, deadline, shutdown) is not an error of ours.
        code = self._context.code() or grpc.StatusCode.OK
        try:
            if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
                api_error = _translate(error, self._method)
                code = api_error.reason.code
                await _abort(self._context, api_error)
            elif error is not None and not isinstance(error, grpc.aio.AbortError):
                code = grpc.StatusCode.CANCELLED
        finally:
            self._metrics.rpc_requests.labels(self._method, _code_name(code)).inc()
            if self._timed:
                elapsed = time.perf_counter() - self._started
                self._metrics.rpc_duration.labels(self._method).observe(elapsed)
                if self._method == _SUBMIT_PAYMENT:
                    self._metrics.activity.response(elapsed)


_SUBMIT_PAYMENT = "/agentflow.payments.v1.PaymentService/SubmitPayment"


def _code_name(code: Any) -> str:
    # grpc.aio reports a code set by the handler as a StatusCode, or as its integer on some paths.
    if isinstance(code, grpc.StatusCode):
        return code.name
    return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")


def _translate(error: Exception, method: str) -> ApiError:
    """The ApiError to answer ``error`` with."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, StorageError):
        log.error("storage failure in %s: %s", method, error)
        return ApiError(
            Reason.STORAGE_UNAVAILABLE, "the ledger database is unavailable", retry_delay=_STORAGE_RETRY_DELAY
        )
    log.exception("unexpected error in %s", method, exc_info=error)
    return ApiError(Reason.INTERNAL, "internal error")


async def _abort(context: Context, error: ApiError) -> None:
    status = to_grpc_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthInterceptor(ServerInterceptor):
    """Authenticates the API key, checks the method's scopes, applies the key's rate limit, and makes
    the caller available to servicers as :func:`~agentflow_server.auth.current_principal`."""

    def __init__(self, registry: ApiKeyRegistry, limiter: RateLimiter, metrics: Metrics) -> None:
        self._registry = registry
        self._limiter = limiter
        self._metrics = metrics
        self._wrapped = _WrappedHandlers()

    def _admit(self, method: str, secret: str | None, peer: str, request: Any) -> Principal:
        policy = POLICIES.get(method)
        try:
            principal = self._registry.authenticate(secret)
            if policy is None or principal.scope not in policy.scopes:
                needs = policy.needs if policy is not None else "none"
                raise ApiError(
                    Reason.SCOPE_DENIED,
                    f"an API key of scope {principal.scope.value} may not call {method}",
                    metadata={"scope": principal.scope.value, "required_scopes": needs},
                )
        except ApiError as error:
            self._metrics.auth_failures.labels(error.reason.value).inc()
            audit.warning(
                "auth refused",
                extra={"event": "auth.refused", "method": method, "peer": peer, "reason": error.reason.value},
            )
            raise
        delay = self._limiter.try_acquire(
            principal.key_id, principal.requests_per_minute, principal.burst, policy.cost(request)
        )
        if delay is not None:
            self._metrics.rate_limited.inc()
            raise ApiError(
                Reason.RATE_LIMIT_EXCEEDED,
                f"rate limit of {principal.requests_per_minute}/min (burst {principal.burst}) exceeded",
                metadata={
                    "requests_per_minute": str(principal.requests_per_minute),
                    "burst": str(principal.burst),
                    "retry_after_ms": str(max(1, round(delay.total_seconds() * 1000))),
                },
                retry_delay=delay,
            )
        return principal

    async def intercept_service(
        self, continuation: HandlerContinuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or is_public(method):
            return handler
        return self._wrapped.get(method, handler, self._wrap)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        admit = self._admit

        def unary(behavior: Unary) -> Unary:
            async def call(request: Any, context: Context) -> Any:
                secret = _bearer(context.invocation_metadata())
                token = set_principal(admit(method, secret, context.peer(), request))
                try:
                    return await behavior(request, context)
                finally:
                    reset_principal(token)

            return call

        def stream(behavior: Stream) -> Stream:
            async def call(request: Any, context: Context) -> AsyncIterator[Any]:
                secret = _bearer(context.invocation_metadata())
                token = set_principal(admit(method, secret, context.peer(), request))
                try:
                    async for response in _responses(behavior, request, context):
                        yield response
                finally:
                    # A stream the client cancelled is closed by the event loop's async-generator finalizer,
                    # in another task's context, where there is nothing to reset (the RPC's own context
                    # went with its task); resetting there raises ValueError.
                    with contextlib.suppress(ValueError):
                        reset_principal(token)

            return call

        return _wrap(handler, unary, stream)
