"""The relayer's fee rules and the circuit breaker, on their own (the relayer against the embedded EVM)."""

from __future__ import annotations

import random

from web3.providers.eth_tester import AsyncEthereumTesterProvider

from agentflow_server.breaker import BreakerState, CircuitBreaker
from agentflow_server.chain.contract import Item, encode_call, encode_settle
from agentflow_server.chain.deploy import dev_account
from agentflow_server.chain.relayer import Relayer, RelayerConfig
from agentflow_server.chain.rpc import Rpc


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_repeated_failures_and_probes_once_after_its_timeout() -> None:
    clock = Clock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock, on_change=changes.append)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_success()  # a success in between starts the count again
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.retry_after() == 10
    clock.now = 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()  # one probe...
    assert not breaker.allow()  # ...at a time
    breaker.record_failure()  # the probe failed: open again, for a full timeout
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 10
    clock.now = 20
    assert breaker.allow()
    breaker.abandon()  # a cancelled probe frees the slot
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.CLOSED]


async def test_fees_follow_the_base_fee_under_the_cap_and_replacements_pay_at_least_12_5_percent_more() -> None:
    rpc = Rpc(AsyncEthereumTesterProvider())
    chain_id = await rpc.chain_id()
    relayer = Relayer(rpc, dev_account("fees"), chain_id, RelayerConfig(default_priority_fee=10**9))
    latest = await rpc.block("latest")
    assert latest is not None
    max_fee, priority = await relayer.market_fees()
    # No fee history on this chain: the default tip, over twice the base fee.
    assert (max_fee, priority) == (2 * latest.base_fee + 10**9, 10**9)

    capped = Relayer(rpc, dev_account("fees"), chain_id, RelayerConfig(max_fee_per_gas=latest.base_fee))
    assert await capped.market_fees() == (latest.base_fee, min(10**9, latest.base_fee))

    signed = await relayer.prepare(dev_account("payee").address, b"", value=1, gas=21_000)
    replacement = await relayer.replace(signed)
    assert replacement is not None
    assert replacement.nonce == signed.nonce
    assert replacement.hash != signed.hash
    assert replacement.max_fee_per_gas * 1000 >= signed.max_fee_per_gas * 1125
    assert replacement.max_priority_fee_per_gas * 1000 >= signed.max_priority_fee_per_gas * 1125
    # Under a cap that leaves no room for +12.5%, there is no valid replacement.
    tight = Relayer(rpc, dev_account("fees"), chain_id, RelayerConfig(max_fee_per_gas=signed.max_fee_per_gas))
    assert await tight.replace(signed) is None
    # Nonces are handed out in order.
    following = await relayer.prepare(dev_account("payee").address, b"", value=1, gas=21_000)
    assert following.nonce == signed.nonce + 1


def test_the_hand_laid_settle_calldata_is_what_eth_abi_encodes() -> None:
    rng = random.Random(3)

    def address() -> str:
        return "0x" + rng.randbytes(20).hex()

    for groups in ([], [(address(), [])], [(address(), [Item(address(), address(), 0, 2**256 - 1)])]):
        assert encode_settle(7, groups) == encode_call("settle", 7, _plain(groups))
    groups = [
        (address(), [Item(address(), address(), rng.randrange(2**200), rng.randrange(2**64)) for _ in range(n)])
        for n in (3, 1, 40)
    ]
    assert encode_settle(2**255, groups) == encode_call("settle", 2**255, _plain(groups))


def _plain(groups: list[tuple[str, list[Item]]]) -> list[tuple[str, list[tuple[str, str, int, int]]]]:
    return [(token, [(i.payer, i.payee, i.amount, i.fee) for i in items]) for token, items in groups]
