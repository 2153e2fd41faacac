"""What ``agentflow dev`` adds on the embedded chain: funded agents with deposits and a payer key each."""

from __future__ import annotations

from dataclasses import dataclass

from .app import Service
from .auth.principal import Scope
from .chain.deploy import dev_account, fund_dev_agent
from .chain.relayer import Relayer

DEV_AGENTS = ("alice", "bob", "carol")
DEV_DEPOSITS = {
    "ETH": 10 * 10**18,
    "USDC": 10_000 * 10**6,
    "USDT": 10_000 * 10**6,
    "DAI": 10_000 * 10**18,
    "WETH": 5 * 10**18,
}
"""What each dev agent deposits, in base units."""


@dataclass(frozen=True)
class DevAgent:
    """A funded dev agent: its address, its (publicly derivable, dev-only) private key, a payer API key."""

    name: str
    address: str
    private_key: str
    api_key: str


async def fund_dev_agents(service: Service) -> list[DevAgent]:
    """Fund the dev agents on the service's embedded chain, deposit for them, wait until the deposits are
    credited, and give each a payer key bound to its address."""
    assert service.chain is not None
    assert service.keys is not None
    connection = service.chain.connection
    agents = []
    for name in DEV_AGENTS:
        account = dev_account(name)
        relayer = Relayer(connection.rpc, account, connection.identity.chain_id)
        await fund_dev_agent(
            connection.relayer, relayer, connection.identity.contract, connection.token_addresses, DEV_DEPOSITS
        )
        key = await service.keys.create(
            display_name=f"dev agent {name}",
            scope=Scope.PAYER,
            addresses=(account.address,),
            requests_per_minute=service.settings.rate_limit_per_minute,
            burst=service.settings.rate_limit_burst,
            expire_time_us=None,
        )
        agents.append(DevAgent(name, account.address, "0x" + bytes(account.key).hex(), key.secret))
    watcher = service.chain.watcher
    await watcher.credited_through(await connection.rpc.block_number() - watcher.confirmations + 1)
    return agents
