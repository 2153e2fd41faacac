"""``agentflow deposit``: sign and send a deposit to the settlement contract, then wait for the server to
credit it.

Where to deposit comes from the server (GetDepositInfo: the chain, the contract, the token's contract and
decimals, the confirmations it waits for); the transactions go through a chain node (``--rpc-url`` or
``AGENTFLOW_CHAIN_RPC_URL``) with the server's own chain boundary (:class:`~agentflow_server.chain.rpc.Rpc`,
web3 underneath) and :class:`~agentflow_server.chain.relayer.Relayer` (nonces, EIP-1559 fees, a replacement
when one is stuck). ETH is sent with ``depositETH(beneficiary)``; an ERC-20 token is approved for the contract
(reset to zero first where an allowance is left, as USDT insists) and moved with
``depositToken(token, beneficiary, amount)``. The credit is the ``deposit.confirmed`` event naming the
deposit's transaction.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from agentflow_payments.v1 import accounts_pb2

from . import units
from .accounts import balances_table
from .connection import Context
from .errors import CliError, ExitCode
from .output import fields

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from ..chain.relayer import Relayer
    from ..chain.rpc import Rpc

EMBEDDED_CHAIN_ID = 131_277_322_940_537
"""The chain id of eth-tester's in-process EVM: the dev server's embedded chain, which no node serves."""
ERC20 = "TestToken"
"""An OpenZeppelin ERC-20 artifact: its ABI encodes approve, allowance and balanceOf for any token."""


def signer(keystore: str | None, environ: dict[str, str] | None = None) -> LocalAccount:
    """The account that signs: from ``--keystore`` (its password from AGENTFLOW_KEYSTORE_PASSWORD or asked),
    else from AGENTFLOW_PRIVATE_KEY. The key itself is never shown, not even in an error."""
    from eth_account import Account

    env = environ if environ is not None else {}
    if keystore:
        try:
            document = json.loads(Path(keystore).read_text(encoding="utf-8"))
        except OSError as error:
            raise CliError(f"--keystore: cannot read {keystore}: {error.strerror or error}") from None
        except ValueError:
            raise CliError(f"--keystore: {keystore} is not a JSON keystore") from None
        password = env.get("AGENTFLOW_KEYSTORE_PASSWORD")
        if password is None:
            if not sys.stdin.isatty():
                raise CliError(
                    f"--keystore: no password for {keystore}",
                    hint="set AGENTFLOW_KEYSTORE_PASSWORD, or run on a terminal to be asked",
                )
            password = getpass.getpass(f"password of {keystore}: ")
        try:
            key = Account.decrypt(document, password)
        except (ValueError, KeyError, TypeError):
            raise CliError(f"--keystore: wrong password for {keystore}, or not a keystore") from None
        account: LocalAccount = Account.from_key(key)
        return account
    text = env.get("AGENTFLOW_PRIVATE_KEY", "").strip()
    if not text:
        raise CliError(
            "no key to sign the deposit with",
            hint="set AGENTFLOW_PRIVATE_KEY=0x..., or pass --keystore FILE "
            "(its password from AGENTFLOW_KEYSTORE_PASSWORD, or asked)",
            reason="NO_SIGNING_KEY",
        )
    try:
        account = Account.from_key(text)
    except Exception:  # eth-keys raises several kinds for a malformed key; none may echo it
        raise CliError(
            "AGENTFLOW_PRIVATE_KEY is not a private key", hint="give 32 bytes in hex: 0x and 64 hex digits"
        ) from None
    return account


def _no_node(info: accounts_pb2.GetDepositInfoResponse, target: str) -> CliError:
    if info.chain_id == EMBEDDED_CHAIN_ID:
        return CliError(
            f"the server at {target} settles on its embedded in-process chain, which no node serves: "
            "deposits cannot be sent to it from outside (`agentflow dev` funds its dev agents itself)",
            hint="to deposit, run a chain node (./node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil), start the "
            "server on it with AGENTFLOW_CHAIN_RPC_URL, AGENTFLOW_CONTRACT_ADDRESS and "
            "AGENTFLOW_OPERATOR_PRIVATE_KEY (README, 'On chain'), and pass --rpc-url or set AGENTFLOW_CHAIN_RPC_URL",
            reason="CHAIN_NODE_REQUIRED",
        )
    return CliError(
        f"a deposit is sent through a node of chain {info.chain_id}, and none was given",
        hint="pass --rpc-url URL or set AGENTFLOW_CHAIN_RPC_URL (the server's node will do)",
        reason="CHAIN_NODE_REQUIRED",
    )


async def deposit(ctx: Context) -> int:
    a = ctx.args
    account = signer(a.keystore, dict(ctx.environ))
    beneficiary = a.beneficiary or account.address
    info = await ctx.client.get_deposit_info(beneficiary, a.token)
    token = info.token
    amount = (
        int(units.from_decimal(a.amount, token.decimals, token.symbol))
        if a.decimal
        else int(units.base_units(a.amount))
    )
    if amount <= 0:
        raise CliError("AMOUNT: a deposit must be more than zero")
    url = a.rpc_url or ctx.environ.get("AGENTFLOW_CHAIN_RPC_URL")
    if not url:
        raise _no_node(info, ctx.connection.target)

    from ..chain.relayer import Relayer
    from ..chain.rpc import CallReverted, ChainRequestRefused, ChainUnavailable, Rpc

    rpc = Rpc.http(url, timeout=ctx.connection.timeout)
    shown = f"{units.to_decimal(str(amount), token.decimals)} {token.symbol}"
    try:
        async with asyncio.timeout(a.wait_timeout):
            try:
                chain_id = await rpc.chain_id()
                if chain_id != info.chain_id:
                    raise CliError(
                        f"--rpc-url: the node at {url} is chain {chain_id}; the server settles on chain "
                        f"{info.chain_id}",
                        hint="give a node of the server's chain",
                        reason="CHAIN_MISMATCH",
                    )
                relayer = Relayer(rpc, account, chain_id)
                with ctx.out.spinner(f"depositing {shown} for {beneficiary}") as spinner:
                    hashes = await _send(rpc, relayer, info, beneficiary, amount, spinner)
            except ChainUnavailable as error:
                raise CliError(
                    f"cannot reach the chain node at {url}: {error}",
                    hint="is the node running? Check --rpc-url / AGENTFLOW_CHAIN_RPC_URL",
                    code=ExitCode.UNAVAILABLE,
                    reason="CHAIN_UNAVAILABLE",
                ) from None
            except (CallReverted, ChainRequestRefused) as error:
                raise CliError(
                    f"the chain refused the deposit: {error}",
                    hint="check the signer's ETH for gas and its token balance",
                    code=ExitCode.REFUSED,
                    reason="CHAIN_REFUSED",
                ) from None
            _, deposit_hash, block = hashes[-1]
            sent = accounts_pb2.Deposit(
                beneficiary=beneficiary,
                depositor=account.address,
                token=token.symbol,
                amount=str(amount),
                transaction_hash=deposit_hash,
                block_number=block,
            )
            if not ctx.out.json_mode:
                ctx.out.show(
                    Text(f"deposited {shown} for {beneficiary}", style="bold"),
                    fields(*((f"{label} tx", f"{tx} (block {number})") for label, tx, number in hashes)),
                )
            if a.no_wait:
                if ctx.out.json_mode:
                    ctx.out.document(sent)
                else:
                    ctx.out.note(f"the server credits it after {info.confirmations} confirmation(s)")
                return ExitCode.OK
            waiting = f"waiting for {info.confirmations} confirmation(s) and the server's credit"
            with ctx.out.spinner(waiting):
                credited = await _credited(ctx, beneficiary, deposit_hash)
    except TimeoutError:
        raise CliError(
            f"gave up waiting after {a.wait_timeout:g} s",
            hint=f"what was sent stays sent; the server credits a mined deposit after {info.confirmations} "
            f"confirmation(s): agentflow balance {beneficiary}",
            code=ExitCode.TIMEOUT,
            reason="WAIT_TIMEOUT",
        ) from None
    finally:
        await rpc.close()
    if ctx.out.json_mode:
        ctx.out.document(credited)
        return ExitCode.OK
    balances = await ctx.client.get_balances(beneficiary, [token.symbol])
    ctx.out.show(Text("credited", style="bold green"), balances_table(balances, await ctx.tokens()))
    return ExitCode.OK


async def _send(
    rpc: Rpc,
    relayer: Relayer,
    info: accounts_pb2.GetDepositInfoResponse,
    beneficiary: str,
    amount: int,
    spinner: Any,
) -> list[tuple[str, str, int]]:
    """Send the deposit (approvals first for a token): what each mined transaction did, its hash and block."""
    from ..chain.contract import encode_call, read

    token = info.token
    contract = info.contract_address
    sent: list[tuple[str, str, int]] = []

    async def transact(label: str, to: str, data: bytes, value: int = 0) -> None:
        spinner.update(f"{label}: sending")
        signed = await relayer.send(to, data, value)
        receipt = await relayer.wait([signed])
        if receipt.status != 1:
            raise CliError(
                f"transaction {receipt.transaction_hash} reverted",
                hint="nothing was deposited by it; check the token and the signer's balance",
                code=ExitCode.FAILED,
                reason="TRANSACTION_REVERTED",
            )
        sent.append((label, receipt.transaction_hash, receipt.block_number))

    if token.native:
        held = await rpc.balance(relayer.address)
        if held < amount:
            raise _short(relayer.address, held, amount, token)
        await transact("deposit", contract, encode_call("depositETH", beneficiary), amount)
        return sent
    held = int(await read(rpc, token.contract_address, "balanceOf", relayer.address, contract=ERC20))
    if held < amount:
        raise _short(relayer.address, held, amount, token)
    allowance = int(await read(rpc, token.contract_address, "allowance", relayer.address, contract, contract=ERC20))
    if allowance < amount:
        if allowance > 0:
            await transact(
                "reset approval", token.contract_address, encode_call("approve", contract, 0, contract=ERC20)
            )
        await transact("approve", token.contract_address, encode_call("approve", contract, amount, contract=ERC20))
    await transact("deposit", contract, encode_call("depositToken", token.contract_address, beneficiary, amount))
    return sent


def _short(address: str, held: int, amount: int, token: accounts_pb2.Token) -> CliError:
    have = units.to_decimal(str(held), token.decimals)
    need = units.to_decimal(str(amount), token.decimals)
    return CliError(
        f"{address} holds {have} {token.symbol} on chain; the deposit needs {need}",
        hint=f"get more {token.symbol} to the signer first, or deposit less",
        code=ExitCode.REFUSED,
        reason="INSUFFICIENT_FUNDS",
    )


async def _credited(ctx: Context, beneficiary: str, transaction_hash: str) -> accounts_pb2.Deposit:
    """The deposit as the server credited it: the deposit.confirmed event naming its transaction."""
    cursor = 0
    wanted = transaction_hash.lower()
    while True:
        page = await ctx.client.list_events(
            types=["deposit.confirmed"], address=beneficiary, start_after=cursor, page_size=100
        )
        for event in page.items:
            cursor = max(cursor, event.sequence)
            if event.deposit.transaction_hash.lower() == wanted:
                return event.deposit
        if not page.items or not page.next_page_token:
            await asyncio.sleep(0.25)
