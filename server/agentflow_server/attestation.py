"""Verifier attestations: who signed a task result, recovered from an EIP-191 signature.

The signed text is :func:`agentflow_payments.attestation_message`, shared with the SDK. eth-account's
exceptions for a signature that names nobody stay here: callers get ``None``.
"""

from __future__ import annotations

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError

from agentflow_payments import attestation_message


def recover_signer(escrow_name: str, result_hash: str, signature: bytes) -> str | None:
    """The EIP-55 address whose key made ``signature`` over the escrow's attestation text, or ``None``
    when the 65 bytes are no valid signature (a bad ``v``, ``r`` or ``s``)."""
    message = encode_defunct(text=attestation_message(escrow_name, result_hash))
    try:
        signer: str = Account.recover_message(message, signature=signature)
    except (BadSignature, ValidationError, ValueError):
        return None
    return signer
