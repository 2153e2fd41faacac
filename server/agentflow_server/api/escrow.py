"""EscrowService: validates each request, hands the engine a typed escrow command, answers with the result.

Who may take which step is decided by the engine with the escrow in hand (``engine/escrows.py``); this
layer checks the fields, that the payer of a new escrow is the caller's own, and recovers the signer of a
task result's signature, which is the slow part of an attestation and needs no ledger state.
"""

from __future__ import annotations

import re

from agentflow_payments.v1 import escrow_pb2, escrow_pb2_grpc

from ..attestation import recover_signer
from ..auth import Principal, Scope, current_principal
from ..clock import Clock
from ..engine import commands
from ..engine.commands import Actor, CreateEscrow, EscrowStep
from ..engine.engine import Engine
from ..engine.escrows import escrow_not_found
from ..engine.model import Escrow, EscrowOutcome, EscrowStatus, ExpiryAction, ReleaseCondition
from ..ledger.escrows import EscrowFilter, EscrowReader
from ..wire import escrow_message, payment_message
from . import pagination
from .context import Context
from .validation import MAX_REASON, MAX_TASK_ID, Fields, resource_id

_ESCROW_ID = re.compile(r"[0-9a-f]{22}")
_RESULT_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


def _actor(principal: Principal) -> Actor:
    return Actor(
        addresses=principal.addresses,
        admin=principal.is_admin,
        reads_everything=principal.reads_everything,
        arbiter_only=principal.scope is Scope.ARBITER,
    )


def _escrow_id(fields: Fields, name: str) -> str:
    return resource_id(fields, "name", name, "escrows", _ESCROW_ID)


class EscrowServicer(escrow_pb2_grpc.EscrowServiceServicer):
    """Serves EscrowService."""

    def __init__(self, engine: Engine, reader: EscrowReader, clock: Clock, max_expiry: float) -> None:
        self._engine = engine
        self._reader = reader
        self._clock = clock
        self._max_expiry = max_expiry

    async def CreateEscrow(
        self, request: escrow_pb2.CreateEscrowRequest, context: Context
    ) -> escrow_pb2.CreateEscrowResponse:
        fields = Fields(self._engine.tokens)
        task_id = fields.text("task_id", request.task_id, MAX_TASK_ID, single_line=True)
        if not request.task_id:
            fields.add("task_id", f"is required: 1 to {MAX_TASK_ID} characters")
        payer = fields.address("payer", request.payer)
        payee = fields.address("payee", request.payee)
        if payer and payer == payee:
            fields.add("payee", "must differ from the payer")
        token = fields.token("token", request.token)
        amount = fields.amount("amount", request.amount)
        expire_time_us = self._expire_time(fields, request)
        condition = fields.choice(
            "release_condition",
            request.release_condition,
            ReleaseCondition,
            ReleaseCondition.PAYER_APPROVAL,
            "is not a ReleaseCondition",
        )
        arbiter = fields.optional_address("arbiter", request.arbiter)
        if arbiter is not None and arbiter in (payer, payee):
            fields.add("arbiter", "must be neither the payer nor the payee")
        if condition is ReleaseCondition.ARBITER and not request.arbiter:
            fields.add("arbiter", "is required with RELEASE_CONDITION_ARBITER")
        verifier = fields.optional_address("verifier", request.verifier)
        if condition is ReleaseCondition.VERIFIER_ATTESTATION:
            if not request.verifier:
                fields.add("verifier", "is required with RELEASE_CONDITION_VERIFIER_ATTESTATION")
            elif verifier is not None and verifier == payee:
                fields.add("verifier", "must not be the payee, who would attest its own work")
        elif request.verifier:
            fields.add("verifier", "is only for RELEASE_CONDITION_VERIFIER_ATTESTATION")
        expiry_action = fields.choice(
            "expiry_action", request.expiry_action, ExpiryAction, ExpiryAction.REFUND_PAYER, "is not an ExpiryAction"
        )
        priority = fields.priority("priority", request.priority)
        metadata = fields.metadata("metadata", request.metadata)
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        assert token is not None
        current_principal().require_address(payer, "payer")
        escrow = await self._engine.execute(
            CreateEscrow(
                payer=payer,
                payee=payee,
                token=token,
                amount=amount,
                task_id=task_id,
                expire_time_us=expire_time_us,
                release_condition=condition,
                arbiter=arbiter,
                verifier=verifier,
                expiry_action=expiry_action,
                priority=priority,
                metadata=metadata,
                request_id=request_id,
            )
        )
        assert isinstance(escrow, Escrow)
        return escrow_pb2.CreateEscrowResponse(escrow=escrow_message(escrow))

    def _expire_time(self, fields: Fields, request: escrow_pb2.CreateEscrowRequest) -> int | None:
        """The expiry in microseconds, in the future and within the maximum; None for the default."""
        if not request.HasField("expire_time"):
            return None
        now_us = self._clock.now_us()
        limit_us = now_us + round(self._max_expiry * 1e6)
        expire = request.expire_time
        if not 0 <= expire.nanos < 1_000_000_000:
            fields.add("expire_time", "nanos must be 0 to 999,999,999")
            return 0
        expire_us = expire.seconds * 1_000_000 + expire.nanos // 1000
        if expire_us <= now_us:
            fields.add("expire_time", "must be in the future")
        elif expire_us > limit_us:
            fields.add("expire_time", f"must be at most {self._max_expiry:.0f} seconds from now")
        return expire_us

    async def GetEscrow(self, request: escrow_pb2.GetEscrowRequest, context: Context) -> escrow_pb2.GetEscrowResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        fields.check()
        escrow = await self._reader.get(escrow_id)
        if escrow is None or not _actor(current_principal()).sees(escrow.parties):
            raise escrow_not_found(request.name)
        return escrow_pb2.GetEscrowResponse(escrow=escrow_message(escrow))

    async def ListEscrows(
        self, request: escrow_pb2.ListEscrowsRequest, context: Context
    ) -> escrow_pb2.ListEscrowsResponse:
        fields = Fields(self._engine.tokens)
        payer = fields.optional_address("payer", request.payer)
        payee = fields.optional_address("payee", request.payee)
        task_id = fields.text("task_id", request.task_id, MAX_TASK_ID) or None
        status = fields.choice("status", request.status, EscrowStatus, None, "is not an EscrowStatus")
        fields.page_size(request.page_size)
        before = fields.id_cursor(request, _ESCROW_ID)
        fields.check()
        size = pagination.page_size(request.page_size)
        principal = current_principal()
        where = EscrowFilter(
            payer=payer,
            payee=payee,
            task_id=task_id,
            status=status,
            visible_to=None if principal.reads_everything else principal.addresses,
        )
        found = await self._reader.page(where, limit=size + 1, before=before)
        response = escrow_pb2.ListEscrowsResponse(escrows=[escrow_message(e) for e in found[:size]])
        if len(found) > size:
            response.next_page_token = pagination.encode_token(request, [found[size - 1].escrow_id])
        return response

    async def ReleaseEscrow(
        self, request: escrow_pb2.ReleaseEscrowRequest, context: Context
    ) -> escrow_pb2.ReleaseEscrowResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        amount = fields.amount("amount", request.amount) if request.amount else None
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        outcome = await self._step(commands.ReleaseEscrow(escrow_id, amount, _actor(current_principal()), request_id))
        response = escrow_pb2.ReleaseEscrowResponse(escrow=escrow_message(outcome.escrow))
        if outcome.payment is not None:
            response.payment.CopyFrom(payment_message(outcome.payment))
        return response

    async def RefundEscrow(
        self, request: escrow_pb2.RefundEscrowRequest, context: Context
    ) -> escrow_pb2.RefundEscrowResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        reason = fields.text("reason", request.reason, MAX_REASON)
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        outcome = await self._step(commands.RefundEscrow(escrow_id, reason, _actor(current_principal()), request_id))
        return escrow_pb2.RefundEscrowResponse(escrow=escrow_message(outcome.escrow))

    async def DisputeEscrow(
        self, request: escrow_pb2.DisputeEscrowRequest, context: Context
    ) -> escrow_pb2.DisputeEscrowResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        reason = fields.text("reason", request.reason, MAX_REASON)
        if not request.reason.strip():
            fields.add("reason", f"is required: 1 to {MAX_REASON} characters")
        raised_by = fields.address("raised_by", request.raised_by) if request.raised_by else ""
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        outcome = await self._step(
            commands.DisputeEscrow(escrow_id, reason, raised_by, _actor(current_principal()), request_id)
        )
        return escrow_pb2.DisputeEscrowResponse(escrow=escrow_message(outcome.escrow))

    async def ResolveDispute(
        self, request: escrow_pb2.ResolveDisputeRequest, context: Context
    ) -> escrow_pb2.ResolveDisputeResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        payee_amount = fields.amount("payee_amount", request.payee_amount, allow_zero=True)
        payer_amount = fields.amount("payer_amount", request.payer_amount, allow_zero=True)
        note = fields.text("resolution_note", request.resolution_note, MAX_REASON)
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        outcome = await self._step(
            commands.ResolveDispute(
                escrow_id, payee_amount, payer_amount, note, _actor(current_principal()), request_id
            )
        )
        response = escrow_pb2.ResolveDisputeResponse(escrow=escrow_message(outcome.escrow))
        if outcome.payment is not None:
            response.payment.CopyFrom(payment_message(outcome.payment))
        return response

    async def SubmitTaskResult(
        self, request: escrow_pb2.SubmitTaskResultRequest, context: Context
    ) -> escrow_pb2.SubmitTaskResultResponse:
        fields = Fields(self._engine.tokens)
        escrow_id = _escrow_id(fields, request.name)
        if not _RESULT_HASH.fullmatch(request.result_hash):
            fields.add("result_hash", "is required: 0x and the 64 hex digits of a 32-byte hash")
        if not _SIGNATURE.fullmatch(request.signature):
            fields.add("signature", "is required: 0x and the 130 hex digits of a 65-byte EIP-191 signature")
        request_id = fields.request_id("request_id", request.request_id)
        fields.check()
        result_hash = request.result_hash.lower()
        # A signature that recovers to no address is no one's: the verifier check refuses it like a
        # stranger's, with ESCROW_INVALID_ATTESTATION.
        signer = recover_signer(f"escrows/{escrow_id}", result_hash, bytes.fromhex(request.signature[2:])) or ""
        outcome = await self._step(
            commands.AttestTaskResult(escrow_id, result_hash, signer, _actor(current_principal()), request_id)
        )
        response = escrow_pb2.SubmitTaskResultResponse(escrow=escrow_message(outcome.escrow))
        if outcome.payment is not None:
            response.payment.CopyFrom(payment_message(outcome.payment))
        return response

    async def _step(self, command: EscrowStep) -> EscrowOutcome:
        outcome = await self._engine.execute(command)
        assert isinstance(outcome, EscrowOutcome)
        return outcome
