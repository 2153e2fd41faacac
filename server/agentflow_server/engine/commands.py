"""The typed commands every service hands to the engine: the only ways the ledger changes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..ledger.group import RecordWrite
from ..tokens import Token
from .model import Batch, ExpiryAction, Priority, ReleaseCondition


@dataclass(frozen=True, slots=True)
class SubmitPayment:
    """Accept a payment: price it, reserve amount plus fee from the payer, queue it for settlement.

    Fields are already validated; ``request_id`` may be empty (no idempotency). Payments submitted together
    go through :meth:`Engine.submit_payments`, which sets their batch discount.
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


def _digest(fields: list[str]) -> str:
    # Each field prefixed by its length, so no choice of values makes two requests read the same.
    return hashlib.sha256("".join(f"{len(f)}:{f}" for f in fields).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for an escrow step: the addresses its API key is bound to, and whether it is an admin.

    The engine decides with the escrow in hand whether this caller may take the step (the payer
    releases, the payee refunds, the arbiter resolves...). ``reads_everything``: it may see every escrow.
    ``arbiter_only``: an arbiter-scope key, which acts only as the arbiter of the escrows it is bound to.
    """

    addresses: frozenset[str]
    admin: bool = False
    reads_everything: bool = False
    arbiter_only: bool = False

    def sees(self, parties: tuple[str, ...]) -> bool:
        """Whether the caller may see an escrow naming these addresses."""
        return self.admin or self.reads_everything or not self.addresses.isdisjoint(parties)

    def is_party(self, address: str) -> bool:
        """Whether the caller may act as ``address``, the payer or payee of an escrow."""
        return address in self.addresses and not self.arbiter_only

    def is_arbiter(self, address: str | None) -> bool:
        """Whether the caller may act as ``address``, the arbiter of an escrow."""
        return address is not None and address in self.addresses


@dataclass(frozen=True, slots=True)
class CreateEscrow:
    """Hold ``amount`` and its fee from the payer's available balance for a task. Fields are validated;
    ``expire_time_us`` None means the configured default from now."""

    payer: str
    payee: str
    token: Token
    amount: int
    task_id: str
    expire_time_us: int | None
    release_condition: ReleaseCondition
    arbiter: str | None
    verifier: str | None
    expiry_action: ExpiryAction
    priority: Priority
    metadata: tuple[tuple[str, str], ...]
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest (see :meth:`SubmitPayment.request_hash`)."""
        return _digest(
            [
                self.payer,
                self.payee,
                self.token.symbol,
                str(self.amount),
                self.task_id,
                str(self.expire_time_us or ""),
                str(int(self.release_condition)),
                self.arbiter or "",
                self.verifier or "",
                str(int(self.expiry_action)),
                str(int(self.priority)),
                *(part for pair in sorted(self.metadata) for part in pair),
            ]
        )


@dataclass(frozen=True, slots=True)
class ReleaseEscrow:
    """Release ``amount`` (everything held when None) to the payee as a settlement payment."""

    escrow_id: str
    amount: int | None
    actor: Actor
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest."""
        return _digest(["release", self.escrow_id, str(self.amount or "")])


@dataclass(frozen=True, slots=True)
class RefundEscrow:
    """Return what is held (and its fee) to the payer's available balance."""

    escrow_id: str
    reason: str
    actor: Actor
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest."""
        return _digest(["refund", self.escrow_id, self.reason])


@dataclass(frozen=True, slots=True)
class DisputeEscrow:
    """Freeze an active escrow until its arbiter resolves it. ``raised_by`` is empty when the caller left
    it to the engine to pick the one party the key is bound to."""

    escrow_id: str
    reason: str
    raised_by: str
    actor: Actor
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest."""
        return _digest(["dispute", self.escrow_id, self.reason, self.raised_by])


@dataclass(frozen=True, slots=True)
class ResolveDispute:
    """Split a disputed escrow's held amount: ``payee_amount`` released, ``payer_amount`` refunded."""

    escrow_id: str
    payee_amount: int
    payer_amount: int
    note: str
    actor: Actor
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest."""
        return _digest(["resolve", self.escrow_id, str(self.payee_amount), str(self.payer_amount), self.note])


@dataclass(frozen=True, slots=True)
class AttestTaskResult:
    """A task result attested by ``signer`` (recovered from its EIP-191 signature before the command is
    made): releases everything held when the signer is the escrow's verifier."""

    escrow_id: str
    result_hash: str
    signer: str
    actor: Actor
    request_id: str

    def request_hash(self) -> str:
        """What the request means, as a digest."""
        return _digest(["attest", self.escrow_id, self.result_hash, self.signer])


@dataclass(frozen=True, slots=True)
class ExpireEscrow:
    """An escrow's deadline passed: if it is still active, its expiry action runs. Otherwise nothing."""

    escrow_id: str


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to write with a :class:`StoreRecords`: its type, resource, addresses, task and payload (the
    serialized v1 resource)."""

    type: str
    resource: str
    addresses: tuple[str, ...]
    task_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoreRecords:
    """Write records kept beside the ledger (webhook endpoints and deliveries), and the events they record,
    in a group's transaction: the engine stays the database's one writer.

    ``write`` runs in the ledger writer (its process, or its thread) inside the transaction, so it must pickle
    (see ``RecordWrite``). It is plain inserts and updates by key; an error in it fails the whole group, like
    a failed commit.
    """

    write: RecordWrite
    events: tuple[NewEvent, ...] = ()


EscrowStep = ReleaseEscrow | RefundEscrow | DisputeEscrow | ResolveDispute | AttestTaskResult
"""The commands a caller takes on an existing escrow."""


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
    | CreateEscrow
    | ReleaseEscrow
    | RefundEscrow
    | DisputeEscrow
    | ResolveDispute
    | AttestTaskResult
    | ExpireEscrow
    | StoreRecords
)
