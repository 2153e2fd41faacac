"""``Client``: the blocking face of ``AsyncClient``, for scripts, notebooks and threads.

It owns one event loop on a daemon thread, on which one ``AsyncClient`` lives
(grpc.aio channels belong to the loop that made them); each method runs the
async one there and waits. So the two clients cannot drift apart: every method,
its retries, deadlines and errors are ``AsyncClient``'s, and streams become
plain iterators. A ``Client`` may be shared by threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._client import DEFAULT_TIMEOUT, AsyncClient
from ._retry import RetryConfig

P = ParamSpec("P")
T = TypeVar("T")


def _blocking(method: Callable[Concatenate[AsyncClient, P], Awaitable[T]]) -> Callable[Concatenate[Client, P], T]:
    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async def run() -> T:
            return await method(self._client, *args, **kwargs)

        return self._run(run())

    return call


def _iterating(
    method: Callable[Concatenate[AsyncClient, P], AsyncIterator[T]],
) -> Callable[Concatenate[Client, P], Iterator[T]]:
    @functools.wraps(method)
    def call(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        return self._iterate(lambda: method(self._client, *args, **kwargs))

    return call


class Client:
    """A blocking connection to AgentFlow Payments, with the methods of :class:`AsyncClient`.

    Each method takes the same arguments as its ``AsyncClient`` namesake and returns its result;
    ``subscribe_events`` and ``watch_payment`` return iterators. Use it as a context manager, or call
    :meth:`close`.

    Args: as :class:`AsyncClient`.
    """

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        options: Sequence[tuple[str, Any]] = (),
        retry: RetryConfig = RetryConfig(),  # noqa: B008 (frozen, so one shared default is safe)
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentflow-client", daemon=True)
        self._thread.start()

        async def connect() -> AsyncClient:
            return AsyncClient(
                target,
                api_key,
                tls=tls,
                root_certificates=root_certificates,
                timeout=timeout,
                options=options,
                retry=retry,
            )

        self._client = self._run(connect())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closing.is_set():
            coroutine.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the caller's thread: the call on the loop is cancelled too, not left running.
            future.cancel()
            raise

    def _iterate(self, start: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        async def begin() -> AsyncIterator[T]:
            return start()

        stream = self._run(begin())
        try:
            while True:
                try:
                    yield self._run(_next(stream))
                except StopAsyncIteration:
                    return
                except concurrent.futures.CancelledError:
                    if self._closing.is_set():
                        return  # close() from another thread ends the iteration
                    raise
        finally:
            if not self._closing.is_set():
                self._run(_close(stream))

    submit_payment = _blocking(AsyncClient.submit_payment)
    submit_payments = _blocking(AsyncClient.submit_payments)
    get_payment = _blocking(AsyncClient.get_payment)
    list_payments = _blocking(AsyncClient.list_payments)
    cancel_payment = _blocking(AsyncClient.cancel_payment)
    quote_fee = _blocking(AsyncClient.quote_fee)
    get_batch = _blocking(AsyncClient.get_batch)
    watch_payment = _iterating(AsyncClient.watch_payment)
    create_escrow = _blocking(AsyncClient.create_escrow)
    get_escrow = _blocking(AsyncClient.get_escrow)
    list_escrows = _blocking(AsyncClient.list_escrows)
    release_escrow = _blocking(AsyncClient.release_escrow)
    refund_escrow = _blocking(AsyncClient.refund_escrow)
    dispute_escrow = _blocking(AsyncClient.dispute_escrow)
    resolve_dispute = _blocking(AsyncClient.resolve_dispute)
    submit_task_result = _blocking(AsyncClient.submit_task_result)
    get_balances = _blocking(AsyncClient.get_balances)
    list_ledger_entries = _blocking(AsyncClient.list_ledger_entries)
    withdraw = _blocking(AsyncClient.withdraw)
    list_tokens = _blocking(AsyncClient.list_tokens)
    get_deposit_info = _blocking(AsyncClient.get_deposit_info)
    create_api_key = _blocking(AsyncClient.create_api_key)
    list_api_keys = _blocking(AsyncClient.list_api_keys)
    revoke_api_key = _blocking(AsyncClient.revoke_api_key)
    get_metrics = _blocking(AsyncClient.get_metrics)
    create_webhook = _blocking(AsyncClient.create_webhook)
    get_webhook = _blocking(AsyncClient.get_webhook)
    list_webhooks = _blocking(AsyncClient.list_webhooks)
    update_webhook = _blocking(AsyncClient.update_webhook)
    delete_webhook = _blocking(AsyncClient.delete_webhook)
    rotate_webhook_secret = _blocking(AsyncClient.rotate_webhook_secret)
    test_webhook = _blocking(AsyncClient.test_webhook)
    list_webhook_deliveries = _blocking(AsyncClient.list_webhook_deliveries)
    retry_webhook_delivery = _blocking(AsyncClient.retry_webhook_delivery)
    subscribe_events = _iterating(AsyncClient.subscribe_events)
    list_events = _blocking(AsyncClient.list_events)

    def close(self) -> None:
        """Close the channel and stop the client's thread. Calls in flight in other threads are cancelled:
        a method raises ``concurrent.futures.CancelledError``, an iterator simply ends."""
        with self._lock:
            if self._closing.is_set():
                return
            self._closing.set()
        asyncio.run_coroutine_threadsafe(_shutdown(self._client), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _shutdown(client: AsyncClient) -> None:
    """Cancel what other threads wait for (their futures then end), then close the channel."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    await client.close()


async def _next(stream: AsyncIterator[T]) -> T:
    return await anext(stream)


async def _close(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
