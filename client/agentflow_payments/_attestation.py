"""The text a verifier signs to attest a task result, so that its signature releases an escrow.

A verifier signs it with EIP-191 (``personal_sign``: the message prefixed with
``"\\x19Ethereum Signed Message:\\n" + len(message)``), which any Ethereum wallet or library does, for
example with eth-account::

    from eth_account import Account
    from eth_account.messages import encode_defunct

    text = attestation_message("escrows/0190...", "0x" + result_hash.hex())
    signature = Account.sign_message(encode_defunct(text=text), private_key).signature

and the signature goes to ``EscrowService.SubmitTaskResult`` with the same result hash.
"""

from __future__ import annotations

import re

_RESULT_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def attestation_message(escrow_name: str, result_hash: str) -> str:
    """The text a verifier signs over an escrow (``escrows/{id}``) and a task result's 32-byte hash.

    The hash is written in lowercase hex, so the same hash always makes the same text.
    """
    if not escrow_name.startswith("escrows/"):
        raise ValueError(f"escrow_name must be escrows/{{id}}, not {escrow_name!r}")
    if not _RESULT_HASH.fullmatch(result_hash):
        raise ValueError(f"result_hash must be 0x and 64 hex digits, not {result_hash!r}")
    return f"AgentFlow task result\nescrow: {escrow_name}\nresult: {result_hash.lower()}"
