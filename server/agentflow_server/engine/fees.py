"""Pricing one payment: 0.3% with a per-token minimum, adjusted for congestion, volume and batching.

All arithmetic is on integers of base units, exact up to 2^256. Rounding always goes up (ceil), so the
service never undercharges by rounding; the per-token minimum is a floor on what is charged, discounts
included. The four shares are floors of their percentage, and staking absorbs the remainder, so the parts
always sum to the total exactly.

Example: 1 USDC (1_000_000 base units) at 0.3% is 3_000, split 1_200 / 900 / 600 / 300. The minimum fee of
ETH is 0.001 ETH (10**15 wei), so a 0.01 ETH payment (whose 0.3% is 3 * 10**13) pays 10**15.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

BPS = 10_000


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _ascending(steps: Sequence[tuple[int, int]], name: str) -> None:
    thresholds = [threshold for threshold, _ in steps]
    if any(b <= a for a, b in itertools.pairwise(thresholds)):
        raise ValueError(f"{name} must be strictly ascending in their thresholds")


@dataclass(frozen=True)
class FeeSchedule:
    """The fee rules; every figure is configuration."""

    rate_bps: int = 30
    split_bps: tuple[int, int, int, int] = (4000, 3000, 2000, 1000)  # platform, network, agent, staking
    # (minimum queue utilisation in bps of max_queue_size, adjustment bps); the highest matching step wins.
    congestion_queue_steps: tuple[tuple[int, int], ...] = ((5000, 1000), (7500, 2500), (9000, 5000))
    # The chain's base fee against its reference (bps, 10_000 = as usual) weighs this much.
    gas_weight_bps: int = 5000
    max_congestion_bps: int = 5000
    # (minimum items in one SubmitPayments call, discount bps); the highest matching tier wins.
    batch_tiers: tuple[tuple[int, int], ...] = ((10, 1000), (50, 2000), (100, 3000), (250, 4000))
    max_volume_discount_bps: int = 3000
    max_batch_discount_bps: int = 4000

    def __post_init__(self) -> None:
        if not 0 <= self.rate_bps <= BPS:
            raise ValueError("rate_bps must be 0 to 10000")
        if len(self.split_bps) != 4 or any(part < 0 for part in self.split_bps) or sum(self.split_bps) != BPS:
            raise ValueError("split_bps must be four non-negative parts summing to 10000")
        if not 0 <= self.max_congestion_bps <= 5000:
            raise ValueError("max_congestion_bps must be 0 to 5000")
        if not 0 <= self.max_volume_discount_bps <= 3000:
            raise ValueError("max_volume_discount_bps must be 0 to 3000")
        if not 0 <= self.max_batch_discount_bps <= 4000:
            raise ValueError("max_batch_discount_bps must be 0 to 4000")
        if self.gas_weight_bps < 0:
            raise ValueError("gas_weight_bps must not be negative")
        _ascending(self.congestion_queue_steps, "congestion_queue_steps")
        _ascending(self.batch_tiers, "batch_tiers")
        if any(abs(bps) > self.max_congestion_bps for _, bps in self.congestion_queue_steps):
            raise ValueError("congestion steps must lie within +-max_congestion_bps")
        if any(not 0 <= bps <= self.max_batch_discount_bps for _, bps in self.batch_tiers):
            raise ValueError("batch discounts must lie within 0..max_batch_discount_bps")


@dataclass(frozen=True)
class VolumeTier:
    """A volume discount step: from ``threshold`` base units of trailing 30-day volume, ``discount_bps`` off."""

    threshold: int
    discount_bps: int


@dataclass(frozen=True)
class Fee:
    """A fee and how it was reached; the four shares sum to ``total``."""

    total: int
    platform: int
    network: int
    agent: int
    staking: int
    base: int
    rate_bps: int
    congestion_adjustment_bps: int
    volume_discount_bps: int
    batch_discount_bps: int


def congestion_adjustment_bps(
    schedule: FeeSchedule, *, queue_depth: int, max_queue_size: int, base_fee_ratio_bps: int | None = None
) -> int:
    """The congestion adjustment: the queue's utilisation step plus the chain's base fee part, bounded."""
    if max_queue_size <= 0:
        raise ValueError("max_queue_size must be positive")
    utilisation = queue_depth * BPS // max_queue_size
    queue_part = 0
    for threshold, bps in schedule.congestion_queue_steps:
        if utilisation >= threshold:
            queue_part = bps
    gas_part = 0
    if base_fee_ratio_bps is not None:
        gas_part = (base_fee_ratio_bps - BPS) * schedule.gas_weight_bps // BPS
    bound = schedule.max_congestion_bps
    return max(-bound, min(bound, queue_part + gas_part))


def volume_discount_bps(schedule: FeeSchedule, tiers: Sequence[VolumeTier], trailing_volume: int) -> int:
    """The discount earned by the payer's trailing 30-day volume."""
    discount = 0
    for tier in tiers:
        if trailing_volume >= tier.threshold:
            discount = max(discount, tier.discount_bps)
    return min(discount, schedule.max_volume_discount_bps)


def batch_discount_bps(schedule: FeeSchedule, batch_size: int) -> int:
    """The discount of a payment submitted in a call of ``batch_size`` items."""
    discount = 0
    for minimum, bps in schedule.batch_tiers:
        if batch_size >= minimum:
            discount = bps
    return discount


def compute_fee(
    schedule: FeeSchedule,
    amount: int,
    *,
    min_fee: int,
    congestion_bps: int = 0,
    volume_discount_bps: int = 0,
    batch_discount_bps: int = 0,
) -> Fee:
    """The fee of one payment of ``amount`` base units."""
    if amount <= 0:
        raise ValueError("amount must be positive")
    if min_fee < 0:
        raise ValueError("min_fee must not be negative")
    if abs(congestion_bps) > schedule.max_congestion_bps:
        raise ValueError("congestion_bps is beyond the schedule's bound")
    if not 0 <= volume_discount_bps <= schedule.max_volume_discount_bps:
        raise ValueError("volume_discount_bps is beyond the schedule's bound")
    if not 0 <= batch_discount_bps <= schedule.max_batch_discount_bps:
        raise ValueError("batch_discount_bps is beyond the schedule's bound")
    base = max(_ceil_div(amount * schedule.rate_bps, BPS), min_fee)
    adjusted = _ceil_div(
        base * (BPS + congestion_bps) * (BPS - volume_discount_bps) * (BPS - batch_discount_bps), BPS**3
    )
    total = max(adjusted, min_fee)
    platform, network, agent = (total * part // BPS for part in schedule.split_bps[:3])
    return Fee(
        total=total,
        platform=platform,
        network=network,
        agent=agent,
        staking=total - platform - network - agent,
        base=base,
        rate_bps=schedule.rate_bps,
        congestion_adjustment_bps=congestion_bps,
        volume_discount_bps=volume_discount_bps,
        batch_discount_bps=batch_discount_bps,
    )
