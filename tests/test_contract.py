"""The contract and its generated code: fresh stubs, buf lint, a policy per RPC, the pinned SDK API."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import agentflow_payments
from agentflow_payments import Reason
from agentflow_payments.v1 import accounts_pb2, admin_pb2, escrow_pb2, events_pb2, payments_pb2, webhooks_pb2
from agentflow_server.api.policy import POLICIES

ROOT = Path(__file__).resolve().parent.parent
SERVICE_MODULES = (payments_pb2, escrow_pb2, webhooks_pb2, events_pb2, accounts_pb2, admin_pb2)


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes() -> None:
    result = subprocess.run(
        [str(ROOT / "node_modules/.bin/buf"), "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_has_exactly_one_policy() -> None:
    methods = {
        f"/{service.full_name}/{method.name}"
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert len(methods) == 8 + 8 + 9 + 2 + 5 + 4
    assert set(POLICIES) == methods


def test_every_enum_starts_with_unspecified_zero() -> None:
    for module in (*SERVICE_MODULES,):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.full_name


def test_sdk_public_api_is_pinned() -> None:
    assert sorted(agentflow_payments.__all__) == sorted(
        [
            "DEFAULT_TIMEOUT",
            "ERROR_DOMAIN",
            "AddressNotAllowed",
            "AgentflowError",
            "AlreadyExists",
            "AsyncClient",
            "Cancelled",
            "Client",
            "DeadlineExceeded",
            "EscrowNotActive",
            "FailedPrecondition",
            "FieldViolation",
            "IdempotencyConflict",
            "InsufficientBalance",
            "InternalError",
            "InvalidArgument",
            "InvalidAttestation",
            "InvalidToken",
            "NotFound",
            "Page",
            "PaymentNotCancellable",
            "PermissionDenied",
            "QueueFull",
            "RateLimited",
            "Reason",
            "ResourceExhausted",
            "RetryConfig",
            "ScopeDenied",
            "SubscriberTooSlow",
            "Unauthenticated",
            "Unavailable",
            "Unimplemented",
            "WebhookDisabled",
            "WebhookUrlNotAllowed",
            "WebhookVerificationError",
            "attestation_message",
            "from_rpc_error",
            "sign_webhook",
            "v1",
            "verify_webhook",
        ]
    )
    for name in agentflow_payments.__all__:
        assert hasattr(agentflow_payments, name), name


def test_every_rpc_has_one_typed_method_alike_in_both_clients() -> None:
    """AsyncClient has a snake_case method per RPC of the contract, documented, and Client the same one with
    the same parameters: a new RPC without its method fails here."""
    rpcs = {
        re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert len(rpcs) == 36
    for name in sorted(rpcs):
        method = getattr(agentflow_payments.AsyncClient, name)
        blocking = getattr(agentflow_payments.Client, name)
        assert method.__doc__, name
        assert inspect.signature(blocking).parameters == inspect.signature(method).parameters, name
        assert blocking.__doc__ == method.__doc__, name


def test_each_reason_raises_a_subclass_of_its_status_codes_exception() -> None:
    """A reason's own exception (InsufficientBalance...) is also caught as its code's (FailedPrecondition...)."""
    from agentflow_payments._exceptions import _BY_CODE, _BY_REASON

    for reason in Reason:
        by_code = _BY_CODE.get(reason.code, agentflow_payments.InternalError)
        assert issubclass(_BY_REASON.get(reason, by_code), by_code), reason


def test_sdk_installs_with_only_grpcio_protobuf_and_grpcio_status() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "client/pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert names == {"grpcio", "grpcio-status", "protobuf"}


def test_readme_reasons_table_matches_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` \| (.+?) \|$", readme, flags=re.MULTILINE)
    assert [(reason, code, text) for reason, code, text in rows] == [
        (reason.value, reason.code.name, reason.description) for reason in Reason
    ]


def test_readme_configuration_table_matches_the_settings() -> None:
    from agentflow_server.config import Settings

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `AGENTFLOW_([A-Z_]+)` \| `([a-z_]+)` \| (.+?) \| (.+?) \|$", readme, flags=re.MULTILINE)
    assert [(variable.lower(), key, meaning) for variable, key, _, meaning in rows] == [
        (name, name, field.description) for name, field in Settings.model_fields.items()
    ]
