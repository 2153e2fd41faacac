"""Run a server with funded accounts, for the benchmark and the crash test.

Starts the service as ``agentflow serve`` would (AGENTFLOW_* variables apply; --listen and --data-dir win),
with settlement off (the ledger alone: these accounts are funded on no chain),
credits each of ``--accounts`` deterministic addresses through the engine's deposit command (the command
the chain watcher uses; the transaction hashes are derived from the address, so a restart credits nothing
twice), prints one JSON line {"target", "admin_key", "accounts", "token"} and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import signal
import sys

from eth_utils.address import to_checksum_address

from agentflow_server.app import Service, freeze_startup_heap
from agentflow_server.config import Settings, load_settings
from agentflow_server.engine.commands import CreditDeposit
from agentflow_server.event_loop import run
from agentflow_server.logs import configure_logging


def account(index: int) -> str:
    """The ``index``-th funded address: deterministic, never the zero address."""
    return str(to_checksum_address("0x" + hashlib.sha256(f"agentflow-account-{index}".encode()).hexdigest()[:40]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--accounts", type=int, default=10)
    parser.add_argument("--amount", type=int, default=10**30, help="base units credited to each account")
    parser.add_argument("--token", default="USDC")
    args = parser.parse_args()

    admin_key = os.environ.get("AGENTFLOW_ADMIN_API_KEY") or "afk_bench_" + secrets.token_urlsafe(24)
    settings = load_settings(
        listen=args.listen,
        data_dir=args.data_dir,
        admin_api_key=admin_key,
        metrics_listen=os.environ.get("AGENTFLOW_METRICS_LISTEN", ""),
        # The ledger alone: these deposits are credited straight through the engine, on no chain, so
        # nothing here may be settled. It measures and tests acceptance.
        settlement_enabled=False,
    )
    configure_logging("WARNING", "json")
    run(serve_funded(settings, args, admin_key), settings.event_loop)


async def serve_funded(settings: Settings, args: argparse.Namespace, admin_key: str) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    service = await Service.start(settings)
    engine = service.engine
    token = engine.tokens.get(args.token)
    addresses = [account(i) for i in range(args.accounts)]
    await engine.execute_many(
        [
            CreditDeposit(
                beneficiary=address,
                depositor=address,
                token=token,
                amount=args.amount,
                transaction_hash="0x" + hashlib.sha256(f"deposit:{address}:{token.symbol}".encode()).hexdigest(),
                log_index=0,
                block_number=1,
            )
            for address in addresses
        ]
    )
    freeze_startup_heap()  # as `agentflow serve` does once started
    host = settings.listen.rpartition(":")[0]
    ready = {
        "target": f"{host}:{service.endpoints.grpc_port}",
        "admin_key": admin_key,
        "accounts": addresses,
        "token": token.symbol,
        "pid": os.getpid(),
        "writer_pid": engine.writer_pid,
    }
    print(json.dumps(ready), flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    main()
    sys.exit(0)
