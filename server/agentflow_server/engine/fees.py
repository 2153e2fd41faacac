"""Pricing one payment: 0.3% with a per-token minimum, adjusted for congestion, volume and batching.

Every amount is an ``int`` of token base units and every rate an ``int`` of basis points (1 bps = 0.01%);
no float ever enters, because a float cannot hold a 2^256 amount and would round where the ledger must not.
The rules of ``compute_fee``, in order:

1. ``base = max(ceil(amount * rate_bps / 10_000), min_fee)``: rounding goes up, so the service never
   undercharges by rounding, and the per-token minimum pays for settling even a tiny payment.
2. ``adjusted = ceil(base * (10_000 + congestion) * (10_000 - volume) * (10_000 - batch) / 10_000**3)``:
   the three adjustments multiply (they do not add), in one exact division, rounded up once.
3. ``total = max(adjusted, min_fee)``: discounts never take a fee below the per-token minimum.
4. ``platform``, ``network`` and ``agent`` are the floors of their share of the total, and ``staking`` takes
   the rest (its own share plus the rounding remainder of under 3 base units), so the parts always sum to
   the total exactly and no base unit is created or lost.

The adjustments are bounded by the schedule: congestion within +-50% at most, volume discounts up to 30%,
batch discounts up to 40%. They come from ``congestion_adjustment_bps``, ``volume_discount_bps`` and
``batch_discount_bps``; the fee records them as applied, so a quote can be explained later.

Example: 1 USDC (1_000_000 base units) at 0.3% is 3_000, split 1_200 / 900 / 600 / 300. The minimum fee of
ETH is 0.001 ETH (10**15 wei), so a 0.01 ETH payment, whose 0.3% is 3 * 10**13 wei, pays 10**15 wei.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

BPS = 10_000

# Ceilings the configuration may not exceed (DESIGN.md, "Fees"): congestion +-50%, volume 30%, batch 40%.
_CONGESTION_LIMIT = 5000
_VOLUME_LIMIT = 3000
_BATCH_LIMIT = 4000


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as an amount or a rate is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(name: str, value: object) -> None:
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, not {type(value).__name__}")


def _ceil_div(numerator: int, denominator: int) -> int:
    # Exact for any size of int; float division would lose digits above 2^53.
    return -(-numerator // denominator)


def _check_steps(name: str, steps: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(steps, tuple) or not all(
        isinstance(step, tuple) and len(step) == 2 and _is_int(step[0]) and _is_int(step[1]) for step in steps
    ):
        raise ValueError(f"{name} must be a tuple of (threshold, bps) pairs of ints")
    if any(b <= a for (a, _), (b, _) in itertools.pairwise(steps)):
        raise ValueError(f"{name} must be strictly ascending in their thresholds")
    return steps


@dataclass(frozen=True)
class FeeSchedule:
    """The fee rules; every figure is configuration, checked when the schedule is built."""

    rate_bps: int = 30  # 0.3%
    split_bps: tuple[int, int, int, int] = (4000, 3000, 2000, 1000)  # platform, network, agent, staking
    # (minimum queue utilisation in bps of max_queue_size, adjustment bps); the highest matching step wins,
    # below the first step the queue adds nothing.
    congestion_queue_steps: tuple[tuple[int, int], ...] = ((5000, 1000), (7500, 2500), (9000, 5000))
    # The chain's base fee against its reference (bps, 10_000 = as usual) adds
    # (ratio - 10_000) * gas_weight_bps // 10_000 bps: dearer gas costs more to settle, cheaper gas less.
    gas_weight_bps: int = 5000
    max_congestion_bps: int = 5000  # the congestion adjustment always lies within +-this
    # (minimum items in one SubmitPayments call, discount bps); the highest matching tier wins.
    batch_tiers: tuple[tuple[int, int], ...] = ((10, 1000), (50, 2000), (100, 3000), (250, 4000))
    max_volume_discount_bps: int = 3000
    max_batch_discount_bps: int = 4000

    def __post_init__(self) -> None:
        """Refuse a schedule that could price outside the design's bounds, with the reason."""
        for name in (
            "rate_bps",
            "gas_weight_bps",
            "max_congestion_bps",
            "max_volume_discount_bps",
            "max_batch_discount_bps",
        ):
            _require_int(name, getattr(self, name))
        if not 0 <= self.rate_bps <= BPS:
            raise ValueError(f"rate_bps must be 0 to {BPS}, not {self.rate_bps}")
        split = self.split_bps
        if (
            not isinstance(split, tuple)
            or len(split) != 4
            or not all(_is_int(part) and part >= 0 for part in split)
            or sum(split) != BPS
        ):
            raise ValueError(f"split_bps must be four non-negative int parts summing to {BPS}, not {split!r}")
        if self.gas_weight_bps < 0:
            raise ValueError(f"gas_weight_bps must not be negative, not {self.gas_weight_bps}")
        if not 0 <= self.max_congestion_bps <= _CONGESTION_LIMIT:
            raise ValueError(f"max_congestion_bps must be 0 to {_CONGESTION_LIMIT}, not {self.max_congestion_bps}")
        if not 0 <= self.max_volume_discount_bps <= _VOLUME_LIMIT:
            raise ValueError(
                f"max_volume_discount_bps must be 0 to {_VOLUME_LIMIT}, not {self.max_volume_discount_bps}"
            )
        if not 0 <= self.max_batch_discount_bps <= _BATCH_LIMIT:
            raise ValueError(f"max_batch_discount_bps must be 0 to {_BATCH_LIMIT}, not {self.max_batch_discount_bps}")

        steps = _check_steps("congestion_queue_steps", self.congestion_queue_steps)
        bound = self.max_congestion_bps
        for threshold, bps in steps:
            if threshold < 0:
                raise ValueError(f"congestion_queue_steps thresholds must not be negative, not {threshold}")
            if not -bound <= bps <= bound:
                raise ValueError(f"congestion_queue_steps adjustments must lie within +-{bound}, not {bps}")

        tiers = _check_steps("batch_tiers", self.batch_tiers)
        for minimum, bps in tiers:
            # A single payment is never a batch: a tier from 1 item would discount every payment.
            if minimum < 2:
                raise ValueError(f"batch_tiers minimums must be at least 2 items, not {minimum}")
            if not 0 <= bps <= self.max_batch_discount_bps:
                raise ValueError(f"batch_tiers discounts must be 0 to {self.max_batch_discount_bps}, not {bps}")


@dataclass(frozen=True)
class VolumeTier:
    """A volume discount step: from ``threshold`` base units of trailing 30-day volume, ``discount_bps`` off.

    The discount may exceed the schedule's cap; ``volume_discount_bps`` caps it, so one set of tiers per
    token serves any schedule.
    """

    threshold: int  # trailing 30-day volume in base units at which the tier starts
    discount_bps: int

    def __post_init__(self) -> None:
        """Refuse a negative or non-int threshold or discount."""
        _require_int("threshold", self.threshold)
        _require_int("discount_bps", self.discount_bps)
        if self.threshold < 0:
            raise ValueError(f"a volume tier's threshold must not be negative, not {self.threshold}")
        if self.discount_bps < 0:
            raise ValueError(f"a volume tier's discount_bps must not be negative, not {self.discount_bps}")


@dataclass(frozen=True)
class Fee:
    """A fee and how it was reached; the four shares sum to ``total`` exactly.

    ``rate_bps`` and the three adjustments are the ones applied, so the quote explains itself.
    """

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
    """The congestion adjustment in bps: the queue's utilisation step plus the chain's base fee part.

    Utilisation is ``queue_depth * 10_000 // max_queue_size`` (a queue past its size counts as full or more);
    the gas part is 0 without a base fee ratio. The sum is clamped to +-``schedule.max_congestion_bps``.
    """
    _require_int("queue_depth", queue_depth)
    _require_int("max_queue_size", max_queue_size)
    if max_queue_size <= 0:
        raise ValueError(f"max_queue_size must be positive, not {max_queue_size}")
    if queue_depth < 0:
        raise ValueError(f"queue_depth must not be negative, not {queue_depth}")
    utilisation = queue_depth * BPS // max_queue_size
    queue_part = 0
    for threshold, bps in schedule.congestion_queue_steps:  # ascending, so the last match is the highest
        if utilisation >= threshold:
            queue_part = bps
    gas_part = 0
    if base_fee_ratio_bps is not None:
        _require_int("base_fee_ratio_bps", base_fee_ratio_bps)
        if base_fee_ratio_bps < 0:
            raise ValueError(f"base_fee_ratio_bps must not be negative, not {base_fee_ratio_bps}")
        gas_part = (base_fee_ratio_bps - BPS) * schedule.gas_weight_bps // BPS
    bound = schedule.max_congestion_bps
    return max(-bound, min(bound, queue_part + gas_part))


def volume_discount_bps(schedule: FeeSchedule, tiers: Sequence[VolumeTier], trailing_volume: int) -> int:
    """The discount in bps earned by the payer's trailing 30-day volume.

    The tier with the highest threshold at or below ``trailing_volume`` applies (the tiers need not be
    sorted), capped at ``schedule.max_volume_discount_bps``; below the first tier, or with no tiers, 0.
    """
    _require_int("trailing_volume", trailing_volume)
    reached = [tier for tier in tiers if tier.threshold <= trailing_volume]
    if not reached:
        return 0
    best = max(reached, key=lambda tier: (tier.threshold, tier.discount_bps))
    return min(best.discount_bps, schedule.max_volume_discount_bps)


def batch_discount_bps(schedule: FeeSchedule, batch_size: int) -> int:
    """The discount in bps of a payment submitted in one call of ``batch_size`` items; 0 for a single one."""
    _require_int("batch_size", batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    discount = 0
    for minimum, bps in schedule.batch_tiers:  # ascending, so the last match is the highest
        if batch_size >= minimum:
            discount = bps
    return discount


def _split(schedule: FeeSchedule, total: int) -> tuple[int, int, int, int, int]:
    """``total`` and its platform, network, agent and staking parts: the first three are the floors of their
    shares, and staking takes its own share plus the rounding remainder, so the parts sum to the total."""
    platform_bps, network_bps, agent_bps, _ = schedule.split_bps
    platform = total * platform_bps // BPS
    network = total * network_bps // BPS
    agent = total * agent_bps // BPS
    return total, platform, network, agent, total - platform - network - agent


def compute_fee(
    schedule: FeeSchedule,
    amount: int,
    *,
    min_fee: int,
    congestion_bps: int = 0,
    volume_discount_bps: int = 0,
    batch_discount_bps: int = 0,
) -> Fee:
    """The fee of one payment of ``amount`` base units, by the rules in the module docstring.

    Raises ``ValueError`` unless ``amount`` is a positive int, ``min_fee`` a non-negative int and each
    adjustment an int within the schedule's bounds.
    """
    for name, value in (
        ("amount", amount),
        ("min_fee", min_fee),
        ("congestion_bps", congestion_bps),
        ("volume_discount_bps", volume_discount_bps),
        ("batch_discount_bps", batch_discount_bps),
    ):
        _require_int(name, value)
    if amount <= 0:
        raise ValueError(f"amount must be positive, not {amount}")
    if min_fee < 0:
        raise ValueError(f"min_fee must not be negative, not {min_fee}")
    if not -schedule.max_congestion_bps <= congestion_bps <= schedule.max_congestion_bps:
        raise ValueError(f"congestion_bps must lie within +-{schedule.max_congestion_bps}, not {congestion_bps}")
    if not 0 <= volume_discount_bps <= schedule.max_volume_discount_bps:
        raise ValueError(
            f"volume_discount_bps must be 0 to {schedule.max_volume_discount_bps}, not {volume_discount_bps}"
        )
    if not 0 <= batch_discount_bps <= schedule.max_batch_discount_bps:
        raise ValueError(f"batch_discount_bps must be 0 to {schedule.max_batch_discount_bps}, not {batch_discount_bps}")

    base = max(_ceil_div(amount * schedule.rate_bps, BPS), min_fee)
    # One division of the full product, so the adjustments round once, not three times.
    adjusted = _ceil_div(
        base * (BPS + congestion_bps) * (BPS - volume_discount_bps) * (BPS - batch_discount_bps), BPS**3
    )
    total = max(adjusted, min_fee)
    return Fee(
        *_split(schedule, total),
        base=base,
        rate_bps=schedule.rate_bps,
        congestion_adjustment_bps=congestion_bps,
        volume_discount_bps=volume_discount_bps,
        batch_discount_bps=batch_discount_bps,
    )


def highest_fee(schedule: FeeSchedule, amount: int, min_fee: int) -> int:
    """The most a payment of ``amount`` can be charged under ``schedule``: the total :func:`compute_fee` gives
    at the highest congestion and no discount, worked out without building the breakdown (the engine asks
    for it for every payment of a bulk call)."""
    base = max(_ceil_div(amount * schedule.rate_bps, BPS), min_fee)
    return max(_ceil_div(base * (BPS + schedule.max_congestion_bps), BPS), min_fee)


def fee_share(schedule: FeeSchedule, fee: Fee, *, before: int, part: int, whole: int) -> Fee:
    """The part of ``fee`` (fixed for ``whole`` base units) that pays for ``part`` units after ``before``.

    Escrows are priced once for their whole amount and released in parts. Each part's share is the
    difference of two floors of the running total, ``fee * (before + part) // whole - fee * before //
    whole``, so the shares of parts that add up to the whole add up to the fee exactly, whatever the
    order or size of the parts. The share is split 40/30/20/10 as any fee is; rates and adjustments are
    those of the original quote.
    """
    for name, value in (("before", before), ("part", part), ("whole", whole)):
        _require_int(name, value)
    if whole <= 0 or part < 0 or before < 0 or before + part > whole:
        raise ValueError(
            f"a share needs 0 <= before, 0 <= part and before + part <= whole > 0, not {before, part, whole}"
        )

    def cut(value: int) -> int:
        return value * (before + part) // whole - value * before // whole

    return Fee(
        *_split(schedule, cut(fee.total)),
        base=cut(fee.base),
        rate_bps=fee.rate_bps,
        congestion_adjustment_bps=fee.congestion_adjustment_bps,
        volume_discount_bps=fee.volume_discount_bps,
        batch_discount_bps=fee.batch_discount_bps,
    )
