"""The v1 message form of the ledger's objects: what the API answers and what the event log stores."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from google.protobuf import timestamp_pb2

from agentflow_payments.v1 import accounts_pb2, common_pb2, escrow_pb2, events_pb2, payments_pb2

from .engine.fees import Fee
from .engine.model import Batch, Deposit, Escrow, Payment, PaymentStatus
from .ledger.events import StoredEvent

# Messages on the acceptance path are filled field by field: with upb, keyword arguments cost about three
# times as much (a message argument is copied in, and even an empty map argument costs 2-3 µs).


def timestamp(time_us: int) -> timestamp_pb2.Timestamp:
    """A Timestamp from integer microseconds since the epoch."""
    message = timestamp_pb2.Timestamp()
    _set_time(message, time_us)
    return message


def _set_time(message: timestamp_pb2.Timestamp, time_us: int) -> None:
    # Direct fields: Timestamp.FromMicroseconds is pure Python and showed in the hot path's profile.
    seconds, micros = divmod(time_us, 1_000_000)
    message.seconds = seconds
    message.nanos = micros * 1000


def fee_message(fee: Fee, token: str) -> common_pb2.FeeBreakdown:
    """A fee as the API shows it."""
    message = common_pb2.FeeBreakdown()
    _set_fee(message, fee, token)
    return message


def _set_fee(message: common_pb2.FeeBreakdown, fee: Fee, token: str) -> None:
    message.total = str(fee.total)
    message.platform = str(fee.platform)
    message.network = str(fee.network)
    message.agent = str(fee.agent)
    message.staking = str(fee.staking)
    message.base = str(fee.base)
    message.rate_bps = fee.rate_bps
    message.congestion_adjustment_bps = fee.congestion_adjustment_bps
    message.volume_discount_bps = fee.volume_discount_bps
    message.batch_discount_bps = fee.batch_discount_bps
    message.token = token


# The engine serializes each payment it changes for the event log, and the API answers with the same
# payment moments later: keep the latest serializations, keyed by the payment's state.
_SERIALIZED: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
_SERIALIZED_MAX = 16_384
# A payment's fields fixed at acceptance, serialized once for its later states (each event of a payment
# carries it whole): a batch changes hundreds of payments twice within a second.
_FIXED: OrderedDict[str, bytes] = OrderedDict()
_FIXED_MAX = 16_384


def payment_bytes(payment: Payment) -> bytes:
    """The serialized v1 ``Payment`` of a payment as it is now."""
    key = (payment.payment_id, payment.update_time_us, int(payment.status))
    found = _SERIALIZED.get(key)
    if found is None:
        # Two serialized messages one after the other parse as their merge: the fixed part and the state
        # part (disjoint fields) make the whole payment.
        found = _SERIALIZED[key] = _fixed_bytes(payment) + _state_message(payment).SerializeToString()
        if len(_SERIALIZED) > _SERIALIZED_MAX:
            _SERIALIZED.popitem(last=False)
    return found


def payment_message(payment: Payment) -> payments_pb2.Payment:
    """A payment as the API shows it."""
    return payments_pb2.Payment.FromString(payment_bytes(payment))


def set_payment(message: payments_pb2.Payment, payment: Payment) -> None:
    """Make ``message``, an empty field of a response, show ``payment``: parsed in place, where building
    the message apart and copying it in cost twice as much."""
    message.MergeFromString(payment_bytes(payment))


def _fixed_bytes(payment: Payment) -> bytes:
    """The fields of a payment that never change after it is accepted, serialized."""
    found = _FIXED.get(payment.payment_id)
    if found is None:
        message = payments_pb2.Payment()
        message.name = payment.name
        message.payer = payment.payer
        message.payee = payment.payee
        message.token = payment.token
        message.amount = str(payment.amount)
        _set_fee(message.fee, payment.fee, payment.token)
        message.priority = int(payment.priority)  # type: ignore[assignment]
        message.task_id = payment.task_id
        message.memo = payment.memo
        if payment.metadata:
            message.metadata.update(payment.metadata)
        message.request_id = payment.request_id
        _set_time(message.create_time, payment.create_time_us)
        if payment.escrow_id:
            message.escrow = f"escrows/{payment.escrow_id}"
        found = _FIXED[payment.payment_id] = message.SerializeToString()
        if len(_FIXED) > _FIXED_MAX:
            _FIXED.popitem(last=False)
    return found


def _state_message(payment: Payment) -> payments_pb2.Payment:
    """The fields of a payment that its later states change."""
    message = payments_pb2.Payment()
    message.status = int(payment.status)  # type: ignore[assignment]
    _set_time(message.update_time, payment.update_time_us)
    message.failure_reason = payment.failure_reason
    settlement = payment.settlement
    if settlement is not None:
        message.settlement.CopyFrom(
            payments_pb2.PaymentSettlement(
                batch=f"batches/{settlement.batch_id}",
                transaction_hash=settlement.transaction_hash,
                block_number=settlement.block_number,
                gas_used=str(settlement.gas_used),
                gas_cost_wei=str(settlement.gas_cost_wei),
                complete_time=timestamp(settlement.complete_time_us),
            )
        )
    elif payment.batch_id:
        # In a batch not settled (yet, or ever): the batch is known from the moment the payment is processing.
        message.settlement.batch = f"batches/{payment.batch_id}"
    return message


def deposit_message(deposit: Deposit) -> accounts_pb2.Deposit:
    """A credited deposit as the API shows it."""
    return accounts_pb2.Deposit(
        name=deposit.name,
        beneficiary=deposit.beneficiary,
        depositor=deposit.depositor,
        token=deposit.token,
        amount=str(deposit.amount),
        transaction_hash=deposit.transaction_hash,
        log_index=deposit.log_index,
        block_number=deposit.block_number,
        confirm_time=timestamp(deposit.confirm_time_us),
    )


def batch_message(batch: Batch, payments: Iterable[Payment]) -> payments_pb2.Batch:
    """A batch as the API shows it; ``payments`` are its payments (for the per-token totals)."""
    totals: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for payment in payments:
        names[payment.payment_id] = payment.name
        count_amount_fee = totals.setdefault(payment.token, [0, 0, 0])
        count_amount_fee[0] += 1
        count_amount_fee[1] += payment.amount
        count_amount_fee[2] += payment.fee.total
    message = payments_pb2.Batch(
        name=batch.name,
        chain_batch_id=batch.chain_batch_id,
        status=int(batch.status),  # type: ignore[arg-type]
        payments=[names.get(payment_id, f"payments/{payment_id}") for payment_id in batch.payment_ids],
        totals=[
            payments_pb2.BatchTokenTotal(token=token, payment_count=count, amount=str(amount), fee=str(fee))
            for token, (count, amount, fee) in sorted(totals.items())
        ],
        transaction_hash=batch.transaction_hash or (batch.transactions[-1].hash if batch.transactions else ""),
        block_number=batch.block_number or 0,
        gas_used=str(batch.gas_used) if batch.gas_used is not None else "",
        attempts=batch.attempts,
        failure_reason=batch.failure_reason,
        create_time=timestamp(batch.create_time_us),
    )
    if batch.submit_time_us is not None:
        message.submit_time.CopyFrom(timestamp(batch.submit_time_us))
    if batch.confirm_time_us is not None:
        message.confirm_time.CopyFrom(timestamp(batch.confirm_time_us))
    return message


_WITHDRAWAL_STATUS = {
    PaymentStatus.QUEUED: 1,
    PaymentStatus.PROCESSING: 2,
    PaymentStatus.COMPLETED: 3,
    PaymentStatus.FAILED: 4,
}


def withdrawal_message(withdrawal: Payment) -> accounts_pb2.Withdrawal:
    """A withdrawal (a payments-table item of kind WITHDRAWAL) as the API shows it."""
    settlement = withdrawal.settlement
    message = accounts_pb2.Withdrawal(
        name=withdrawal.name,
        address=withdrawal.payer,
        destination=withdrawal.payee,
        token=withdrawal.token,
        amount=str(withdrawal.amount),
        status=_WITHDRAWAL_STATUS[withdrawal.status],  # type: ignore[arg-type]
        transaction_hash=settlement.transaction_hash if settlement else "",
        block_number=settlement.block_number if settlement else 0,
        failure_reason=withdrawal.failure_reason,
        request_id=withdrawal.request_id,
        create_time=timestamp(withdrawal.create_time_us),
    )
    if settlement is not None:
        message.complete_time.CopyFrom(timestamp(settlement.complete_time_us))
    return message


def escrow_message(escrow: Escrow) -> escrow_pb2.Escrow:
    """An escrow as the API shows it."""
    message = escrow_pb2.Escrow(
        name=escrow.name,
        task_id=escrow.task_id,
        payer=escrow.payer,
        payee=escrow.payee,
        token=escrow.token,
        amount=str(escrow.amount),
        released_amount=str(escrow.released_amount),
        refunded_amount=str(escrow.refunded_amount),
        held_amount=str(escrow.held),
        fee=fee_message(escrow.fee, escrow.token),
        release_condition=int(escrow.release_condition),  # type: ignore[arg-type]
        arbiter=escrow.arbiter or "",
        verifier=escrow.verifier or "",
        expiry_action=int(escrow.expiry_action),  # type: ignore[arg-type]
        expire_time=timestamp(escrow.expire_time_us),
        status=int(escrow.status),  # type: ignore[arg-type]
        expired=escrow.expired,
        priority=int(escrow.priority),  # type: ignore[arg-type]
        release_payments=[f"payments/{payment_id}" for payment_id in escrow.release_payments],
        metadata=escrow.metadata,
        request_id=escrow.request_id,
        create_time=timestamp(escrow.create_time_us),
        update_time=timestamp(escrow.update_time_us),
        refund_reason=escrow.refund_reason,
        result_hash=escrow.result_hash or "",
    )
    dispute = escrow.dispute
    if dispute is not None:
        message.dispute.CopyFrom(
            escrow_pb2.EscrowDispute(
                raised_by=dispute.raised_by,
                reason=dispute.reason,
                create_time=timestamp(dispute.create_time_us),
                payee_amount="" if dispute.payee_amount is None else str(dispute.payee_amount),
                payer_amount="" if dispute.payer_amount is None else str(dispute.payer_amount),
                resolution_note=dispute.resolution_note,
            )
        )
        if dispute.resolve_time_us is not None:
            message.dispute.resolve_time.CopyFrom(timestamp(dispute.resolve_time_us))
    return message


# Event.data's field number for each event family: the log's payload is that message, serialized.
_EVENT_DATA_FIELD = {"payment": 10, "escrow": 11, "batch": 12, "deposit": 13, "withdrawal": 14, "webhook": 15}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field (a message or bytes), as protobuf encodes it."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def event_bytes(event: StoredEvent) -> bytes:
    """The serialized v1 ``Event``: its header, then the stored payload as its ``data`` field.

    Built from bytes: the payload is stored serialized, and a stream sends the same event to every
    subscriber, so it is neither parsed nor serialized again.
    """
    header = events_pb2.Event(
        sequence=event.sequence,
        type=event.type,
        create_time=timestamp(event.create_time_us),
        resource=event.resource,
        addresses=event.addresses,
        task_id=event.task_id,
    ).SerializeToString()
    return header + _field_bytes(_EVENT_DATA_FIELD[event.type.partition(".")[0]], event.payload)


def event_message(event: StoredEvent) -> events_pb2.Event:
    """An event as the API shows it."""
    return events_pb2.Event.FromString(event_bytes(event))


def subscribe_response_bytes(event: StoredEvent) -> bytes:
    """The serialized ``SubscribeEventsResponse`` carrying one event."""
    return _field_bytes(1, event_bytes(event))
