"""The tokens the service accepts: symbol, decimals, contract address on the configured chain, minimum fee."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from agentflow_payments import FieldViolation, Reason

from .addresses import parse_address
from .engine.fees import VolumeTier
from .errors import ApiError


@dataclass(frozen=True)
class Token:
    """One accepted token. Amounts of it are integers of base units (``10**decimals`` per whole token)."""

    symbol: str
    display_name: str
    decimals: int
    native: bool
    min_fee: int
    # The trailing 30-day volumes (base units) at which the payer's volume discount steps up.
    volume_tiers: tuple[VolumeTier, ...]
    contract_address: str = ""


def _tiers(decimals: int, steps: tuple[tuple[int, int], ...]) -> tuple[VolumeTier, ...]:
    return tuple(VolumeTier(whole * 10**decimals, bps) for whole, bps in steps)


# Discount steps in whole tokens: the dollar tokens step at $10k/$100k/$1M a month, the ether ones at
# 5/50/500 ETH, roughly the same value.
_DOLLAR_STEPS = ((10_000, 1000), (100_000, 2000), (1_000_000, 3000))
_ETHER_STEPS = ((5, 1000), (50, 2000), (500, 3000))

DEFAULT_TOKENS: tuple[Token, ...] = (
    Token("ETH", "Ether", 18, True, 10**15, _tiers(18, _ETHER_STEPS)),  # minimum fee 0.001 ETH
    Token("USDC", "USD Coin", 6, False, 10_000, _tiers(6, _DOLLAR_STEPS)),  # 0.01 USDC
    Token("USDT", "Tether USD", 6, False, 10_000, _tiers(6, _DOLLAR_STEPS)),  # 0.01 USDT
    Token("DAI", "Dai Stablecoin", 18, False, 10**16, _tiers(18, _DOLLAR_STEPS)),  # 0.01 DAI
    Token("WETH", "Wrapped Ether", 18, False, 10**15, _tiers(18, _ETHER_STEPS)),  # 0.001 WETH
)


class TokenRegistry:
    """The accepted tokens, looked up by symbol."""

    def __init__(self, tokens: tuple[Token, ...]) -> None:
        self._tokens = {token.symbol: token for token in tokens}

    @classmethod
    def configure(cls, addresses: Mapping[str, str], min_fees: Mapping[str, int]) -> TokenRegistry:
        """The default tokens with the configured contract addresses and minimum fees.

        Raises ``ValueError`` naming an unknown symbol, a malformed address or a negative minimum.
        """
        known = {token.symbol for token in DEFAULT_TOKENS}
        for symbol in (*addresses, *min_fees):
            if symbol not in known:
                raise ValueError(f"unknown token {symbol!r}; the tokens are {', '.join(sorted(known))}")
        tokens = []
        for token in DEFAULT_TOKENS:
            address = token.contract_address
            if token.symbol in addresses:
                if token.native:
                    raise ValueError(f"{token.symbol} is the native currency and has no contract address")
                address = parse_address(addresses[token.symbol])
            min_fee = min_fees.get(token.symbol, token.min_fee)
            if min_fee < 0:
                raise ValueError(f"the minimum fee of {token.symbol} must not be negative")
            tokens.append(
                Token(
                    token.symbol, token.display_name, token.decimals, token.native, min_fee, token.volume_tiers, address
                )
            )
        return cls(tuple(tokens))

    def settleable(self) -> TokenRegistry:
        """Only the tokens that can be settled on chain: the native one and those with a contract address."""
        return TokenRegistry(tuple(token for token in self if token.native or token.contract_address))

    def __iter__(self) -> Iterator[Token]:
        return iter(self._tokens.values())

    def get(self, symbol: str, field: str = "token") -> Token:
        """The token with this symbol, or INVALID_ARGUMENT with reason INVALID_TOKEN naming ``field``."""
        token = self._tokens.get(symbol)
        if token is None:
            raise invalid_token(symbol, field, tuple(self._tokens))
        return token

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._tokens


def invalid_token(symbol: str, field: str, known: tuple[str, ...]) -> ApiError:
    """The refusal of a token the service does not accept."""
    description = f"{symbol!r} is not an accepted token; use one of {', '.join(known)}"
    return ApiError(
        Reason.INVALID_TOKEN,
        f"{field}: {description}",
        metadata={"token": symbol, "accepted": ",".join(known)},
        field_violations=[FieldViolation(field, description)],
    )
