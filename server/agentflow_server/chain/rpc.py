"""The one boundary to an Ethereum node: what the service asks of it, over web3's async client, with every
foreign exception (web3's, aiohttp's, timeouts) turned into a :class:`ChainError`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_typing import ChecksumAddress, HexAddress, HexStr
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3Exception, Web3RPCError
from web3.providers.async_base import AsyncBaseProvider

from ..breaker import CircuitBreaker


class ChainError(Exception):
    """Something the chain side could not do."""


class ChainUnavailable(ChainError):
    """The node could not be reached, or did not answer in time: worth retrying later."""


class ChainRequestRefused(ChainError):
    """The node answered with an error: a transaction it will not take (nonce, fee, funds...)."""


class CallReverted(ChainError):
    """A call or gas estimate reverted; ``data`` holds the revert data (a custom error's selector...)."""

    def __init__(self, message: str, data: str = "") -> None:
        super().__init__(message)
        self.data = data


@dataclass(frozen=True, slots=True)
class Block:
    """What the service needs of a block header."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int
    base_fee: int


@dataclass(frozen=True, slots=True)
class Log:
    """One event log as the node returned it."""

    address: str
    topics: tuple[bytes, ...]
    data: bytes
    block_number: int
    block_hash: str
    transaction_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined transaction's outcome."""

    transaction_hash: str
    status: int
    block_number: int
    block_hash: str
    gas_used: int
    effective_gas_price: int
    logs: tuple[Log, ...]
    contract_address: str | None = None


class Rpc:
    """An Ethereum JSON-RPC endpoint (or the embedded EVM) as the service uses it."""

    def __init__(
        self, provider: AsyncBaseProvider, timeout: float = 30.0, breaker: CircuitBreaker | None = None
    ) -> None:
        self.w3 = AsyncWeb3(provider)
        self._timeout = timeout
        # A JSON-RPC node's receipts are read raw: web3's formatting of a batch's thousand token logs cost
        # more than the rest of the batch. (The embedded EVM answers in another shape: web3 reads those.)
        self._raw_receipts = isinstance(provider, AsyncHTTPProvider)
        # Open after repeated failures to reach the node: calls then fail at once, without waiting.
        self.breaker = breaker or CircuitBreaker()

    @classmethod
    def http(cls, url: str, timeout: float = 30.0, breaker: CircuitBreaker | None = None) -> Rpc:
        """A node at ``url``. web3's own retries are off: the caller decides what to retry."""
        provider = AsyncHTTPProvider(
            url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)}, exception_retry_configuration=None
        )
        return cls(provider, timeout, breaker)

    async def close(self) -> None:
        disconnect = getattr(self.w3.provider, "disconnect", None)
        if disconnect is not None:
            with contextlib.suppress(Exception):
                await disconnect()

    @contextlib.asynccontextmanager
    async def _boundary(self, what: str) -> AsyncIterator[None]:
        if not self.breaker.allow():
            raise ChainUnavailable(
                f"{what}: the node failed repeatedly; next try in {self.breaker.retry_after():.1f} s"
            )
        try:
            async with asyncio.timeout(self._timeout):
                yield
        except (ContractCustomError, ContractLogicError) as error:
            self.breaker.record_success()  # the node answered
            data = error.data if isinstance(error.data, str) else ""
            raise CallReverted(f"{what}: reverted: {error.message or data}", data) from error
        except Web3RPCError as error:
            self.breaker.record_success()
            raise ChainRequestRefused(f"{what}: {error.message or error}") from error
        except (TimeoutError, aiohttp.ClientError, OSError, Web3Exception) as error:
            self.breaker.record_failure()
            raise ChainUnavailable(f"{what}: the node did not answer: {error or type(error).__name__}") from error
        except BaseException:
            self.breaker.abandon()  # cancelled or our own error: says nothing about the node
            raise
        self.breaker.record_success()

    async def chain_id(self) -> int:
        async with self._boundary("eth_chainId"):
            return int(await self.w3.eth.chain_id)

    async def block_number(self) -> int:
        async with self._boundary("eth_blockNumber"):
            return int(await self.w3.eth.block_number)

    async def block(self, number: int | str) -> Block | None:
        """The block ``number`` (or "latest", "safe"...), None when the node has none by that number."""
        async with self._boundary("eth_getBlockByNumber"):
            try:
                block: Any = await self.w3.eth.get_block(number)  # type: ignore[arg-type]
            except Web3Exception as error:
                if "not found" in str(error).lower():
                    return None
                raise
        return Block(
            number=int(block["number"]),
            hash=HexBytes(block["hash"]).to_0x_hex(),
            parent_hash=HexBytes(block["parentHash"]).to_0x_hex(),
            timestamp=int(block["timestamp"]),
            base_fee=int(block.get("baseFeePerGas") or 0),
        )

    async def logs(self, address: str, topics: Sequence[Any], from_block: int, to_block: int) -> list[Log]:
        async with self._boundary("eth_getLogs"):
            raw = await self.w3.eth.get_logs(
                {
                    "address": _address(address),
                    "topics": list(topics),
                    "fromBlock": from_block,
                    "toBlock": to_block,
                }
            )
        return [_log(item) for item in raw]

    async def fee_history(self, blocks: int, percentile: float) -> tuple[list[int], list[int]]:
        """Base fees of the last ``blocks`` blocks and the next, and each block's priority fee at
        ``percentile`` (empty where the node keeps no history)."""
        async with self._boundary("eth_feeHistory"):
            history: Any = await self.w3.eth.fee_history(blocks, "latest", [percentile])
        base = [int(x) for x in history.get("baseFeePerGas") or []]
        rewards = [int(r[0]) for r in history.get("reward") or [] if r]
        return base, rewards

    async def nonce(self, address: str, block: str = "pending") -> int:
        async with self._boundary("eth_getTransactionCount"):
            return int(await self.w3.eth.get_transaction_count(_address(address), block))  # type: ignore[arg-type]

    async def balance(self, address: str) -> int:
        async with self._boundary("eth_getBalance"):
            return int(await self.w3.eth.get_balance(_address(address)))

    async def estimate_gas(self, transaction: dict[str, Any]) -> int:
        async with self._boundary("eth_estimateGas"):
            return int(await self.w3.eth.estimate_gas(transaction))  # type: ignore[arg-type]

    async def call(self, transaction: dict[str, Any]) -> bytes:
        async with self._boundary("eth_call"):
            return bytes(await self.w3.eth.call(transaction))  # type: ignore[arg-type]

    async def send_raw(self, raw: bytes) -> str:
        async with self._boundary("eth_sendRawTransaction"):
            return HexBytes(await self.w3.eth.send_raw_transaction(raw)).to_0x_hex()

    async def receipt(self, transaction_hash: str, logs_of: str | None = None) -> Receipt | None:
        """The receipt, or None while the transaction is not mined (or unknown). With ``logs_of``, only
        that contract's logs are kept."""
        keep = logs_of.lower() if logs_of is not None else None
        if self._raw_receipts:
            raw = await self.request("eth_getTransactionReceipt", [transaction_hash])
            if raw is None or raw.get("blockNumber") is None:
                return None
            return Receipt(
                transaction_hash=raw["transactionHash"],
                status=int(raw["status"], 16),
                block_number=int(raw["blockNumber"], 16),
                block_hash=raw["blockHash"],
                gas_used=int(raw["gasUsed"], 16),
                effective_gas_price=int(raw.get("effectiveGasPrice") or "0x0", 16),
                logs=tuple(_json_log(item) for item in raw["logs"] if keep is None or item["address"].lower() == keep),
                contract_address=to_checksum_address(raw["contractAddress"]) if raw.get("contractAddress") else None,
            )
        async with self._boundary("eth_getTransactionReceipt"):
            try:
                formatted: Any = await self.w3.eth.get_transaction_receipt(HexStr(transaction_hash))
            except TransactionNotFound:
                return None
        if formatted is None or formatted.get("blockNumber") is None:
            return None
        return Receipt(
            transaction_hash=HexBytes(formatted["transactionHash"]).to_0x_hex(),
            status=int(formatted["status"]),
            block_number=int(formatted["blockNumber"]),
            block_hash=HexBytes(formatted["blockHash"]).to_0x_hex(),
            gas_used=int(formatted["gasUsed"]),
            effective_gas_price=int(formatted.get("effectiveGasPrice") or 0),
            logs=tuple(
                _log(item) for item in formatted["logs"] if keep is None or str(item["address"]).lower() == keep
            ),
            contract_address=str(formatted["contractAddress"]) if formatted.get("contractAddress") else None,
        )

    async def request(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (``evm_mine`` and the like on dev chains)."""
        async with self._boundary(method):
            response: Any = await self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise ChainRequestRefused(f"{method}: {response['error']}")
        return response.get("result")


def _address(value: str) -> ChecksumAddress:
    return ChecksumAddress(HexAddress(HexStr(value)))


def _json_log(item: dict[str, Any]) -> Log:
    return Log(
        address=item["address"],
        topics=tuple(bytes.fromhex(t[2:]) for t in item["topics"]),
        data=bytes.fromhex(item["data"][2:]),
        block_number=int(item["blockNumber"], 16),
        block_hash=item["blockHash"],
        transaction_hash=item["transactionHash"],
        log_index=int(item["logIndex"], 16),
    )


def _log(item: Any) -> Log:
    return Log(
        address=str(item["address"]),
        topics=tuple(bytes(HexBytes(t)) for t in item["topics"]),
        data=bytes(HexBytes(item["data"])),
        block_number=int(item["blockNumber"]),
        block_hash=HexBytes(item["blockHash"]).to_0x_hex(),
        transaction_hash=HexBytes(item["transactionHash"]).to_0x_hex(),
        log_index=int(item["logIndex"]),
    )
