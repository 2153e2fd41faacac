"""The fee rules: rounding, minimums, each adjustment and its bounds, and shares that always add up."""

from __future__ import annotations

import random

import pytest

from agentflow_server.engine.fees import (
    FeeSchedule,
    VolumeTier,
    batch_discount_bps,
    compute_fee,
    congestion_adjustment_bps,
    volume_discount_bps,
)

S = FeeSchedule()
USDC = 10**6
ETH = 10**18
MAX = 2**256 - 1


def test_worked_examples() -> None:
    # 1 USDC at 0.3%: 3_000 base units, split 40/30/20/10.
    fee = compute_fee(S, USDC, min_fee=0)
    assert (fee.total, fee.platform, fee.network, fee.agent, fee.staking) == (3000, 1200, 900, 600, 300)
    assert (fee.base, fee.rate_bps) == (3000, 30)
    # 0.01 ETH: 0.3% is 3e13 wei, below the 0.001 ETH minimum.
    assert compute_fee(S, ETH // 100, min_fee=ETH // 1000).total == ETH // 1000


def test_rounding_goes_up_never_down() -> None:
    assert compute_fee(S, 1, min_fee=0).total == 1  # 0.003 rounds up to 1
    assert compute_fee(S, 333, min_fee=0).total == 1  # 0.999
    assert compute_fee(S, 334, min_fee=0).total == 2  # 1.002
    assert compute_fee(S, 1000, min_fee=0).total == 3  # exact
    # Adjustments round up too: 3 * 0.9 = 2.7 -> 3.
    assert compute_fee(S, 1000, min_fee=0, volume_discount_bps=1000).total == 3


def test_minimum_raises_the_base_and_floors_the_total_after_discounts() -> None:
    fee = compute_fee(S, 100, min_fee=50)
    assert (fee.base, fee.total) == (50, 50)
    discounted = compute_fee(S, 10**7, min_fee=20_000, volume_discount_bps=3000, batch_discount_bps=4000)
    # 30_000 * 0.7 * 0.6 = 12_600, below the minimum of 20_000.
    assert discounted.total == 20_000
    assert compute_fee(S, 10**7, min_fee=0, volume_discount_bps=3000, batch_discount_bps=4000).total == 12_600


def test_adjustments_multiply() -> None:
    fee = compute_fee(S, 10**9, min_fee=0, congestion_bps=5000, volume_discount_bps=1000, batch_discount_bps=2000)
    # 3_000_000 * 1.5 * 0.9 * 0.8
    assert fee.total == 3_240_000
    assert (fee.congestion_adjustment_bps, fee.volume_discount_bps, fee.batch_discount_bps) == (5000, 1000, 2000)
    assert compute_fee(S, 10**9, min_fee=0, congestion_bps=-5000).total == 1_500_000


@pytest.mark.parametrize(
    ("depth", "expected"), [(0, 0), (4999, 0), (5000, 1000), (7499, 1000), (7500, 2500), (8999, 2500), (9000, 5000)]
)
def test_congestion_steps_with_queue_utilisation(depth: int, expected: int) -> None:
    assert congestion_adjustment_bps(S, queue_depth=depth, max_queue_size=10_000) == expected


def test_congestion_gas_part_and_bounds() -> None:
    assert congestion_adjustment_bps(S, queue_depth=0, max_queue_size=10, base_fee_ratio_bps=10_000) == 0
    assert congestion_adjustment_bps(S, queue_depth=0, max_queue_size=10, base_fee_ratio_bps=14_000) == 2000
    assert congestion_adjustment_bps(S, queue_depth=0, max_queue_size=10, base_fee_ratio_bps=5_000) == -2500
    # A chain at a tenth of its usual base fee: the discount stops at -50%.
    assert congestion_adjustment_bps(S, queue_depth=0, max_queue_size=10, base_fee_ratio_bps=0) == -5000
    # A full queue on an expensive chain: the surcharge stops at +50%.
    assert congestion_adjustment_bps(S, queue_depth=10, max_queue_size=10, base_fee_ratio_bps=40_000) == 5000
    with pytest.raises(ValueError, match="max_queue_size"):
        congestion_adjustment_bps(S, queue_depth=0, max_queue_size=0)


TIERS = (VolumeTier(10_000 * USDC, 1000), VolumeTier(100_000 * USDC, 2000), VolumeTier(1_000_000 * USDC, 3000))


@pytest.mark.parametrize(
    ("volume", "expected"),
    [(0, 0), (10_000 * USDC - 1, 0), (10_000 * USDC, 1000), (100_000 * USDC, 2000), (10**30, 3000)],
)
def test_volume_tiers(volume: int, expected: int) -> None:
    assert volume_discount_bps(S, TIERS, volume) == expected


def test_volume_discount_is_capped() -> None:
    assert volume_discount_bps(S, (VolumeTier(1, 9000),), 5) == 3000
    assert volume_discount_bps(S, (), 10**30) == 0


@pytest.mark.parametrize(
    ("size", "expected"), [(1, 0), (9, 0), (10, 1000), (49, 1000), (50, 2000), (100, 3000), (250, 4000), (10_000, 4000)]
)
def test_batch_tiers(size: int, expected: int) -> None:
    assert batch_discount_bps(S, size) == expected


def test_shares_always_sum_to_the_total() -> None:
    rng = random.Random(20261124)
    amounts = [1, 2, 3, 7, 333, 334, MAX, MAX - 1, 2**128, 2**255 + 12345]
    amounts += [rng.randrange(1, MAX) for _ in range(2000)]
    amounts += [rng.randrange(1, 10**9) for _ in range(2000)]
    for amount in amounts:
        fee = compute_fee(
            S,
            amount,
            min_fee=rng.choice((0, 1, 10_000, 10**15)),
            congestion_bps=rng.randrange(-5000, 5001),
            volume_discount_bps=rng.randrange(0, 3001),
            batch_discount_bps=rng.randrange(0, 4001),
        )
        assert fee.platform + fee.network + fee.agent + fee.staking == fee.total
        assert min(fee.platform, fee.network, fee.agent, fee.staking) >= 0
        # The floors of 40/30/20 leave staking its 10% plus a remainder below 3 base units.
        assert fee.staking - fee.total * 1000 // 10_000 in range(4)


def test_shares_follow_a_configured_split() -> None:
    schedule = FeeSchedule(split_bps=(5000, 5000, 0, 0))
    fee = compute_fee(schedule, 10**6 + 1, min_fee=0)
    assert (fee.platform, fee.network, fee.agent, fee.staking) == (1500, 1500, 0, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"rate_bps": -1},
        {"rate_bps": 10_001},
        {"split_bps": (5000, 3000, 2000, 1000)},
        {"split_bps": (11000, -1000, 0, 0)},
        {"max_congestion_bps": 6000},
        {"max_volume_discount_bps": 3001},
        {"max_batch_discount_bps": 4001},
        {"gas_weight_bps": -1},
        {"congestion_queue_steps": ((5000, 1000), (5000, 2000))},
        {"congestion_queue_steps": ((5000, 6000),)},
        {"batch_tiers": ((10, 1000), (5, 2000))},
        {"batch_tiers": ((10, 5000),)},
    ],
)
def test_invalid_schedules_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        FeeSchedule(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"amount": 0},
        {"amount": -5},
        {"min_fee": -1},
        {"congestion_bps": 5001},
        {"congestion_bps": -5001},
        {"volume_discount_bps": -1},
        {"volume_discount_bps": 3001},
        {"batch_discount_bps": 4001},
    ],
)
def test_invalid_inputs_are_refused(bad: dict[str, int]) -> None:
    arguments: dict[str, int] = {"amount": 1000, "min_fee": 0, **bad}
    amount = arguments.pop("amount")
    with pytest.raises(ValueError, match=r"must|beyond"):
        compute_fee(S, amount, **arguments)
