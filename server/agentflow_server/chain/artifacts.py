"""The compiled contracts (ABI and bytecode), committed next to this module by ``scripts/compile-contracts``."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


@functools.cache
def artifact(name: str) -> Artifact:
    """The artifact of contract ``name`` (``AgentFlowSettlement``, ``TestToken``...)."""
    path = resources.files(__package__).joinpath("artifacts", f"{name}.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LookupError(f"no compiled contract {name!r}: run ./scripts/compile-contracts") from None
    return Artifact(data["contractName"], data["abi"], data["bytecode"], data["deployedBytecode"])
