"""The relayer: the one sender of the operator key's transactions. It numbers them (one nonce manager),
prices them from ``eth_feeHistory`` under a cap (EIP-1559), retries their broadcast with exponential backoff,
and replaces one that is not mined in time with the same nonce and at least 12.5% higher fees."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from .rpc import ChainRequestRefused, ChainUnavailable, Receipt, Rpc

log = logging.getLogger("agentflow.chain.relayer")

GAS_CAP = 16_777_216
"""The most gas one transaction may use (EIP-7825, since Osaka)."""


def _bump(value: int, percent_x10: int) -> int:
    """``value`` raised by ``percent_x10``/10 percent, rounded up: nodes refuse a replacement below +12.5%."""
    return -(-value * (1000 + percent_x10) // 1000)


@dataclass(frozen=True)
class RetryConfig:
    """How often and how patiently a broadcast that could not reach the node is retried."""

    attempts: int = 4
    """Tries in all: the first and three retries."""
    initial_backoff: float = 0.5
    max_backoff: float = 8.0


@dataclass(frozen=True)
class RelayerConfig:
    """Fees and patience of the relayer."""

    max_fee_per_gas: int = 500 * 10**9
    """The most the operator pays per gas (base and priority fee together), in wei."""
    default_priority_fee: int = 10**9
    """The tip when the node keeps no fee history (dev chains)."""
    fee_history_blocks: int = 10
    replace_after: float = 30.0
    """Seconds a transaction may stay unmined before it is replaced with higher fees."""
    bump_percent_x10: int = 125
    """How much a replacement raises both fees: 125 is 12.5%, the least nodes accept."""
    poll_interval: float = 0.5
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True)
class SignedTransaction:
    """One signed version of a transaction (the first, or a replacement with the same nonce)."""

    nonce: int
    hash: str
    raw: bytes
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    request: dict[str, Any]


class Relayer:
    """Signs and sends the operator's transactions. Safe to share: nonces are handed out under a lock."""

    def __init__(self, rpc: Rpc, account: LocalAccount, chain_id: int, config: RelayerConfig | None = None) -> None:
        self.rpc = rpc
        self.account = account
        self.chain_id = chain_id
        self.config = config or RelayerConfig()
        self._next_nonce: int | None = None
        self._lock = asyncio.Lock()

    @property
    def address(self) -> str:
        return str(self.account.address)

    async def resync(self) -> None:
        """Forget the local nonce: the next transaction takes the node's pending count."""
        async with self._lock:
            self._next_nonce = None

    async def prepare(self, to: str | None, data: bytes, value: int = 0, gas: int | None = None) -> SignedTransaction:
        """Number, price and sign a transaction without sending it (its hash can be recorded first).

        Gas is estimated (plus 20%) unless given, and never above the per-transaction cap.
        """
        request: dict[str, Any] = {"from": self.address, "data": data, "value": value, "chainId": self.chain_id}
        if to is not None:
            request["to"] = to
        if gas is None:
            gas = min(GAS_CAP, await self.rpc.estimate_gas(request) * 6 // 5)
        request["gas"] = gas
        max_fee, priority = await self.market_fees()
        async with self._lock:
            if self._next_nonce is None:
                self._next_nonce = await self.rpc.nonce(self.address, "pending")
            nonce = self._next_nonce
            self._next_nonce += 1
        return self._sign(request, nonce, max_fee, priority)

    async def broadcast(self, signed: SignedTransaction) -> None:
        """Send a signed transaction, retrying while the node cannot be reached. A node that already has it
        ("already known") is success; one that says the nonce is used means an earlier version was mined."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.retry.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.config.retry.initial_backoff,
                max=self.config.retry.max_backoff,
                jitter=self.config.retry.initial_backoff,
            ),
            retry=retry_if_exception_type(ChainUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    await self.rpc.send_raw(signed.raw)
                except ChainRequestRefused as error:
                    message = str(error).lower()
                    if "already known" in message or "already imported" in message:
                        return
                    if "nonce too low" in message:
                        # Mined already (this version or another), or our count is off: recount.
                        await self.resync()
                    raise

    async def send(self, to: str | None, data: bytes, value: int = 0, gas: int | None = None) -> SignedTransaction:
        """Prepare and broadcast."""
        signed = await self.prepare(to, data, value, gas)
        await self.broadcast(signed)
        return signed

    async def replace(self, previous: SignedTransaction) -> SignedTransaction | None:
        """The same transaction, same nonce, fees raised by at least 12.5% (more if the market asks), signed.
        None when the cap leaves no room for a valid replacement."""
        bump = self.config.bump_percent_x10
        market_max, market_priority = await self.market_fees()
        priority = max(_bump(previous.max_priority_fee_per_gas, bump), market_priority)
        max_fee = max(_bump(previous.max_fee_per_gas, bump), market_max, priority)
        if max_fee > self.config.max_fee_per_gas:
            log.warning(
                "transaction %s (nonce %d) is not mined and the fee cap leaves no room to replace it",
                previous.hash,
                previous.nonce,
            )
            return None
        return self._sign(previous.request, previous.nonce, max_fee, priority)

    async def wait(
        self,
        versions: list[SignedTransaction],
        before_replacing: Callable[[SignedTransaction], Awaitable[None]] | None = None,
        logs_of: str | None = None,
    ) -> Receipt:
        """Wait until one version of the transaction is mined, replacing the newest one each time it stays
        unmined for ``replace_after``. ``versions`` grows with the replacements sent; ``before_replacing``
        sees each one before it is broadcast (to record it); ``logs_of`` keeps only that contract's logs in the
        receipt. Bound it with ``asyncio.timeout`` as needed."""
        last_sent = time.monotonic()
        while True:
            for version in reversed(versions):
                receipt = await self.rpc.receipt(version.hash, logs_of)
                if receipt is not None:
                    return receipt
            now = time.monotonic()
            if now - last_sent >= self.config.replace_after:
                replacement = await self.replace(versions[-1])
                last_sent = now
                if replacement is not None:
                    log.info(
                        "replacing %s (nonce %d) with %s at %d wei/gas",
                        versions[-1].hash,
                        replacement.nonce,
                        replacement.hash,
                        replacement.max_fee_per_gas,
                    )
                    versions.append(replacement)
                    if before_replacing is not None:
                        await before_replacing(replacement)
                    try:
                        await self.broadcast(replacement)
                    except ChainRequestRefused as error:
                        if "nonce too low" not in str(error).lower():
                            raise
                        # An earlier version was mined meanwhile: the next round finds its receipt.
            await asyncio.sleep(self.config.poll_interval)

    async def market_fees(self) -> tuple[int, int]:
        """(max fee, priority fee) per gas for the next block: twice the next base fee plus the median tip
        of recent blocks, never above the cap."""
        base_fees, rewards = await self.rpc.fee_history(self.config.fee_history_blocks, 50)
        if base_fees:
            next_base = base_fees[-1]
        else:
            latest = await self.rpc.block("latest")
            next_base = latest.base_fee if latest is not None else 0
        tips = [reward for reward in rewards if reward > 0]
        priority = int(statistics.median(tips)) if tips else self.config.default_priority_fee
        max_fee = min(2 * next_base + priority, self.config.max_fee_per_gas)
        return max_fee, min(priority, max_fee)

    def _sign(self, request: dict[str, Any], nonce: int, max_fee: int, priority: int) -> SignedTransaction:
        transaction = {key: value for key, value in request.items() if key != "from"}
        transaction.update(nonce=nonce, maxFeePerGas=max_fee, maxPriorityFeePerGas=priority, type=2)
        signed = self.account.sign_transaction(transaction)
        return SignedTransaction(
            nonce=nonce,
            hash=signed.hash.to_0x_hex(),
            raw=bytes(signed.raw_transaction),
            max_fee_per_gas=max_fee,
            max_priority_fee_per_gas=priority,
            request=dict(request),
        )
