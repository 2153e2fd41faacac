"""The ledger's domain objects: payments, deposits, and the enums the journal and the API share by number."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .fees import Fee

CHAIN = "@chain"
"""The pseudo-address money comes from when deposited and goes to when settled or withdrawn."""


class PaymentStatus(enum.IntEnum):
    """Where a payment is (the numbers are the API's PaymentStatus)."""

    QUEUED = 1
    PROCESSING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


class PaymentKind(enum.IntEnum):
    """What a settlement item is: a payment between agents, or a withdrawal to a chain address."""

    PAYMENT = 1
    WITHDRAWAL = 2


class Priority(enum.IntEnum):
    """How urgently a payment should reach the chain (the API's Priority)."""

    LOW = 1
    NORMAL = 2
    HIGH = 3
    URGENT = 4


class Bucket(enum.IntEnum):
    """The three balances of an account (the API's LedgerBucket)."""

    AVAILABLE = 1
    RESERVED = 2
    ESCROWED = 3


class TransferKind(enum.IntEnum):
    """Why money moved (the API's LedgerEntryKind)."""

    DEPOSIT = 1
    PAYMENT_RESERVE = 2
    PAYMENT_SETTLE = 3
    FEE = 4
    PAYMENT_RELEASE = 5
    ESCROW_HOLD = 6
    ESCROW_RELEASE = 7
    ESCROW_REFUND = 8
    WITHDRAWAL = 9


@dataclass(slots=True)
class Balance:
    """One account's three balances, in base units."""

    available: int = 0
    reserved: int = 0
    escrowed: int = 0


@dataclass(slots=True)
class Settlement:
    """How a payment reached the chain."""

    batch_id: str
    transaction_hash: str
    block_number: int
    gas_used: int
    gas_cost_wei: int
    complete_time_us: int


@dataclass(slots=True)
class Payment:
    """A payment from one agent to another.

    Once accepted, only its state changes: ``status``, ``update_time_us``, ``failure_reason``, ``batch_id``
    and ``settlement``. The ledger writes a changed payment's state alone, and its event payloads reuse
    the rest serialized once.
    """

    payment_id: str
    payer: str
    payee: str
    token: str
    amount: int
    fee: Fee
    priority: Priority
    status: PaymentStatus
    task_id: str
    memo: str
    metadata: dict[str, str]
    request_id: str
    create_time_us: int
    update_time_us: int
    failure_reason: str = ""
    escrow_id: str | None = None
    settlement: Settlement | None = None
    batch_id: str | None = field(default=None)
    kind: PaymentKind = PaymentKind.PAYMENT

    @property
    def name(self) -> str:
        """The resource name, ``payments/{payment_id}`` (``withdrawals/{payment_id}`` for a withdrawal)."""
        if self.kind is PaymentKind.WITHDRAWAL:
            return f"withdrawals/{self.payment_id}"
        return f"payments/{self.payment_id}"

    @property
    def event_prefix(self) -> str:
        """``payment`` or ``withdrawal``: the family of its events."""
        return "withdrawal" if self.kind is PaymentKind.WITHDRAWAL else "payment"

    @property
    def debit(self) -> int:
        """What the payment takes from the payer: the amount and the fee."""
        return self.amount + self.fee.total


@dataclass(frozen=True, slots=True)
class Deposit:
    """Funds that arrived on chain for a beneficiary and were credited once."""

    beneficiary: str
    depositor: str
    token: str
    amount: int
    transaction_hash: str
    log_index: int
    block_number: int
    confirm_time_us: int

    @property
    def name(self) -> str:
        """The resource name, ``deposits/{transaction_hash}-{log_index}``."""
        return f"deposits/{self.transaction_hash}-{self.log_index}"


FEES = "@fees"
"""The pseudo-address holding settled fees until the contract pays them out to the fee recipients."""


class BatchStatus(enum.IntEnum):
    """Where a settlement batch is (the API's BatchStatus)."""

    PENDING = 1
    SUBMITTED = 2
    CONFIRMED = 3
    FAILED = 4


@dataclass(frozen=True, slots=True)
class SentTransaction:
    """One signed version of a batch's transaction, kept so it can be sent again after a restart."""

    hash: str
    raw: str
    nonce: int
    gas: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(slots=True)
class Batch:
    """A settlement batch: one call of the contract's ``settle``, carrying payments in item order."""

    batch_id: str
    chain_batch_id: int
    status: BatchStatus
    payment_ids: list[str]
    create_time_us: int
    update_time_us: int
    transactions: list[SentTransaction] = field(default_factory=list)
    attempts: int = 0
    transaction_hash: str | None = None
    block_number: int | None = None
    block_hash: str | None = None
    gas_used: int | None = None
    gas_price: int | None = None
    failure_reason: str = ""
    submit_time_us: int | None = None
    confirm_time_us: int | None = None

    @property
    def name(self) -> str:
        """The resource name, ``batches/{batch_id}``."""
        return f"batches/{self.batch_id}"
