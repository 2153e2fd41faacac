"""The ledger's domain objects: payments, deposits, and the enums the journal and the API share by number."""

from __future__ import annotations

import dataclasses
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


class EscrowStatus(enum.IntEnum):
    """Where an escrow is in its life (the API's EscrowStatus)."""

    ACTIVE = 1
    DISPUTED = 2
    RELEASED = 3
    REFUNDED = 4
    RESOLVED = 5


class ReleaseCondition(enum.IntEnum):
    """What releases an escrow (the API's ReleaseCondition)."""

    PAYER_APPROVAL = 1
    VERIFIER_ATTESTATION = 2
    ARBITER = 3


class ExpiryAction(enum.IntEnum):
    """What happens to an escrow still active at its deadline (the API's ExpiryAction)."""

    REFUND_PAYER = 1
    RELEASE_TO_PAYEE = 2


@dataclass(slots=True)
class Dispute:
    """A dispute raised on an escrow, and its resolution once the arbiter gives one."""

    raised_by: str
    reason: str
    create_time_us: int
    payee_amount: int | None = None
    payer_amount: int | None = None
    resolution_note: str = ""
    resolve_time_us: int | None = None


@dataclass(slots=True)
class Escrow:
    """Funds held for a task: ``amount`` and its ``fee`` moved from the payer's available balance to its
    escrowed one, until released to the payee (in parts, each a settlement payment), refunded, expired
    or split by an arbiter.

    ``fee_charged`` is the part of the fee already carried by release payments: each release carries the
    fee of what it releases, and whatever is refunded takes its own fee back with it.
    """

    escrow_id: str
    task_id: str
    payer: str
    payee: str
    token: str
    amount: int
    fee: Fee
    release_condition: ReleaseCondition
    arbiter: str | None
    verifier: str | None
    expiry_action: ExpiryAction
    expire_time_us: int
    priority: Priority
    metadata: dict[str, str]
    request_id: str
    create_time_us: int
    update_time_us: int
    status: EscrowStatus = EscrowStatus.ACTIVE
    expired: bool = False
    released_amount: int = 0
    refunded_amount: int = 0
    fee_charged: int = 0
    dispute: Dispute | None = None
    release_payments: list[str] = field(default_factory=list)
    result_hash: str | None = None
    refund_reason: str = ""

    @property
    def name(self) -> str:
        """The resource name, ``escrows/{escrow_id}``."""
        return f"escrows/{self.escrow_id}"

    @property
    def held(self) -> int:
        """What is still held of the amount (its remaining fee is held beside it)."""
        return self.amount - self.released_amount - self.refunded_amount

    @property
    def held_fee(self) -> int:
        """The part of the fee still held."""
        return self.fee.total - self.fee_charged

    @property
    def parties(self) -> tuple[str, ...]:
        """Every address the escrow names: payer, payee, and the arbiter and verifier where named."""
        return tuple(a for a in (self.payer, self.payee, self.arbiter, self.verifier) if a is not None)

    def snapshot(self) -> Escrow:
        """A copy that later changes to this escrow do not reach."""
        copy = dataclasses.replace(self, release_payments=list(self.release_payments), metadata=dict(self.metadata))
        if self.dispute is not None:
            copy.dispute = dataclasses.replace(self.dispute)
        return copy


@dataclass(frozen=True, slots=True)
class EscrowOutcome:
    """What an escrow command did: the escrow after it, and the settlement payment it created, if any."""

    escrow: Escrow
    payment: Payment | None = None
