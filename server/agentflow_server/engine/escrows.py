"""The rules of escrow: who may take which step on an escrow, and in which state.

The engine applies the steps to the ledger; these functions only decide, raising the refusal a caller
gets. Every check here comes before any change, so a refused step changes nothing.

Who may do what:

- release: the payer (or an admin key); under RELEASE_CONDITION_ARBITER only the arbiter. A verifier's
  attestation releases too (SubmitTaskResult), whoever submits it.
- refund: the payee, who gives the money back (or an admin key); under RELEASE_CONDITION_ARBITER only
  the arbiter. A payer gets its money back at expiry, by the payee's refund, or through a dispute: never
  by taking it back alone, or the payee could not rely on the escrow.
- dispute: the payer or the payee, while the escrow is active and before its expiry.
- resolve: the arbiter; an admin key when the escrow names none.
"""

from __future__ import annotations

from agentflow_payments import FieldViolation, Reason

from ..errors import ApiError
from .commands import Actor
from .model import Escrow, EscrowStatus, ReleaseCondition


def escrow_not_found(name: str) -> ApiError:
    """NOT_FOUND for an escrow that does not exist, or that the caller may not see (so ids are not probed)."""
    return ApiError(Reason.ESCROW_NOT_FOUND, f"no escrow {name}", metadata={"name": name})


def not_active(escrow: Escrow, why: str) -> ApiError:
    """FAILED_PRECONDITION: the escrow is past the state the step needs."""
    return ApiError(
        Reason.ESCROW_NOT_ACTIVE,
        f"{escrow.name} is {escrow.status.name.lower()}{' and expired' if escrow.expired else ''}; {why}",
        metadata={"name": escrow.name, "status": f"ESCROW_STATUS_{escrow.status.name}"},
    )


def _denied(escrow: Escrow, who: str, address: str) -> ApiError:
    return ApiError(
        Reason.ADDRESS_NOT_ALLOWED,
        f"only {who} may do this to {escrow.name}; this API key is not bound to it",
        metadata={"field": "name", "address": address},
    )


def require_active(escrow: Escrow, now_us: int, step: str) -> None:
    """Refuse a step on an escrow that is not active, or whose deadline has passed (its expiry action is
    then what happens to it, within moments)."""
    if escrow.status is not EscrowStatus.ACTIVE:
        raise not_active(escrow, f"it cannot be {step}")
    if now_us >= escrow.expire_time_us:
        raise not_active(escrow, f"it reached its expiry, so it cannot be {step}; its expiry action applies")


def check_release(escrow: Escrow, actor: Actor) -> None:
    """Whether ``actor`` may release the escrow by hand."""
    if escrow.release_condition is ReleaseCondition.ARBITER:
        assert escrow.arbiter is not None
        if not actor.is_arbiter(escrow.arbiter):
            raise _denied(escrow, f"its arbiter {escrow.arbiter}", escrow.arbiter)
    elif not (actor.admin or actor.is_party(escrow.payer)):
        raise _denied(escrow, f"its payer {escrow.payer} (or an admin key)", escrow.payer)


def check_refund(escrow: Escrow, actor: Actor) -> None:
    """Whether ``actor`` may refund the escrow to its payer."""
    if escrow.release_condition is ReleaseCondition.ARBITER:
        assert escrow.arbiter is not None
        if not actor.is_arbiter(escrow.arbiter):
            raise _denied(escrow, f"its arbiter {escrow.arbiter}", escrow.arbiter)
    elif not (actor.admin or actor.is_party(escrow.payee)):
        raise _denied(escrow, f"its payee {escrow.payee} (or an admin key)", escrow.payee)


def dispute_party(escrow: Escrow, actor: Actor, raised_by: str) -> str:
    """The party raising a dispute: ``raised_by`` when given, else the one party the key is bound to."""
    parties = (escrow.payer, escrow.payee)
    if raised_by:
        if raised_by not in parties:
            raise ApiError(
                Reason.INVALID_FIELD,
                f"raised_by: must be the payer {escrow.payer} or the payee {escrow.payee}",
                field_violations=[FieldViolation("raised_by", "must be the escrow's payer or payee")],
            )
        if not (actor.admin or actor.is_party(raised_by)):
            raise _denied(escrow, raised_by, raised_by)
        return raised_by
    bound = [party for party in parties if actor.is_party(party)]
    if len(bound) == 1:
        return bound[0]
    if not bound and not actor.admin:
        raise _denied(escrow, f"its payer {escrow.payer} or its payee {escrow.payee}", escrow.payer)
    raise ApiError(
        Reason.INVALID_FIELD,
        "raised_by: is required when the key may act for both the payer and the payee",
        field_violations=[FieldViolation("raised_by", "is required: the payer or the payee")],
    )


def check_resolve(escrow: Escrow, actor: Actor) -> None:
    """Whether ``actor`` may resolve the escrow's dispute."""
    if escrow.arbiter is not None:
        if not actor.is_arbiter(escrow.arbiter):
            raise _denied(escrow, f"its arbiter {escrow.arbiter}", escrow.arbiter)
    elif not actor.admin:
        raise _denied(escrow, "an admin key (it names no arbiter)", escrow.payer)


def check_attestation(escrow: Escrow, signer: str) -> None:
    """Whether ``signer`` (recovered from the signature) is the verifier whose attestation releases."""
    if escrow.release_condition is not ReleaseCondition.VERIFIER_ATTESTATION or escrow.verifier is None:
        raise ApiError(
            Reason.ESCROW_INVALID_ATTESTATION,
            f"{escrow.name} is not released by a verifier's attestation",
            metadata={"name": escrow.name},
        )
    if signer != escrow.verifier:
        raise ApiError(
            Reason.ESCROW_INVALID_ATTESTATION,
            f"the signature is not by the verifier of {escrow.name}",
            metadata={"name": escrow.name, "verifier": escrow.verifier},
        )
