"""The answer of RPCs that are in the v1 contract but not served yet."""

from __future__ import annotations

from agentflow_payments import Reason

from ..errors import ApiError


def not_served(method: str, arrives_with: str) -> ApiError:
    """UNIMPLEMENTED with reason NOT_IMPLEMENTED, naming the method and the feature it waits for."""
    return ApiError(
        Reason.NOT_IMPLEMENTED,
        f"{method} is part of the v1 API but this server does not serve it yet (it arrives with {arrives_with})",
        metadata={"method": method},
    )
