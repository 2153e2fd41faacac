"""Ethereum address checks shared by every request field that names an address."""

from __future__ import annotations

import functools
import re

from eth_utils.address import is_checksum_address, to_checksum_address

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
ZERO_ADDRESS = "0x" + "0" * 40


# Agents pay from and to the same few addresses again and again; the checksum is a Keccak hash each time.
@functools.lru_cache(maxsize=65_536)
def parse_address(value: str) -> str:
    """Return the EIP-55 form of ``value``, or raise ``ValueError`` saying what is wrong.

    Accepted: 0x-prefixed hex of 20 bytes, either EIP-55 checksummed or all
    lowercase; mixed case with a wrong checksum is refused, since it usually
    means a typo. The zero address is refused: funds sent there are burnt.
    """
    if not _HEX_ADDRESS.fullmatch(value):
        raise ValueError("must be a 0x-prefixed 20-byte hex address")
    body = value[2:]
    if body != body.lower() and not is_checksum_address(value):
        raise ValueError("has an invalid EIP-55 checksum")
    if value.lower() == ZERO_ADDRESS:
        raise ValueError("must not be the zero address")
    return str(to_checksum_address(value))
