"""The authenticated caller of the current RPC, and what its key allows."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass

from agentflow_payments import Reason

from ..errors import ApiError


class Scope(enum.StrEnum):
    """What an API key may do (``ApiKeyScope`` in the API)."""

    ADMIN = "admin"
    PAYER = "payer"
    ARBITER = "arbiter"
    READ_ONLY = "read_only"


@dataclass(frozen=True)
class Principal:
    """An authenticated API key: its id, scope, bound addresses and rate limit."""

    key_id: str
    scope: Scope
    addresses: frozenset[str]
    requests_per_minute: int
    burst: int
    expire_time_us: int | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the key may act for every address."""
        return self.scope is Scope.ADMIN

    @property
    def reads_everything(self) -> bool:
        """Whether the key may read what concerns every address (admin, or read-only bound to none)."""
        return self.is_admin or (self.scope is Scope.READ_ONLY and not self.addresses)

    def may_act_for(self, address: str) -> bool:
        """Whether the key may move money from (or act as) ``address``, given in EIP-55 form."""
        return self.is_admin or address in self.addresses

    def require_address(self, address: str, field: str) -> None:
        """Refuse with PERMISSION_DENIED unless the key may act for ``address``."""
        if not self.may_act_for(address):
            raise ApiError(
                Reason.ADDRESS_NOT_ALLOWED,
                f"this API key is not bound to {address} ({field})",
                metadata={"field": field, "address": address},
            )


_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("agentflow_principal")


def current_principal() -> Principal:
    """The principal of the RPC being served; set by the auth interceptor before the servicer runs."""
    return _current.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    """Make ``principal`` the current one; returns the token to reset it with."""
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    """Undo :func:`set_principal`."""
    _current.reset(token)
