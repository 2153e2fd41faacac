"""Turning an :class:`~agentflow_server.errors.ApiError` into a rich ``google.rpc.Status``."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agentflow_payments import ERROR_DOMAIN

from ..errors import ApiError


def to_grpc_status(error: ApiError) -> grpc.Status:
    """The status to abort an RPC with: ErrorInfo always, BadRequest and RetryInfo where they apply."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.metadata))
    details.append(info)
    if error.field_violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.field_violations
                ]
            )
        )
        details.append(bad)
    if error.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_delay)
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    code: int = error.reason.code.value[0]
    status = status_pb2.Status(code=code, message=error.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result
