"""The settlement contract's rules, on a real node (anvil): deposits, batches that execute once, payees that
cannot receive, skipped items, fees, the exit hatch and who may change what."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.logs import DISCARD

from agentflow_server.chain.artifacts import artifact

from .anvil import ROOT, anvil

ETH = "0x0000000000000000000000000000000000000000"
EXIT_DELAY = 3 * 24 * 3600
USDC_UNIT = 10**6


class Chain:
    """Deployed contracts and named accounts on one anvil chain."""

    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        (
            self.owner,
            self.operator,
            self.platform,
            self.network,
            self.agent,
            self.staking,
            self.alice,
            self.bob,
            self.carol,
            self.dave,
        ) = w3.eth.accounts[:10]
        self.fee_recipients = [self.platform, self.network, self.agent, self.staking]
        self.settlement = self.deploy("AgentFlowSettlement", self.owner, self.operator, self.fee_recipients, EXIT_DELAY)
        self.usdc = self.deploy("TestToken", "USD Coin (dev)", "USDC", 6)
        self.dai = self.deploy("TestToken", "Dai (dev)", "DAI", 18)
        self.usdt = self.deploy("NoReturnToken")
        self.weth = self.deploy("WETH9")
        for who in (self.alice, self.bob):
            self.usdc.functions.mint(who, 1_000_000 * USDC_UNIT).transact({"from": self.owner})
            self.dai.functions.mint(who, 1_000_000 * 10**18).transact({"from": self.owner})
            self.usdt.functions.mint(who, 1_000_000 * USDC_UNIT).transact({"from": self.owner})
            self.weth.functions.deposit().transact({"from": who, "value": 100 * 10**18})

    def deploy(self, name: str, *args: Any) -> Contract:
        compiled = artifact(name)
        factory = self.w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
        tx = factory.constructor(*args).transact({"from": self.owner})
        address = self.w3.eth.wait_for_transaction_receipt(tx).contractAddress
        return self.w3.eth.contract(address=address, abi=compiled.abi)

    def transact(self, call: Any, sender: str, value: int = 0) -> Any:
        tx = call.transact({"from": sender, "value": value})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt.status == 1
        return receipt

    def deposit(self, token: Contract | None, who: str, amount: int, beneficiary: str | None = None) -> Any:
        beneficiary = beneficiary or who
        if token is None:
            return self.transact(self.settlement.functions.depositETH(beneficiary), who, value=amount)
        self.transact(token.functions.approve(self.settlement.address, amount), who)
        return self.transact(self.settlement.functions.depositToken(token.address, beneficiary, amount), who)

    def held(self, token: Contract | None, who: str) -> int:
        return int(self.settlement.functions.balanceOf(ETH if token is None else token.address, who).call())

    def settle(self, batch_id: int, groups: list[tuple[Contract | None, list[tuple[str, str, int, int]]]]) -> Any:
        payload = [(ETH if token is None else token.address, items) for token, items in groups]
        return self.transact(self.settlement.functions.settle(batch_id, payload), self.operator)

    def events(self, receipt: Any, name: str) -> list[Any]:
        # The receipt also holds the tokens' own logs: those are not this event.
        return list(self.settlement.events[name]().process_receipt(receipt, errors=DISCARD))

    @contextlib.contextmanager
    def reverts(self, error: str) -> Iterator[None]:
        """Expect the contract to revert with custom error ``error`` (its name)."""
        abi = next(e for e in self.settlement.abi if e["type"] == "error" and e["name"] == error)
        signature = f"{error}({','.join(i['type'] for i in abi['inputs'])})"
        with pytest.raises(ContractCustomError) as raised:
            yield
        assert str(raised.value.data).removeprefix("0x").startswith(keccak(text=signature)[:4].hex())


@pytest.fixture(scope="module")
def deployed() -> Iterator[Chain]:
    with anvil() as w3:
        yield Chain(w3)


@pytest.fixture
def chain(deployed: Chain) -> Iterator[Chain]:
    """The deployed chain, rolled back after each test."""
    snapshot = deployed.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield deployed
    deployed.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


def balance_of(token: Contract, who: str) -> int:
    return int(token.functions.balanceOf(who).call())


# -- deposits ---------------------------------------------------------------------------------------------


def test_eth_deposits_credit_the_beneficiary_and_plain_transfers_the_sender(chain: Chain) -> None:
    receipt = chain.deposit(None, chain.alice, 5 * 10**18, beneficiary=chain.bob)
    [event] = chain.events(receipt, "Deposited")
    assert event.args.token == ETH
    assert event.args.beneficiary == chain.bob
    assert event.args.sender == chain.alice
    assert event.args.amount == 5 * 10**18
    tx = chain.w3.eth.send_transaction({"from": chain.alice, "to": chain.settlement.address, "value": 10**18})
    assert chain.w3.eth.wait_for_transaction_receipt(tx).status == 1
    assert chain.held(None, chain.bob) == 5 * 10**18
    assert chain.held(None, chain.alice) == 10**18


@pytest.mark.parametrize("name", ["usdc", "usdt", "dai", "weth"])
def test_token_deposits_credit_what_arrived(chain: Chain, name: str) -> None:
    token = getattr(chain, name)
    before = balance_of(token, chain.alice)
    receipt = chain.deposit(token, chain.alice, 12_345, beneficiary=chain.carol)
    [event] = chain.events(receipt, "Deposited")
    assert (event.args.token, event.args.beneficiary, event.args.amount) == (token.address, chain.carol, 12_345)
    assert chain.held(token, chain.carol) == 12_345
    assert balance_of(token, chain.alice) == before - 12_345
    assert balance_of(token, chain.settlement.address) == 12_345


def test_deposits_refuse_zero_amounts_zero_beneficiaries_and_eth_as_a_token(chain: Chain) -> None:
    with chain.reverts("ZeroAmount"):
        chain.settlement.functions.depositETH(chain.alice).transact({"from": chain.alice, "value": 0})
    with chain.reverts("ZeroAddress"):
        chain.settlement.functions.depositETH(ETH).transact({"from": chain.alice, "value": 1})
    with chain.reverts("ZeroAmount"):
        chain.settlement.functions.depositToken(chain.usdc.address, chain.alice, 0).transact({"from": chain.alice})
    with chain.reverts("NotAToken"):
        chain.settlement.functions.depositToken(ETH, chain.alice, 1).transact({"from": chain.alice})


# -- settlement -------------------------------------------------------------------------------------------


def test_a_batch_pays_every_token_directly_and_accrues_fees(chain: Chain) -> None:
    chain.deposit(None, chain.alice, 10 * 10**18)
    for token in (chain.usdc, chain.usdt, chain.dai, chain.weth):
        chain.deposit(token, chain.alice, 1_000_000)
    carol_eth = chain.w3.eth.get_balance(chain.carol)
    receipt = chain.settle(
        1,
        [
            (None, [(chain.alice, chain.carol, 10**18, 10**15)]),
            (chain.usdc, [(chain.alice, chain.carol, 100_000, 1_000), (chain.alice, chain.dave, 50_000, 500)]),
            (chain.usdt, [(chain.alice, chain.carol, 200_000, 2_000)]),
            (chain.dai, [(chain.alice, chain.dave, 300_000, 3_000)]),
            (chain.weth, [(chain.alice, chain.dave, 400_000, 4_000)]),
        ],
    )
    [settled] = chain.events(receipt, "BatchSettled")
    assert (settled.args.batchId, settled.args["items"], settled.args.skipped) == (1, 6, 0)
    assert chain.w3.eth.get_balance(chain.carol) == carol_eth + 10**18
    assert balance_of(chain.usdc, chain.carol) == 100_000
    assert balance_of(chain.usdc, chain.dave) == 50_000
    assert balance_of(chain.usdt, chain.carol) == 200_000
    assert balance_of(chain.dai, chain.dave) == 300_000
    assert balance_of(chain.weth, chain.dave) == 400_000
    assert chain.held(None, chain.alice) == 10 * 10**18 - 10**18 - 10**15
    assert chain.held(chain.usdc, chain.alice) == 1_000_000 - 151_500
    assert chain.held(chain.usdt, chain.alice) == 1_000_000 - 202_000
    fees = chain.settlement.functions.accruedFees
    assert fees(ETH).call() == 10**15
    assert fees(chain.usdc.address).call() == 1_500
    assert fees(chain.usdt.address).call() == 2_000
    assert chain.settlement.functions.lastBatchId().call() == 1
    # What the contract holds is what depositors hold plus the fees not paid out.
    assert balance_of(chain.usdc, chain.settlement.address) == chain.held(chain.usdc, chain.alice) + 1_500


def test_a_payout_to_the_agents_own_address_is_a_withdrawal(chain: Chain) -> None:
    chain.deposit(chain.usdc, chain.alice, 1_000_000)
    before = balance_of(chain.usdc, chain.alice)
    chain.settle(1, [(chain.usdc, [(chain.alice, chain.alice, 600_000, 0)])])
    assert balance_of(chain.usdc, chain.alice) == before + 600_000
    assert chain.held(chain.usdc, chain.alice) == 400_000


def test_a_batch_executes_once_and_only_in_order(chain: Chain) -> None:
    chain.deposit(chain.usdc, chain.alice, 1_000_000)
    items = [(chain.alice, chain.carol, 100_000, 0)]
    chain.settle(1, [(chain.usdc, items)])
    # The same batch again (a retry after a crash) cannot pay twice...
    with chain.reverts("UnexpectedBatchId"):
        chain.settlement.functions.settle(1, [(chain.usdc.address, items)]).transact({"from": chain.operator})
    # ...nor can a batch skip ahead.
    with chain.reverts("UnexpectedBatchId"):
        chain.settlement.functions.settle(3, [(chain.usdc.address, items)]).transact({"from": chain.operator})
    assert balance_of(chain.usdc, chain.carol) == 100_000
    chain.settle(2, [(chain.usdc, items)])
    assert balance_of(chain.usdc, chain.carol) == 200_000


def test_only_the_operator_settles(chain: Chain) -> None:
    chain.deposit(chain.usdc, chain.alice, 1_000_000)
    for sender in (chain.owner, chain.alice):
        with chain.reverts("NotOperator"):
            chain.settlement.functions.settle(1, [(chain.usdc.address, [(chain.alice, sender, 1, 0)])]).transact(
                {"from": sender}
            )
    assert chain.settlement.functions.lastBatchId().call() == 0


@pytest.mark.parametrize("burn_gas", [False, True], ids=["reverting", "gas-burning"])
def test_an_eth_payee_that_cannot_receive_is_credited_and_the_batch_goes_through(chain: Chain, burn_gas: bool) -> None:
    payee = chain.deploy("RejectingPayee", burn_gas)
    chain.deposit(None, chain.alice, 10**18)
    carol = chain.w3.eth.get_balance(chain.carol)
    receipt = chain.settle(
        1,
        [(None, [(chain.alice, payee.address, 3 * 10**17, 0), (chain.alice, chain.carol, 10**17, 0)])],
    )
    [credited] = chain.events(receipt, "PayoutCredited")
    assert (credited.args.index, credited.args.payee, credited.args.amount) == (0, payee.address, 3 * 10**17)
    assert chain.held(None, payee.address) == 3 * 10**17
    assert chain.w3.eth.get_balance(payee.address) == 0
    assert chain.w3.eth.get_balance(chain.carol) == carol + 10**17
    assert chain.held(None, chain.alice) == 6 * 10**17
    # The gas a payee may burn is bounded, so one bad recipient costs the batch little.
    assert receipt.gasUsed < 200_000


def test_a_token_payee_that_cannot_receive_is_credited(chain: Chain) -> None:
    token = chain.deploy("BlockingToken")
    chain.transact(token.functions.mint(chain.alice, 1_000_000), chain.owner)
    chain.deposit(token, chain.alice, 1_000_000)
    chain.transact(token.functions.setBlocked(chain.dave, True), chain.owner)
    receipt = chain.settle(1, [(token, [(chain.alice, chain.carol, 1_000, 0), (chain.alice, chain.dave, 2_000, 0)])])
    [credited] = chain.events(receipt, "PayoutCredited")
    assert (credited.args.index, credited.args.payee, credited.args.amount) == (1, chain.dave, 2_000)
    assert balance_of(token, chain.carol) == 1_000
    assert balance_of(token, chain.dave) == 0
    assert chain.held(token, chain.dave) == 2_000


def test_an_item_the_depositor_can_no_longer_cover_is_skipped_alone(chain: Chain) -> None:
    chain.deposit(chain.usdc, chain.alice, 1_000)
    chain.deposit(chain.usdc, chain.bob, 5_000)
    receipt = chain.settle(
        1,
        [(chain.usdc, [(chain.alice, chain.carol, 1_000, 1), (chain.bob, chain.carol, 4_000, 10)])],
    )
    [skipped] = chain.events(receipt, "ItemSkipped")
    assert (skipped.args.index, skipped.args["from"]) == (0, chain.alice)
    [settled] = chain.events(receipt, "BatchSettled")
    assert (settled.args["items"], settled.args.skipped) == (2, 1)
    assert chain.held(chain.usdc, chain.alice) == 1_000
    assert chain.held(chain.usdc, chain.bob) == 990
    assert balance_of(chain.usdc, chain.carol) == 4_000
    assert chain.settlement.functions.accruedFees(chain.usdc.address).call() == 10


# -- fees -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [1, 7, 9_999, 10**18 + 3])
def test_fees_are_split_40_30_20_10_and_the_parts_add_up(chain: Chain, total: int) -> None:
    chain.deposit(chain.dai, chain.alice, total)
    chain.settle(1, [(chain.dai, [(chain.alice, chain.carol, 0, total)])])
    before = [balance_of(chain.dai, r) for r in chain.fee_recipients]
    receipt = chain.transact(chain.settlement.functions.distributeFees(chain.dai.address), chain.carol)
    [event] = chain.events(receipt, "FeesDistributed")
    assert event.args.amount == total
    paid = [balance_of(chain.dai, r) - b for r, b in zip(chain.fee_recipients, before, strict=True)]
    network, agent, staking = total * 3_000 // 10_000, total * 2_000 // 10_000, total * 1_000 // 10_000
    assert paid == [total - network - agent - staking, network, agent, staking]
    assert sum(paid) == total
    assert chain.settlement.functions.accruedFees(chain.dai.address).call() == 0
    assert balance_of(chain.dai, chain.settlement.address) == 0


def test_eth_fees_reach_the_recipients_and_a_refusing_one_is_credited(chain: Chain) -> None:
    payee = chain.deploy("RejectingPayee", False)
    recipients = [chain.platform, chain.network, payee.address, chain.staking]
    chain.transact(chain.settlement.functions.setFeeRecipients(recipients), chain.owner)
    chain.deposit(None, chain.alice, 10**18)
    chain.settle(1, [(None, [(chain.alice, chain.carol, 0, 10**16)])])
    staking = chain.w3.eth.get_balance(chain.staking)
    receipt = chain.transact(chain.settlement.functions.distributeFees(ETH), chain.carol)
    [credited] = chain.events(receipt, "FeeCredited")
    assert (credited.args.recipient, credited.args.amount) == (payee.address, 2 * 10**15)
    assert chain.held(None, payee.address) == 2 * 10**15
    assert chain.w3.eth.get_balance(chain.staking) == staking + 10**15


# -- the exit hatch ---------------------------------------------------------------------------------------


def increase_time(chain: Chain, seconds: int) -> None:
    chain.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def test_a_depositor_exits_with_what_was_not_settled_after_the_delay(chain: Chain) -> None:
    chain.deposit(chain.usdt, chain.alice, 500_000)
    chain.deposit(None, chain.alice, 2 * 10**18)
    with chain.reverts("ExitNotRequested"):
        chain.settlement.functions.exit(chain.usdt.address).transact({"from": chain.alice})
    chain.transact(chain.settlement.functions.requestExit(), chain.alice)
    with chain.reverts("ExitNotReady"):
        chain.settlement.functions.exit(chain.usdt.address).transact({"from": chain.alice})
    # The service keeps settling what it accepted during the delay.
    chain.settle(1, [(chain.usdt, [(chain.alice, chain.carol, 100_000, 1_000)])])
    increase_time(chain, EXIT_DELAY)
    usdt = balance_of(chain.usdt, chain.alice)
    receipt = chain.transact(chain.settlement.functions.exit(chain.usdt.address), chain.alice)
    [exited] = chain.events(receipt, "Exited")
    assert exited.args.amount == 399_000
    assert balance_of(chain.usdt, chain.alice) == usdt + 399_000
    assert chain.held(chain.usdt, chain.alice) == 0
    eth = chain.w3.eth.get_balance(chain.alice)
    receipt = chain.transact(chain.settlement.functions.exit(ETH), chain.alice)
    gas = receipt.gasUsed * receipt.effectiveGasPrice
    assert chain.w3.eth.get_balance(chain.alice) == eth + 2 * 10**18 - gas
    with chain.reverts("ZeroAmount"):
        chain.settlement.functions.exit(ETH).transact({"from": chain.alice})
    # An item the exit emptied is skipped, not the batch.
    receipt = chain.settle(2, [(chain.usdt, [(chain.alice, chain.carol, 1, 0)])])
    assert len(chain.events(receipt, "ItemSkipped")) == 1


def test_a_cancelled_exit_must_be_requested_again(chain: Chain) -> None:
    chain.deposit(chain.usdc, chain.bob, 1_000)
    chain.transact(chain.settlement.functions.requestExit(), chain.bob)
    chain.transact(chain.settlement.functions.cancelExit(), chain.bob)
    increase_time(chain, EXIT_DELAY)
    with chain.reverts("ExitNotRequested"):
        chain.settlement.functions.exit(chain.usdc.address).transact({"from": chain.bob})
    with chain.reverts("ExitNotRequested"):
        chain.settlement.functions.cancelExit().transact({"from": chain.bob})


# -- administration ---------------------------------------------------------------------------------------


def test_only_the_owner_changes_the_operator_and_fee_recipients(chain: Chain) -> None:
    for call in (
        chain.settlement.functions.setOperator(chain.alice),
        chain.settlement.functions.setFeeRecipients([chain.alice] * 4),
    ):
        with chain.reverts("OwnableUnauthorizedAccount"):
            call.transact({"from": chain.operator})
    with chain.reverts("ZeroAddress"):
        chain.settlement.functions.setOperator(ETH).transact({"from": chain.owner})
    with chain.reverts("ZeroAddress"):
        chain.settlement.functions.setFeeRecipients([chain.alice, ETH, chain.alice, chain.alice]).transact(
            {"from": chain.owner}
        )
    chain.transact(chain.settlement.functions.setOperator(chain.bob), chain.owner)
    assert chain.settlement.functions.operator().call() == chain.bob
    chain.transact(chain.settlement.functions.setFeeRecipients([chain.dave] * 4), chain.owner)
    assert chain.settlement.functions.feeRecipients().call() == [chain.dave] * 4


def test_ownership_moves_in_two_steps(chain: Chain) -> None:
    chain.transact(chain.settlement.functions.transferOwnership(chain.carol), chain.owner)
    assert chain.settlement.functions.owner().call() == chain.owner
    chain.transact(chain.settlement.functions.acceptOwnership(), chain.carol)
    assert chain.settlement.functions.owner().call() == chain.carol
    with chain.reverts("OwnableUnauthorizedAccount"):
        chain.settlement.functions.setOperator(chain.alice).transact({"from": chain.owner})


def test_the_committed_artifacts_are_current() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "compile-contracts"), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_logic_errors_are_not_swallowed(chain: Chain) -> None:
    # A plain revert (no custom error) from a token still surfaces: USDT-style transferFrom without approval.
    with pytest.raises(ContractLogicError):
        chain.settlement.functions.depositToken(chain.usdt.address, chain.bob, 10).transact({"from": chain.bob})
