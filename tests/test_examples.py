"""The examples in examples/ run against a dev server as their docstrings say, so they never rot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .test_cli import DevServer, _env, _run, dev_server

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["dev_server"]  # the fixture, imported to be used here


def dev_agents(banner: str) -> dict[str, tuple[str, str]]:
    """The dev agents the banner lists: name → (address, payer key)."""
    found = re.findall(r"^  (\w+)\s+(0x[0-9a-fA-F]{40})\n.*\n\s+payer key\s+(\S+)$", banner, re.MULTILINE)
    return {name: (address, key) for name, address, key in found}


async def test_the_python_escrow_example_pays_the_worker(dev_server: DevServer, tmp_path: Path) -> None:
    agents = dev_agents(dev_server.banner)
    (payer, payer_key), (worker, worker_key) = agents["alice"], agents["bob"]
    env = _env(
        tmp_path,
        AGENTFLOW_TARGET=dev_server.target,
        PAYER=payer,
        PAYER_KEY=payer_key,
        WORKER=worker,
        WORKER_KEY=worker_key,
    )
    code, out, err = await _run(sys.executable, str(ROOT / "examples/python/escrow_task.py"), env=env)
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"payer:  escrows/\w+ holds 5000000 USDC for summarise-report-\w+ \(fee 15000\)", lines[0])
    assert "worker: escrow.created" in out
    assert lines[-3] == "payment COMPLETED"
    assert re.fullmatch(r"settled in block \d+, tx 0x[0-9a-f]{16}\.\.\.", lines[-2])
    # The dev agents start with 10,000 USDC each: the payer paid the price and its fee, and holds nothing back.
    assert lines[-1] == f"payer:  USDC available {10_000 * 10**6 - 5_000_000 - 15_000}, escrowed 0"
