"""anvil (npm ``@foundry-rs/anvil``) as a real Ethereum node for chain tests: started on a free port,
stopped at the end."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from web3 import Web3

ROOT = Path(__file__).resolve().parent.parent
ANVIL = ROOT / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def anvil(*args: str) -> Iterator[Web3]:
    """A fresh anvil chain (prague, automine) and a Web3 connected to it."""
    port = free_port()
    process = subprocess.Popen(
        [str(ANVIL), "--silent", "--port", str(port), "--hardfork", "prague", *args],
        stdout=subprocess.DEVNULL,
    )
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + 20
        while not w3.is_connected():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"anvil did not start (exit code {process.poll()})")
            time.sleep(0.05)
        yield w3
    finally:
        process.terminate()
        process.wait(10)
