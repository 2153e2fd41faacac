"""One HTTP attempt at a delivery: signed per the Standard Webhooks spec, timed out, its answer read with a cap.

httpx is the transport; its exceptions stop here and become the attempt's ``error`` text.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Sequence

import httpx

from agentflow_payments import sign_webhook

from ..clock import Clock
from .model import Attempt
from .urls import DestinationRefused, check_destination

EXCERPT_BYTES = 1024
"""How much of an answer's body a delivery keeps."""
MAX_BODY_BYTES = 64 * 1024
"""The most of an answer's body read; the rest is not waited for."""
USER_AGENT = "AgentFlow-Webhooks/1"


def signature_header(secrets: Sequence[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per active secret, space-separated."""
    return " ".join(sign_webhook(secret, webhook_id, timestamp, body) for secret in secrets)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header in seconds from now: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Sender:
    """Sends deliveries. One connection pool for every endpoint; redirects are never followed."""

    def __init__(self, timeout: float, clock: Clock, *, allow_private: bool) -> None:
        self._clock = clock
        self._timeout = timeout
        self._allow_private = allow_private
        # Made at the first attempt: its TLS context takes 50-100 ms to load, which a server with no
        # endpoints need not pay at every start.
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # trust_env off: proxy variables of the server's environment must not route users' webhooks.
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": USER_AGENT},
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            )
        return self._client

    async def send(self, url: str, webhook_id: str, body: bytes, secrets: Sequence[str]) -> Attempt:
        """Make one attempt and say what came of it; never raises for the endpoint's or network's faults."""
        now_us = self._clock.now_us()
        started = time.perf_counter()
        timestamp = now_us // 1_000_000
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(secrets, webhook_id, timestamp, body),
        }
        status = 0
        excerpt = b""
        retry_after: float | None = None
        error = ""
        try:
            # httpx's timeout bounds each phase; this bounds the whole attempt, so an endpoint that answers
            # a byte at a time cannot hold its lane longer.
            async with asyncio.timeout(self._timeout):
                if not self._allow_private:
                    await check_destination(url)
                async with self._http().stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code
                    read = bytearray()
                    async for chunk in response.aiter_bytes():
                        read += chunk
                        if len(read) >= MAX_BODY_BYTES:
                            break
                    excerpt = bytes(read[:EXCERPT_BYTES])
                    if status in (429, 503):
                        retry_after = retry_after_seconds(response.headers.get("retry-after"), now_us / 1e6)
                    if 300 <= status < 400:
                        error = f"redirects are not followed (to {response.headers.get('location', 'nowhere')})"
        except DestinationRefused as refused:
            error = f"destination refused: {refused}"
        except (httpx.TimeoutException, TimeoutError):
            status = 0
            error = "timeout"
        except httpx.ConnectError as failure:
            error = f"connection failed: {failure}" if str(failure) else "connection failed"
        except httpx.HTTPError as failure:
            error = f"{type(failure).__name__}: {failure}"
        success = 200 <= status < 300
        if not success and not error and status:
            error = f"HTTP {status}"
        return Attempt(
            http_status=status,
            duration_us=round((time.perf_counter() - started) * 1e6),
            body_excerpt=excerpt.decode("utf-8", errors="replace"),
            error=error,
            success=success,
            attempt_time_us=now_us,
            retry_after=retry_after,
        )

    async def close(self) -> None:
        """Close the connections."""
        if self._client is not None:
            await self._client.aclose()
