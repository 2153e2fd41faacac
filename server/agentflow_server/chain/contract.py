"""The settlement contract as the service speaks to it: calls encoded, events decoded (with eth-abi, from
the committed ABI), reads made through :class:`~.rpc.Rpc`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from .artifacts import artifact
from .rpc import ChainError, Log, Rpc

ETH_ADDRESS = "0x0000000000000000000000000000000000000000"
"""The contract's "token" address for native ETH."""
SETTLEMENT = "AgentFlowSettlement"


@dataclass(frozen=True, slots=True)
class Item:
    """One settlement item: ``amount`` from ``payer``'s deposit to ``payee``, ``fee`` to the fees."""

    payer: str
    payee: str
    amount: int
    fee: int


@dataclass(frozen=True, slots=True)
class Deposited:
    token: str
    beneficiary: str
    sender: str
    amount: int
    log: Log


@dataclass(frozen=True, slots=True)
class BatchSettled:
    batch_id: int
    items: int
    skipped: int


@dataclass(frozen=True, slots=True)
class PayoutCredited:
    batch_id: int
    index: int
    token: str
    payee: str
    amount: int


@dataclass(frozen=True, slots=True)
class ItemSkipped:
    batch_id: int
    index: int
    token: str
    payer: str


def _signature(entry: dict[str, Any]) -> str:
    def kind(item: dict[str, Any]) -> str:
        if item["type"].startswith("tuple"):
            return "(" + ",".join(kind(c) for c in item["components"]) + ")" + str(item["type"])[5:]
        return str(item["type"])

    return f"{entry['name']}({','.join(kind(i) for i in entry['inputs'])})"


@functools.cache
def _abi(contract: str = SETTLEMENT) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["type"], e["name"]): e for e in artifact(contract).abi if "name" in e}


@functools.cache
def topic(event: str) -> bytes:
    """The first topic of ``event``'s logs."""
    return keccak(text=_signature(_abi()[("event", event)]))


@functools.cache
def selector(function: str, contract: str = SETTLEMENT) -> bytes:
    return keccak(text=_signature(_abi(contract)[("function", function)]))[:4]


def _address(word: bytes) -> str:
    return str(to_checksum_address(word[-20:]))


def _types(entries: list[dict[str, Any]]) -> list[str]:
    return [_signature({"name": "", "inputs": [entry]})[1:-1] for entry in entries]


def encode_call(function: str, *args: Any, contract: str = SETTLEMENT) -> bytes:
    """Calldata for ``function(args)`` of ``contract`` (the settlement contract unless named)."""
    entry = _abi(contract)[("function", function)]
    return selector(function, contract) + encode(_types(entry["inputs"]), list(args))


def deployment_code(contract: str, *args: Any) -> bytes:
    """``contract``'s creation code followed by its constructor arguments."""
    code = bytes.fromhex(artifact(contract).bytecode.removeprefix("0x"))
    inputs: list[dict[str, Any]] = next((e["inputs"] for e in artifact(contract).abi if e["type"] == "constructor"), [])
    return code + (encode(_types(inputs), list(args)) if inputs else b"")


def encode_settle(batch_id: int, groups: Sequence[tuple[str, Sequence[Item]]]) -> bytes:
    """Calldata for ``settle(batchId, [(token, [(from, to, amount, fee)])])``; items are numbered in this
    order across the groups.

    Laid out by hand (the ABI's head/tail encoding of this one signature): eth-abi's general encoder, with
    its per-value validation, took a tenth of a millisecond per item. A test holds it equal to eth-abi's.
    """
    word = _word
    parts = [selector("settle"), word(batch_id), word(64), word(len(groups))]
    # Each group is a dynamic tuple: its offset from the start of the offsets, then its own encoding.
    offset = 32 * len(groups)
    encoded_groups = []
    for token, items in groups:
        body = [_address_word(token), word(64), word(len(items))]
        for item in items:
            body += (_address_word(item.payer), _address_word(item.payee), word(item.amount), word(item.fee))
        encoded = b"".join(body)
        parts.append(word(offset))
        offset += len(encoded)
        encoded_groups.append(encoded)
    return b"".join(parts) + b"".join(encoded_groups)


def _word(value: int) -> bytes:
    if not 0 <= value < 2**256:
        raise ValueError(f"{value} does not fit a uint256")
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    raw = bytes.fromhex(address[2:] if address.startswith("0x") else address)
    if len(raw) != 20:
        raise ValueError(f"{address!r} is not a 20-byte address")
    return bytes(12) + raw


def decode_deposited(log: Log) -> Deposited:
    (amount,) = decode(["uint256"], log.data)
    return Deposited(_address(log.topics[1]), _address(log.topics[2]), _address(log.topics[3]), int(amount), log)


@dataclass(frozen=True, slots=True)
class FeePayout:
    """``FeesDistributed`` (recipient None) or ``FeeCredited`` (a recipient kept its part in the contract)."""

    token: str
    amount: int
    recipient: str | None
    log: Log


@dataclass(frozen=True, slots=True)
class Exited:
    account: str
    token: str
    amount: int
    log: Log


def decode_exited(log: Log) -> Exited:
    (amount,) = decode(["uint256"], log.data)
    return Exited(_address(log.topics[1]), _address(log.topics[2]), int(amount), log)


def decode_fee_payout(log: Log) -> FeePayout:
    (amount,) = decode(["uint256"], log.data)
    recipient = _address(log.topics[2]) if log.topics[0] == topic("FeeCredited") else None
    return FeePayout(_address(log.topics[1]), int(amount), recipient, log)


def decode_batch_logs(
    logs: Sequence[Log], contract: str
) -> tuple[BatchSettled | None, list[PayoutCredited], list[ItemSkipped]]:
    """The settlement events of one transaction's logs (other contracts' logs are ignored)."""
    settled: BatchSettled | None = None
    credited: list[PayoutCredited] = []
    skipped: list[ItemSkipped] = []
    contract = contract.lower()
    for log in logs:
        if log.address.lower() != contract or not log.topics:
            continue
        batch_id = int.from_bytes(log.topics[1], "big") if len(log.topics) > 1 else 0
        if log.topics[0] == topic("BatchSettled"):
            items, count = decode(["uint256", "uint256"], log.data)
            settled = BatchSettled(batch_id, int(items), int(count))
        elif log.topics[0] == topic("PayoutCredited"):
            index, amount = decode(["uint256", "uint256"], log.data)
            credited.append(
                PayoutCredited(batch_id, int(index), _address(log.topics[2]), _address(log.topics[3]), int(amount))
            )
        elif log.topics[0] == topic("ItemSkipped"):
            (index,) = decode(["uint256"], log.data)
            skipped.append(ItemSkipped(batch_id, int(index), _address(log.topics[2]), _address(log.topics[3])))
    return settled, credited, skipped


class SettlementContract:
    """Reads of a deployed settlement contract."""

    def __init__(self, rpc: Rpc, address: str) -> None:
        self.rpc = rpc
        self.address = str(to_checksum_address(address))

    async def _read(self, function: str, *args: Any) -> Any:
        return await read(self.rpc, self.address, function, *args)

    async def last_batch_id(self) -> int:
        return int(await self._read("lastBatchId"))

    async def balance_of(self, token: str, account: str) -> int:
        return int(await self._read("balanceOf", token, account))

    async def accrued_fees(self, token: str) -> int:
        return int(await self._read("accruedFees", token))

    async def operator(self) -> str:
        return str(to_checksum_address(await self._read("operator")))


async def read(rpc: Rpc, address: str, function: str, *args: Any, contract: str = SETTLEMENT) -> Any:
    """Call view ``function`` of ``contract`` at ``address``: its one value, or a tuple of several."""
    entry = _abi(contract)[("function", function)]
    data = await rpc.call({"to": address, "data": encode_call(function, *args, contract=contract)})
    if not data and entry["outputs"]:
        raise ChainError(f"no {contract} contract at {address} on this chain ({function}() returned nothing)")
    try:
        values = decode(_types(entry["outputs"]), data)
    except DecodingError as error:
        raise ChainError(f"{address}: {function}() returned what {contract} never would: {error}") from error
    return values[0] if len(values) == 1 else values
