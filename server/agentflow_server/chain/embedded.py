"""The embedded chain: an in-process EVM (py-evm through eth-tester) with the settlement contract and the
dev tokens deployed, for a server that runs with nothing else installed.

It lives in memory: a restart starts a new chain, which the ledger's chain identity check refuses for an
existing ledger. Use ``AGENTFLOW_CHAIN_RPC_URL`` for a chain that outlives the process.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from web3.providers.eth_tester import AsyncEthereumTesterProvider
from web3.types import Wei

from .deploy import deploy_dev_tokens, deploy_settlement, dev_account
from .relayer import Relayer, RelayerConfig
from .rpc import Rpc

EXIT_DELAY = 7 * 24 * 3600
OPERATOR_FUNDS = 100_000 * 10**18


@dataclass(frozen=True)
class EmbeddedChain:
    """A started in-process chain: where the contracts are and who operates them."""

    rpc: Rpc
    operator: LocalAccount
    settlement: str
    tokens: dict[str, str]
    fee_recipients: tuple[str, str, str, str]


async def start_embedded_chain(relayer_config: RelayerConfig | None = None) -> EmbeddedChain:
    """A new in-process chain with the operator funded and the contracts deployed."""
    provider = AsyncEthereumTesterProvider()
    # A random genesis extra-data makes each start a chain of its own, which the ledger's identity check
    # tells apart (two starts in the same second would otherwise share a genesis hash and addresses).
    genesis = PyEVMBackend.generate_genesis_params(overrides={"extra_data": secrets.token_bytes(32)})
    provider.ethereum_tester = EthereumTester(PyEVMBackend(genesis_parameters=genesis))
    rpc = Rpc(provider)
    operator = dev_account("operator")
    # eth-tester's own accounts are unlocked and rich: one pays the operator's way.
    funder = (await rpc.w3.eth.accounts)[0]
    transaction = await rpc.w3.eth.send_transaction(
        {"from": funder, "to": operator.address, "value": Wei(OPERATOR_FUNDS)}
    )
    await rpc.w3.eth.wait_for_transaction_receipt(transaction)
    relayer = Relayer(rpc, operator, await rpc.chain_id(), relayer_config)
    recipients = tuple(dev_account(f"fees: {part}").address for part in ("platform", "network", "agent", "staking"))
    settlement = await deploy_settlement(relayer, recipients, EXIT_DELAY)
    tokens = await deploy_dev_tokens(relayer)
    return EmbeddedChain(
        rpc, operator, settlement, tokens, (recipients[0], recipients[1], recipients[2], recipients[3])
    )
