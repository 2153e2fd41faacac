"""A local anvil node (npm ``@foundry-rs/anvil``, installed into ``node_modules`` by ./scripts/bootstrap)
for the tests, the benchmark and development against a real JSON-RPC node."""

from __future__ import annotations

import contextlib
import json
import platform
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ANVIL_KEYS = (
    # anvil's first dev accounts (its default mnemonic): public test keys, worthless anywhere else.
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
)


def anvil_binary() -> Path:
    """The anvil executable npm installed for this machine, looked up from this checkout."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    relative = Path("node_modules") / "@foundry-rs" / f"anvil-linux-{arch}" / "bin" / "anvil"
    for base in (Path(__file__).resolve(), Path.cwd() / "x"):
        for parent in base.parents:
            if (parent / relative).is_file():
                return parent / relative
    raise FileNotFoundError(f"{relative} not found: run ./scripts/bootstrap")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def anvil_node(*args: str) -> Iterator[str]:
    """A fresh anvil chain (prague, automine unless ``args`` say otherwise) on a free port: its URL."""
    port = free_port()
    process = subprocess.Popen(
        [str(anvil_binary()), "--silent", "--port", str(port), "--hardfork", "prague", *args],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
