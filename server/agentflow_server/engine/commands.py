"""The typed commands every service hands to the engine: the only ways the ledger changes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..tokens import Token
from .model import Batch, Priority


@dataclass(frozen=True, slots=True)
class SubmitPayment:
    """Accept a payment: price it, reserve amount plus fee from the payer, queue it for settlement.

    ``batch_size`` is the number of items of the SubmitPayments call it came in (1 alone), which sets the
    batch discount. Fields are already validated; ``request_id`` may be empty (no idempotency).
    """

    payer: str
    payee: str
    token: Token
    amount: int
    priority: Priority
    task_id: str
    memo: str
    metadata: tuple[tuple[str, str], ...]
    request_id: str
    batch_size: int = 1

    def request_hash(self) -> str:
        """What the request means, as a digest: the same request_id with another meaning is a conflict."""
        fields = [
            self.payer,
            self.payee,
            self.token.symbol,
            str(self.amount),
            str(int(self.priority)),
            self.task_id,
            self.memo,
            *(part for pair in sorted(self.metadata) for part in pair),
        ]
        # Each field prefixed by its length, so no choice of values makes two requests read the same.
        return hashlib.sha256("".join(f"{len(f)}:{f}" for f in fields).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Take ``amount`` out of ``address``'s available balance and pay it to ``destination`` on chain, in a
    settlement batch like a payment. ``request_id`` may be empty (no idempotency)."""

    address: str
    destination: str
    token: Token
    amount: int
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest (see :meth:`SubmitPayment.request_hash`)."""
        fields = [self.address, self.destination, self.token.symbol, str(self.amount)]
        return hashlib.sha256("".join(f"{len(f)}:{f}" for f in fields).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CancelPayment:
    """Cancel a payment still in the queue; its reservation goes back to available.

    ``acts_for`` are the addresses the caller may act for and ``sees`` those whose payments it may read
    (``None``: all). A payment the caller cannot see is NOT_FOUND, so ids are not probed.
    """

    payment_id: str
    reason: str
    acts_for: frozenset[str] | None
    sees: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class CreditDeposit:
    """Credit funds that arrived on chain, exactly once per (transaction hash, log index)."""

    beneficiary: str
    depositor: str
    token: Token
    amount: int
    transaction_hash: str
    log_index: int
    block_number: int


@dataclass(frozen=True, slots=True)
class RecordFeePayout:
    """The contract paid out settled fees (``FeesDistributed``: ``recipient`` is None, the amount leaves the
    ledger's fees), or kept a refusing recipient's part for it (``FeeCredited``: the recipient is credited).
    Once per (transaction hash, log index)."""

    token: Token
    amount: int
    recipient: str | None
    transaction_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class RecordExit:
    """A depositor took what it held of a token out of the contract through the exit hatch (``Exited``):
    its queued payments and withdrawals of that token fail (the contract would skip them), and the amount
    leaves its balance. Once per (transaction hash, log index)."""

    address: str
    token: Token
    amount: int
    transaction_hash: str
    log_index: int


@dataclass(frozen=True, slots=True)
class CompletePayment:
    """Record that a payment settled on chain: its reservation leaves the ledger to the payee and fees."""

    payment_id: str
    batch_id: str
    transaction_hash: str
    block_number: int
    gas_used: int
    gas_cost_wei: int


@dataclass(frozen=True, slots=True)
class FailPayment:
    """Record that a payment could not be settled: its reservation goes back to the payer."""

    payment_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class SetChainState:
    """Record chain facts (the chain's identity, how far a watcher read), in the order of the commands
    before it: a watcher's position is committed only once what it credited is."""

    values: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class OpenBatch:
    """Form a batch: each named payment still queued goes PROCESSING and leaves the queue; the others
    (cancelled meanwhile) are left out. The result is the batch as written, before anything is sent."""

    batch_id: str
    chain_batch_id: int
    payment_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Write a batch's progress (a transaction signed or sent, an attempt counted); payments unchanged."""

    batch: Batch


@dataclass(frozen=True, slots=True)
class SettleBatch:
    """A batch's transaction reached its confirmations: its payments complete. Items whose payee could not
    receive (``credited``) are credited to the payee in the ledger, as the contract did; items the contract
    skipped (``skipped``) fail with their reservation released. Indexes are item positions."""

    batch: Batch
    credited: frozenset[int]
    skipped: frozenset[int]


@dataclass(frozen=True, slots=True)
class FailBatch:
    """A batch could not be settled after its retries: its payments fail and their reservations go back."""

    batch: Batch
    reason: str


Command = (
    SubmitPayment
    | Withdraw
    | CancelPayment
    | CreditDeposit
    | RecordFeePayout
    | RecordExit
    | CompletePayment
    | FailPayment
    | SetChainState
    | OpenBatch
    | RecordBatch
    | SettleBatch
    | FailBatch
)
