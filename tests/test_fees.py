"""The fee rules: rounding, minimums, each adjustment and its bounds, and shares that always add up.

A worked example with the default schedule (0.3%, split 40/30/20/10):

- 1 USDC is 1_000_000 base units; 0.3% of it is 3_000 (0.003 USDC), split 1_200 / 900 / 600 / 300. Under
  USDC's minimum fee of 0.01 USDC (10_000 base units) it pays 10_000; 10 USDC pay 30_000.
- ETH has a minimum fee of 0.001 ETH = 10**15 wei. A 0.01 ETH payment (10**16 wei) would pay 0.3% = 3 * 10**13
  wei, so it pays the minimum, 10**15. A 10 ETH payment pays 0.3% = 3 * 10**16 wei (0.03 ETH).
- 1_000 USDC (10**9 base units) pays a base of 3_000_000; with +50% congestion, a 10% volume and a 20% batch
  discount it pays 3_000_000 * 1.5 * 0.9 * 0.8 = 3_240_000 (3.24 USDC): 1_296_000 / 972_000 / 648_000 / 324_000.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from agentflow_server.engine import fees
from agentflow_server.engine.fees import (
    BPS,
    Fee,
    FeeSchedule,
    VolumeTier,
    batch_discount_bps,
    compute_fee,
    congestion_adjustment_bps,
    fee_share,
    highest_fee,
    volume_discount_bps,
)

S = FeeSchedule()
USDC = 10**6
ETH = 10**18
MAX = 2**256 - 1


def parts(fee: Fee) -> tuple[int, int, int, int, int]:
    return fee.total, fee.platform, fee.network, fee.agent, fee.staking


def reference_fee(
    schedule: FeeSchedule, amount: int, min_fee: int, congestion: int, volume: int, batch: int
) -> tuple[int, int, int, int, int]:
    """The same rules written independently with exact fractions, to check the integer arithmetic against."""
    base = max(math.ceil(Fraction(amount * schedule.rate_bps, BPS)), min_fee)
    factor = Fraction(BPS + congestion, BPS) * Fraction(BPS - volume, BPS) * Fraction(BPS - batch, BPS)
    total = max(math.ceil(base * factor), min_fee)
    platform, network, agent = (math.floor(Fraction(total * part, BPS)) for part in schedule.split_bps[:3])
    return total, platform, network, agent, total - platform - network - agent


# -- worked examples ------------------------------------------------------------------------------------


def test_worked_example_one_usdc() -> None:
    fee = compute_fee(S, USDC, min_fee=0)
    assert parts(fee) == (3000, 1200, 900, 600, 300)
    assert (fee.base, fee.rate_bps) == (3000, 30)
    assert (fee.congestion_adjustment_bps, fee.volume_discount_bps, fee.batch_discount_bps) == (0, 0, 0)
    # With USDC's default minimum of 0.01 USDC (10_000 base units), 1 USDC pays the minimum; 10 USDC do not.
    assert compute_fee(S, USDC, min_fee=10_000).total == 10_000
    assert compute_fee(S, 10 * USDC, min_fee=10_000).total == 30_000


def test_worked_example_ether_minimum() -> None:
    fee = compute_fee(S, ETH // 100, min_fee=ETH // 1000)  # 0.01 ETH; its 0.3% is 3 * 10**13 wei
    assert (fee.base, fee.total) == (10**15, 10**15)
    assert parts(fee) == (10**15, 4 * 10**14, 3 * 10**14, 2 * 10**14, 10**14)
    # 10 ETH: 0.03 ETH is above the minimum.
    assert compute_fee(S, 10 * ETH, min_fee=ETH // 1000).total == 3 * 10**16


def test_worked_example_with_all_adjustments() -> None:
    fee = compute_fee(S, 10**9, min_fee=0, congestion_bps=5000, volume_discount_bps=1000, batch_discount_bps=2000)
    assert fee.base == 3_000_000
    assert parts(fee) == (3_240_000, 1_296_000, 972_000, 648_000, 324_000)
    assert (fee.congestion_adjustment_bps, fee.volume_discount_bps, fee.batch_discount_bps) == (5000, 1000, 2000)


# -- rounding -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (1, 1),  # 0.003 rounds up to 1
        (2, 1),
        (333, 1),  # 0.999
        (334, 2),  # 1.002
        (666, 2),  # 1.998
        (667, 3),  # 2.001
        (1000, 3),  # exact
        (1001, 4),  # 3.003
        (3333, 10),  # 9.999
        (3334, 11),  # 10.002
        (USDC - 1, 3000),  # 2_999.997
        (USDC + 1, 3001),  # 3_000.003
    ],
)
def test_base_rounds_up(amount: int, expected: int) -> None:
    fee = compute_fee(S, amount, min_fee=0)
    assert (fee.base, fee.total) == (expected, expected)


def test_adjustments_round_up_once() -> None:
    # 3 * 0.9 = 2.7 -> 3; 3 * 0.6 = 1.8 -> 2; 3 * 1.0001 = 3.0003 -> 4.
    assert compute_fee(S, 1000, min_fee=0, volume_discount_bps=1000).total == 3
    assert compute_fee(S, 1000, min_fee=0, batch_discount_bps=4000).total == 2
    assert compute_fee(S, 1000, min_fee=0, congestion_bps=1).total == 4
    # One rounding of the product: 7 * 0.9 * 0.9 = 5.67 -> 6 (rounding after each step would give 7 * 0.9 = 6.3
    # -> 7, 7 * 0.9 = 6.3 -> 7).
    assert compute_fee(S, 7000 // 3, min_fee=0, volume_discount_bps=1000, batch_discount_bps=1000).total == 6
    # A discount never takes a positive fee to zero: 1 * 0.5 * 0.7 * 0.6 = 0.21 -> 1.
    fee = compute_fee(S, 1, min_fee=0, congestion_bps=-5000, volume_discount_bps=3000, batch_discount_bps=4000)
    assert fee.total == 1


def test_a_zero_rate_and_no_minimum_charge_nothing() -> None:
    fee = compute_fee(FeeSchedule(rate_bps=0), 10**9, min_fee=0, congestion_bps=5000)
    assert parts(fee) == (0, 0, 0, 0, 0)
    assert compute_fee(FeeSchedule(rate_bps=0), 10**9, min_fee=7).total == 7


def test_a_full_rate_charges_the_amount() -> None:
    assert compute_fee(FeeSchedule(rate_bps=BPS), 12_345, min_fee=0).total == 12_345


# -- the minimum ----------------------------------------------------------------------------------------


def test_minimum_raises_the_base() -> None:
    fee = compute_fee(S, 100, min_fee=50)
    assert (fee.base, fee.total) == (50, 50)
    # Just below, at and just above the minimum of 10_000.
    assert compute_fee(S, 3_333_000, min_fee=10_000).base == 10_000  # 9_999 raised
    assert compute_fee(S, 3_333_333, min_fee=10_000).base == 10_000  # 9_999.999 rounds up to exactly 10_000
    assert compute_fee(S, 3_333_334, min_fee=10_000).base == 10_001  # 10_000.002


def test_congestion_surcharge_applies_to_the_minimum() -> None:
    fee = compute_fee(S, ETH // 100, min_fee=ETH // 1000, congestion_bps=5000)
    assert (fee.base, fee.total) == (10**15, 15 * 10**14)


def test_minimum_floors_the_total_after_discounts() -> None:
    # 30_000 * 0.7 * 0.6 = 12_600, below the minimum of 20_000.
    discounted = compute_fee(S, 10**7, min_fee=20_000, volume_discount_bps=3000, batch_discount_bps=4000)
    assert (discounted.base, discounted.total) == (30_000, 20_000)
    assert compute_fee(S, 10**7, min_fee=0, volume_discount_bps=3000, batch_discount_bps=4000).total == 12_600
    # A cheap chain cannot take the fee under the minimum either.
    assert compute_fee(S, 100, min_fee=50, congestion_bps=-5000).total == 50
    # The floor leaves the discounts recorded as applied.
    assert (discounted.volume_discount_bps, discounted.batch_discount_bps) == (3000, 4000)


# -- adjustments combined in compute_fee ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("congestion", "volume", "batch", "expected"),
    [
        (5000, 0, 0, 4_500_000),
        (-5000, 0, 0, 1_500_000),
        (0, 3000, 0, 2_100_000),
        (0, 0, 4000, 1_800_000),
        (-5000, 3000, 4000, 630_000),  # the cheapest a fee can get: 21% of its base
        (5000, 3000, 4000, 1_890_000),
        (2500, 2000, 1000, 2_700_000),
    ],
)
def test_adjustments_multiply(congestion: int, volume: int, batch: int, expected: int) -> None:
    fee = compute_fee(
        S, 10**9, min_fee=0, congestion_bps=congestion, volume_discount_bps=volume, batch_discount_bps=batch
    )
    assert fee.base == 3_000_000
    assert fee.total == expected
    assert (fee.congestion_adjustment_bps, fee.volume_discount_bps, fee.batch_discount_bps) == (
        congestion,
        volume,
        batch,
    )


def test_adjustments_at_their_bounds_are_accepted() -> None:
    narrow = FeeSchedule(
        congestion_queue_steps=(),
        max_congestion_bps=1000,
        max_volume_discount_bps=500,
        batch_tiers=(),
        max_batch_discount_bps=0,
    )
    fee = compute_fee(narrow, 10**9, min_fee=0, congestion_bps=-1000, volume_discount_bps=500)
    assert fee.total == 3_000_000 * 9 * 95 // 1000
    with pytest.raises(ValueError, match="congestion_bps"):
        compute_fee(narrow, 10**9, min_fee=0, congestion_bps=1001)
    with pytest.raises(ValueError, match="volume_discount_bps"):
        compute_fee(narrow, 10**9, min_fee=0, volume_discount_bps=501)
    with pytest.raises(ValueError, match="batch_discount_bps"):
        compute_fee(narrow, 10**9, min_fee=0, batch_discount_bps=1)


# -- congestion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (0, 0),
        (4999, 0),
        (5000, 1000),
        (7499, 1000),
        (7500, 2500),
        (8999, 2500),
        (9000, 5000),
        (10_000, 5000),
        (25_000, 5000),  # past the queue's size: still the top step
    ],
)
def test_congestion_steps_at_exact_thresholds(depth: int, expected: int) -> None:
    assert congestion_adjustment_bps(S, queue_depth=depth, max_queue_size=10_000) == expected


@pytest.mark.parametrize(("depth", "expected"), [(0, 0), (1, 0), (2, 1000), (3, 5000)])
def test_congestion_utilisation_rounds_down(depth: int, expected: int) -> None:
    # Of 3: 3_333, 6_666 and 10_000 bps.
    assert congestion_adjustment_bps(S, queue_depth=depth, max_queue_size=3) == expected


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (None, 0),
        (10_000, 0),  # the base fee as usual
        (10_001, 0),  # 0.5 bps floors to 0
        (9_999, -1),  # -0.5 bps floors to -1
        (12_000, 1000),
        (14_000, 2000),
        (8_000, -1000),
        (5_000, -2500),
        (20_000, 5000),
        (20_002, 5000),  # 5001 clamped
        (0, -5000),  # free gas: exactly the bound
        (1_000_000, 5000),  # a hundred times the usual base fee: clamped
    ],
)
def test_congestion_gas_part(ratio: int | None, expected: int) -> None:
    assert congestion_adjustment_bps(S, queue_depth=0, max_queue_size=10, base_fee_ratio_bps=ratio) == expected


@pytest.mark.parametrize(
    ("depth", "ratio", "expected"),
    [
        (5, 12_000, 2000),  # 1000 + 1000
        (9, 12_000, 5000),  # 5000 + 1000 clamped to +5000
        (10, 40_000, 5000),  # a full queue on an expensive chain
        (8, 5_000, 0),  # 2500 - 2500
        (5, 0, -4000),  # 1000 - 5000
        (0, 0, -5000),  # an idle queue on a free chain
    ],
)
def test_congestion_queue_and_gas_combined_and_clamped(depth: int, ratio: int, expected: int) -> None:
    assert congestion_adjustment_bps(S, queue_depth=depth, max_queue_size=10, base_fee_ratio_bps=ratio) == expected


def test_congestion_follows_a_configured_schedule() -> None:
    schedule = FeeSchedule(
        congestion_queue_steps=((0, -500), (8000, 1500)), gas_weight_bps=10_000, max_congestion_bps=2000
    )
    assert congestion_adjustment_bps(schedule, queue_depth=0, max_queue_size=100) == -500  # idle: a discount
    assert congestion_adjustment_bps(schedule, queue_depth=80, max_queue_size=100) == 1500
    assert congestion_adjustment_bps(schedule, queue_depth=0, max_queue_size=100, base_fee_ratio_bps=11_000) == 500
    assert congestion_adjustment_bps(schedule, queue_depth=80, max_queue_size=100, base_fee_ratio_bps=11_000) == 2000
    assert congestion_adjustment_bps(schedule, queue_depth=0, max_queue_size=100, base_fee_ratio_bps=0) == -2000
    no_gas = FeeSchedule(gas_weight_bps=0)
    assert congestion_adjustment_bps(no_gas, queue_depth=0, max_queue_size=100, base_fee_ratio_bps=90_000) == 0
    off = FeeSchedule(congestion_queue_steps=(), max_congestion_bps=0)
    assert congestion_adjustment_bps(off, queue_depth=100, max_queue_size=100, base_fee_ratio_bps=90_000) == 0


def test_the_highest_fee_is_the_most_any_adjustments_charge() -> None:
    """What the engine counts a bulk call's payments at: compute_fee's total at the highest congestion and no
    discount, and never less than any other adjustments give."""
    rng = random.Random(11)
    schedules = [S, FeeSchedule(rate_bps=7, max_congestion_bps=1234, congestion_queue_steps=((5000, 1234),))]
    for _ in range(2000):
        schedule = rng.choice(schedules)
        amount = rng.choice((rng.randrange(1, 10**4), rng.randrange(1, 10**30), MAX - rng.randrange(10**6)))
        min_fee = rng.choice((0, 10_000, 10**15))
        most = highest_fee(schedule, amount, min_fee)
        assert most == compute_fee(schedule, amount, min_fee=min_fee, congestion_bps=schedule.max_congestion_bps).total
        other = compute_fee(
            schedule,
            amount,
            min_fee=min_fee,
            congestion_bps=rng.randrange(-schedule.max_congestion_bps, schedule.max_congestion_bps + 1),
            volume_discount_bps=rng.randrange(0, schedule.max_volume_discount_bps + 1),
            batch_discount_bps=rng.randrange(0, schedule.max_batch_discount_bps + 1),
        )
        assert other.total <= most


def test_congestion_always_within_its_bound() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        size = rng.randrange(1, 1000)
        ratio = rng.choice((None, rng.randrange(0, 100_000)))
        depth = rng.randrange(0, 2 * size)
        value = congestion_adjustment_bps(S, queue_depth=depth, max_queue_size=size, base_fee_ratio_bps=ratio)
        assert -5000 <= value <= 5000


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"queue_depth": 0, "max_queue_size": 0}, "max_queue_size must be positive"),
        ({"queue_depth": 0, "max_queue_size": -1}, "max_queue_size must be positive"),
        ({"queue_depth": -1, "max_queue_size": 10}, "queue_depth must not be negative"),
        ({"queue_depth": 0, "max_queue_size": 10, "base_fee_ratio_bps": -1}, "base_fee_ratio_bps must not be"),
        ({"queue_depth": 0.5, "max_queue_size": 10}, "queue_depth must be an int"),
        ({"queue_depth": 0, "max_queue_size": 10.0}, "max_queue_size must be an int"),
        ({"queue_depth": 0, "max_queue_size": 10, "base_fee_ratio_bps": 1.5}, "base_fee_ratio_bps must be an int"),
    ],
)
def test_congestion_refuses_invalid_inputs(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        congestion_adjustment_bps(S, **arguments)


# -- volume discounts -----------------------------------------------------------------------------------

TIERS = (VolumeTier(10_000 * USDC, 1000), VolumeTier(100_000 * USDC, 2000), VolumeTier(1_000_000 * USDC, 3000))


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        (0, 0),
        (-5, 0),  # a volume taken back below zero earns nothing
        (10_000 * USDC - 1, 0),
        (10_000 * USDC, 1000),
        (100_000 * USDC - 1, 1000),
        (100_000 * USDC, 2000),
        (1_000_000 * USDC - 1, 2000),
        (1_000_000 * USDC, 3000),
        (MAX, 3000),
    ],
)
def test_volume_tiers_at_exact_thresholds(volume: int, expected: int) -> None:
    assert volume_discount_bps(S, TIERS, volume) == expected


def test_volume_discount_is_capped() -> None:
    generous = (VolumeTier(1, 2000), VolumeTier(10, 9000))
    assert volume_discount_bps(S, generous, 5) == 2000
    assert volume_discount_bps(S, generous, 10) == 3000  # 9000 capped at the schedule's 3000
    assert volume_discount_bps(FeeSchedule(max_volume_discount_bps=1500), TIERS, 10**30) == 1500
    assert volume_discount_bps(FeeSchedule(max_volume_discount_bps=0), TIERS, 10**30) == 0


def test_volume_without_tiers_earns_nothing() -> None:
    assert volume_discount_bps(S, (), 10**30) == 0
    assert volume_discount_bps(S, [], 0) == 0


def test_volume_tier_with_the_highest_reached_threshold_wins() -> None:
    unsorted = (VolumeTier(1_000, 3000), VolumeTier(0, 500), VolumeTier(100, 1500))
    assert volume_discount_bps(S, unsorted, 0) == 500
    assert volume_discount_bps(S, unsorted, 999) == 1500
    assert volume_discount_bps(S, unsorted, 1_000) == 3000


@pytest.mark.parametrize(
    ("threshold", "discount", "message"),
    [
        (-1, 1000, "threshold must not be negative"),
        (10, -1, "discount_bps must not be negative"),
        (1.5, 1000, "threshold must be an int"),
        (10, 0.1, "discount_bps must be an int"),
    ],
)
def test_invalid_volume_tiers_are_refused(threshold: Any, discount: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VolumeTier(threshold, discount)


def test_volume_refuses_a_float_volume() -> None:
    with pytest.raises(ValueError, match="trailing_volume must be an int"):
        volume_discount_bps(S, TIERS, 1e30)  # type: ignore[arg-type]


# -- batch discounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, 0),
        (2, 0),
        (9, 0),
        (10, 1000),
        (49, 1000),
        (50, 2000),
        (99, 2000),
        (100, 3000),
        (249, 3000),
        (250, 4000),
        (10_000, 4000),
    ],
)
def test_batch_tiers(size: int, expected: int) -> None:
    assert batch_discount_bps(S, size) == expected


def test_batch_tiers_follow_the_schedule() -> None:
    assert batch_discount_bps(FeeSchedule(batch_tiers=()), 10_000) == 0
    schedule = FeeSchedule(batch_tiers=((2, 500), (1000, 1500)))
    assert [batch_discount_bps(schedule, size) for size in (1, 2, 999, 1000)] == [0, 500, 500, 1500]


@pytest.mark.parametrize(("size", "message"), [(0, "at least 1"), (-3, "at least 1"), (10.0, "must be an int")])
def test_batch_refuses_invalid_sizes(size: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        batch_discount_bps(S, size)


# -- the split ------------------------------------------------------------------------------------------


def test_staking_absorbs_the_rounding_remainder() -> None:
    # 8: 3.2 / 2.4 / 1.6 floor to 3 / 2 / 1; staking takes its 0.8 plus the remainder 1.2: 2.
    assert parts(compute_fee(S, 2334, min_fee=0)) == (8, 3, 2, 1, 2)
    # 9: 3.6 / 2.7 / 1.8 floor to 3 / 2 / 1; staking takes its 0.9 plus 2.1: 3, the largest remainder.
    assert parts(compute_fee(S, 3000, min_fee=0)) == (9, 3, 2, 1, 3)
    assert parts(compute_fee(S, 1, min_fee=0)) == (1, 0, 0, 0, 1)
    assert parts(compute_fee(S, 1, min_fee=9)) == (9, 3, 2, 1, 3)


def test_shares_follow_a_configured_split() -> None:
    fee = compute_fee(FeeSchedule(split_bps=(5000, 5000, 0, 0)), 10**6 + 1, min_fee=0)
    assert parts(fee) == (3001, 1500, 1500, 0, 1)
    # Staking's configured share is 0, yet it still takes the remainder so nothing is lost.
    fee = compute_fee(FeeSchedule(split_bps=(3333, 3333, 3334, 0)), 1000 * 1000 // 3, min_fee=0)
    assert parts(fee) == (1000, 333, 333, 333, 1)
    fee = compute_fee(FeeSchedule(split_bps=(0, 0, 0, 10_000)), 10**6, min_fee=0)
    assert parts(fee) == (3000, 0, 0, 0, 3000)


def test_shares_always_sum_to_the_total_and_match_exact_fractions() -> None:
    rng = random.Random(20261124)
    amounts = [1, 2, 3, 7, 333, 334, 10**6, 10**18, 2**128, 2**255 + 12345, MAX - 2, MAX - 1, MAX]
    amounts += [MAX - rng.randrange(0, 10**9) for _ in range(300)]  # near the top of uint256
    amounts += [rng.randrange(1, MAX + 1) for _ in range(2000)]
    amounts += [rng.randrange(1, 2 ** rng.randrange(1, 257)) for _ in range(2000)]  # every order of magnitude
    amounts += [rng.randrange(1, 10**6) for _ in range(1000)]  # where rounding and minimums matter most
    schedules = (S, FeeSchedule(rate_bps=1, split_bps=(3333, 3333, 3333, 1)), FeeSchedule(rate_bps=BPS))
    for amount in amounts:
        schedule = rng.choice(schedules)
        min_fee = rng.choice((0, 1, 10_000, 10**15, rng.randrange(0, 10**6)))
        congestion = rng.choice((-5000, 0, 5000, rng.randrange(-5000, 5001)))
        volume = rng.choice((0, 3000, rng.randrange(0, 3001)))
        batch = rng.choice((0, 4000, rng.randrange(0, 4001)))
        fee = compute_fee(
            schedule,
            amount,
            min_fee=min_fee,
            congestion_bps=congestion,
            volume_discount_bps=volume,
            batch_discount_bps=batch,
        )
        assert parts(fee) == reference_fee(schedule, amount, min_fee, congestion, volume, batch)
        assert fee.platform + fee.network + fee.agent + fee.staking == fee.total
        assert min(fee.platform, fee.network, fee.agent, fee.staking) >= 0
        assert fee.total >= min_fee
        assert all(type(value) is int for value in dataclasses.astuple(fee))
        if schedule is S:
            # The floors of 40/30/20 leave staking its 10% plus a remainder below 3 base units.
            assert fee.staking - fee.total * 1000 // BPS in range(4)


def test_exact_at_the_largest_amount() -> None:
    fee = compute_fee(S, MAX, min_fee=0)
    # 0.3% of 2**256 - 1, rounded up, with every digit kept.
    assert fee.base == fee.total == (MAX * 30 + BPS - 1) // BPS
    assert fee.total == 347376267711948586270712955026063723559809953996921692118372752023739388920
    assert fee.platform + fee.network + fee.agent + fee.staking == fee.total
    surcharged = compute_fee(S, MAX, min_fee=0, congestion_bps=5000)
    assert surcharged.total == math.ceil(Fraction(fee.base * 3, 2))


# -- invalid schedules and inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"rate_bps": -1}, "rate_bps must be 0 to 10000"),
        ({"rate_bps": 10_001}, "rate_bps must be 0 to 10000"),
        ({"rate_bps": 0.3}, "rate_bps must be an int"),
        ({"rate_bps": True}, "rate_bps must be an int"),
        ({"split_bps": (5000, 3000, 2000, 1000)}, "split_bps must be four"),  # 11_000
        ({"split_bps": (4000, 3000, 2000, 999)}, "split_bps must be four"),  # 9_999
        ({"split_bps": (11000, -1000, 0, 0)}, "split_bps must be four"),
        ({"split_bps": (5000, 3000, 2000)}, "split_bps must be four"),
        ({"split_bps": (4000, 3000, 2000, 500, 500)}, "split_bps must be four"),
        ({"split_bps": (4000.0, 3000, 2000, 1000)}, "split_bps must be four"),
        ({"split_bps": [4000, 3000, 2000, 1000]}, "split_bps must be four"),
        ({"gas_weight_bps": -1}, "gas_weight_bps must not be negative"),
        ({"max_congestion_bps": -1}, "max_congestion_bps must be 0 to 5000"),
        ({"max_congestion_bps": 5001}, "max_congestion_bps must be 0 to 5000"),
        ({"max_volume_discount_bps": -1}, "max_volume_discount_bps must be 0 to 3000"),
        ({"max_volume_discount_bps": 3001}, "max_volume_discount_bps must be 0 to 3000"),
        ({"max_batch_discount_bps": -1}, "max_batch_discount_bps must be 0 to 4000"),
        ({"max_batch_discount_bps": 4001}, "max_batch_discount_bps must be 0 to 4000"),
        ({"congestion_queue_steps": ((5000, 1000), (5000, 2000))}, "strictly ascending"),
        ({"congestion_queue_steps": ((7500, 1000), (5000, 2000))}, "strictly ascending"),
        ({"congestion_queue_steps": ((5000, 5001),)}, "within \\+-5000"),
        ({"congestion_queue_steps": ((5000, -5001),)}, "within \\+-5000"),
        ({"max_congestion_bps": 2000}, "within \\+-2000"),  # the default steps reach 5000
        ({"congestion_queue_steps": ((-1, 1000),)}, "thresholds must not be negative"),
        ({"congestion_queue_steps": ((5000,),)}, "pairs of ints"),
        ({"congestion_queue_steps": ((0.5, 1000),)}, "pairs of ints"),
        ({"batch_tiers": ((10, 1000), (10, 2000))}, "strictly ascending"),
        ({"batch_tiers": ((10, 1000), (5, 2000))}, "strictly ascending"),
        ({"batch_tiers": ((10, 4001),)}, "discounts must be 0 to 4000"),
        ({"batch_tiers": ((10, -1),)}, "discounts must be 0 to 4000"),
        ({"max_batch_discount_bps": 3000}, "discounts must be 0 to 3000"),  # the default tiers reach 4000
        ({"batch_tiers": ((1, 1000),)}, "at least 2 items"),
        ({"batch_tiers": [(10, 1000)]}, "pairs of ints"),
    ],
)
def test_invalid_schedules_are_refused(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FeeSchedule(**bad)


def test_schedule_at_its_limits_is_accepted() -> None:
    FeeSchedule(
        rate_bps=0,
        congestion_queue_steps=(),
        gas_weight_bps=0,
        max_congestion_bps=0,
        batch_tiers=(),
        max_volume_discount_bps=0,
        max_batch_discount_bps=0,
    )
    FeeSchedule(rate_bps=BPS, split_bps=(10_000, 0, 0, 0), congestion_queue_steps=((0, -5000), (1, 5000)))


def test_schedule_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        S.rate_bps = 50  # type: ignore[misc]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"amount": 0}, "amount must be positive"),
        ({"amount": -5}, "amount must be positive"),
        ({"amount": 1.0}, "amount must be an int"),
        ({"amount": True}, "amount must be an int"),
        ({"amount": "1000"}, "amount must be an int"),
        ({"min_fee": -1}, "min_fee must not be negative"),
        ({"min_fee": 0.5}, "min_fee must be an int"),
        ({"congestion_bps": 5001}, "congestion_bps must lie within"),
        ({"congestion_bps": -5001}, "congestion_bps must lie within"),
        ({"congestion_bps": 0.5}, "congestion_bps must be an int"),
        ({"volume_discount_bps": -1}, "volume_discount_bps must be 0 to 3000"),
        ({"volume_discount_bps": 3001}, "volume_discount_bps must be 0 to 3000"),
        ({"batch_discount_bps": -1}, "batch_discount_bps must be 0 to 4000"),
        ({"batch_discount_bps": 4001}, "batch_discount_bps must be 0 to 4000"),
    ],
)
def test_invalid_inputs_are_refused(bad: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"amount": 1000, "min_fee": 0, **bad}
    amount = arguments.pop("amount")
    with pytest.raises(ValueError, match=message):
        compute_fee(S, amount, **arguments)


# -- the module stays pure -------------------------------------------------------------------------------


def test_fees_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(fees.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "itertools", "collections.abc", "dataclasses"}


def test_shares_of_parts_that_cover_the_whole_sum_to_the_fee() -> None:
    whole = 3_333_337  # an amount whose fee does not divide evenly by any of these parts
    fee = compute_fee(S, whole, min_fee=10_000, congestion_bps=1000, volume_discount_bps=500)
    for parts in ([whole], [1, whole - 1], [476_191] * 6 + [whole - 6 * 476_191], [1] * 37 + [whole - 37]):
        before = 0
        shares = []
        for part in parts:
            share = fee_share(S, fee, before=before, part=part, whole=whole)
            assert share.platform + share.network + share.agent + share.staking == share.total
            assert (share.rate_bps, share.congestion_adjustment_bps, share.volume_discount_bps) == (30, 1000, 500)
            shares.append(share)
            before += part
        assert sum(s.total for s in shares) == fee.total
        assert sum(s.base for s in shares) == fee.base


def test_a_share_is_proportional_and_never_more_than_the_rest() -> None:
    fee = compute_fee(S, 100 * 10**6, min_fee=10_000)
    assert fee.total == 300_000
    half = fee_share(S, fee, before=0, part=50 * 10**6, whole=100 * 10**6)
    assert (half.total, half.platform, half.network, half.agent, half.staking) == (
        150_000,
        60_000,
        45_000,
        30_000,
        15_000,
    )
    assert fee_share(S, fee, before=0, part=0, whole=100 * 10**6).total == 0
    # A minimum fee on a tiny amount is shared too: no part pays it again.
    tiny = compute_fee(S, 3, min_fee=10_000)
    assert [fee_share(S, tiny, before=i, part=1, whole=3).total for i in range(3)] == [3_333, 3_333, 3_334]


@pytest.mark.parametrize(("before", "part", "whole"), [(-1, 1, 10), (0, -1, 10), (5, 6, 10), (0, 0, 0)])
def test_a_share_outside_the_whole_is_refused(before: int, part: int, whole: int) -> None:
    fee = compute_fee(S, 10, min_fee=1)
    with pytest.raises(ValueError, match="a share needs"):
        fee_share(S, fee, before=before, part=part, whole=whole)
