"""The settlement queue: earliest virtual deadline first, so waiting bounds every class's delay."""

from __future__ import annotations

import random

from agentflow_server.engine.model import Priority
from agentflow_server.engine.queue import QueuePolicy, SettlementQueue

USDC_DECIMALS = 6


def push(queue: SettlementQueue, payment_id: str, priority: Priority, at: float, amount: int = 10**6) -> None:
    queue.push(payment_id, priority, at, amount, USDC_DECIMALS)


def test_classes_in_order_when_accepted_together() -> None:
    queue = SettlementQueue()
    for name, priority in (("low", Priority.LOW), ("normal", Priority.NORMAL), ("high", Priority.HIGH)):
        push(queue, name, priority, 0.0)
    push(queue, "urgent", Priority.URGENT, 0.0)
    assert queue.pop(10) == ["urgent", "high", "normal", "low"]
    assert len(queue) == 0


def test_a_low_payment_is_not_starved_by_a_steady_stream_of_urgent_ones() -> None:
    queue = SettlementQueue()
    push(queue, "low", Priority.LOW, 0.0)
    # One urgent payment a second, forever; one payment settles a second.
    settled_at = None
    for second in range(1, 1000):
        push(queue, f"urgent-{second}", Priority.URGENT, float(second))
        if queue.pop(1) == ["low"]:
            settled_at = second
            break
    # Its class's window (300 s) bounds its wait: after it, it is ahead of every later urgent payment.
    assert settled_at is not None
    assert settled_at <= 301


def test_large_amounts_go_earlier_within_a_bound() -> None:
    policy = QueuePolicy()
    small = policy.deadline(Priority.NORMAL, 0.0, 1, USDC_DECIMALS)
    large = policy.deadline(Priority.NORMAL, 0.0, 10**6 * 10**6, USDC_DECIMALS)  # a million USDC
    huge = policy.deadline(Priority.NORMAL, 0.0, 10**40, USDC_DECIMALS)
    assert small == 60.0
    assert large < small
    # Never more than 20% of the window earlier: an amount does not jump its class.
    assert huge == 60.0 * 0.8
    assert huge > policy.deadline(Priority.HIGH, 0.0, 1, USDC_DECIMALS)


def test_removed_payments_are_skipped_and_compacted() -> None:
    queue = SettlementQueue()
    for i in range(3000):
        push(queue, f"p{i}", Priority.NORMAL, float(i))
    for i in range(0, 3000, 2):
        assert queue.remove(f"p{i}")
    assert not queue.remove("p0")
    assert len(queue) == 1500
    assert "p1" in queue
    assert "p0" not in queue
    assert queue.pop(3) == ["p1", "p3", "p5"]
    assert len(queue._heap) < 3000  # compacted once removals outnumbered live entries


def test_a_batch_taken_off_the_front_leaves_nothing_for_the_next_peek_to_walk_past() -> None:
    queue = SettlementQueue()
    for i in range(3000):
        push(queue, f"p{i}", Priority.NORMAL, float(i))
    for _ in range(3):
        for _, payment_id in queue.peek(400):
            assert queue.remove(payment_id)
    # The removed entries were the heap's front: they are gone from it, not kept until a compaction.
    assert len(queue._heap) == len(queue) == 1800
    assert [payment_id for _, payment_id in queue.peek(2)] == ["p1200", "p1201"]


def test_a_second_push_replaces_the_first() -> None:
    queue = SettlementQueue()
    push(queue, "a", Priority.LOW, 0.0)
    push(queue, "b", Priority.NORMAL, 0.0)
    push(queue, "a", Priority.URGENT, 1.0)
    assert len(queue) == 2
    assert queue.pop(5) == ["a", "b"]


def test_peek_shows_the_front_in_order_and_takes_nothing() -> None:
    queue = SettlementQueue()
    rng = random.Random(7)
    for i in range(2_000):
        queue.push(f"p{i}", rng.choice(list(Priority)), rng.uniform(0, 1000), rng.randrange(1, 10**9), 6)
    for i in range(0, 2_000, 3):
        queue.remove(f"p{i}")
    front = queue.peek(250)
    assert len(queue) == 2_000 - len(range(0, 2_000, 3))
    assert [payment_id for _, payment_id in front] == queue.pop(250)
    assert [deadline for deadline, _ in front] == sorted(deadline for deadline, _ in front)
    rest = queue.peek(10**6)
    assert len(rest) == len(queue)
    assert [payment_id for _, payment_id in rest] == queue.pop(10**6)
