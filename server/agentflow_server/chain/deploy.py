"""Deploying the settlement contract, and the test tokens and funded agents of a dev chain."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from .contract import SETTLEMENT, deployment_code, encode_call
from .relayer import Relayer
from .rpc import ChainError, Receipt

log = logging.getLogger("agentflow.chain.deploy")

DEV_TOKENS: dict[str, tuple[str, tuple[object, ...]]] = {
    "USDC": ("TestToken", ("USD Coin (dev)", "USDC", 6)),
    "USDT": ("NoReturnToken", ()),
    "DAI": ("TestToken", ("Dai Stablecoin (dev)", "DAI", 18)),
    "WETH": ("WETH9", ()),
}
"""The dev chain's tokens: the real decimals, USDT without return values, WETH as WETH9."""


def dev_account(name: str) -> LocalAccount:
    """A deterministic account for dev chains only: its key is derivable by anyone."""
    account: LocalAccount = Account.from_key(keccak(text=f"agentflow dev account: {name}"))
    return account


async def transact(relayer: Relayer, to: str | None, data: bytes, value: int = 0) -> Receipt:
    """Send and wait for a successful receipt (deployments and dev set-up; settlement has its own path)."""
    signed = await relayer.send(to, data, value)
    receipt = await relayer.wait([signed])
    if receipt.status != 1:
        raise ChainError(f"transaction {receipt.transaction_hash} reverted")
    return receipt


async def deploy(relayer: Relayer, contract: str, *args: object) -> str:
    """Deploy ``contract`` from the relayer's account; its address."""
    receipt = await transact(relayer, None, deployment_code(contract, *args))
    if receipt.contract_address is None:
        raise ChainError(f"deploying {contract}: the receipt names no contract")
    return receipt.contract_address


async def deploy_settlement(relayer: Relayer, fee_recipients: Sequence[str], exit_delay: int) -> str:
    """The settlement contract, owned and operated by the relayer's account."""
    return await deploy(relayer, SETTLEMENT, relayer.address, relayer.address, list(fee_recipients), exit_delay)


async def deploy_dev_tokens(relayer: Relayer) -> dict[str, str]:
    """The dev tokens, minted by the relayer's account; their addresses by symbol."""
    return {symbol: await deploy(relayer, name, *args) for symbol, (name, args) in DEV_TOKENS.items()}


@dataclass(frozen=True)
class DevAgent:
    """A funded dev agent: its account and what it deposited."""

    name: str
    account: LocalAccount
    deposits: Mapping[str, int]


async def fund_dev_agent(
    operator: Relayer,
    agent: Relayer,
    settlement: str,
    tokens: Mapping[str, str],
    deposits: Mapping[str, int],
    gas_money: int = 10**18,
) -> None:
    """Give a dev agent ETH and tokens from the operator, and deposit ``deposits`` (base units by symbol,
    ETH included) into the settlement contract for it, signed by the agent itself."""
    await transact(operator, agent.address, b"", value=gas_money + deposits.get("ETH", 0))
    for symbol, amount in deposits.items():
        if symbol == "ETH":
            await transact(agent, settlement, encode_call("depositETH", agent.address), value=amount)
            continue
        token = tokens[symbol]
        name = DEV_TOKENS[symbol][0]
        if name == "WETH9":
            await transact(operator, agent.address, b"", value=amount)
            await transact(agent, token, encode_call("deposit", contract=name), value=amount)
        else:
            await transact(operator, token, encode_call("mint", agent.address, amount, contract=name))
        await transact(agent, token, encode_call("approve", settlement, amount, contract=name))
        await transact(agent, settlement, encode_call("depositToken", token, agent.address, amount))
