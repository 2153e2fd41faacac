"""Authentication, scopes and API keys, against a real server through the SDK."""

from __future__ import annotations

import grpc
import pytest

from agentflow_payments import (
    AsyncClient,
    InsufficientBalance,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from agentflow_payments.v1 import accounts_pb2, admin_pb2, payments_pb2

from .conftest import ADMIN_KEY, ALICE, BOB, CreateKey, RunningServer, StartServer

WRITE = payments_pb2.SubmitPaymentRequest(payer=ALICE, payee=BOB, token="USDC", amount="1000000")


async def test_call_without_a_key_is_unauthenticated(server: RunningServer) -> None:
    async with server.client(api_key=None) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.reason is Reason.API_KEY_MISSING


async def test_unknown_key_is_unauthenticated(server: RunningServer) -> None:
    async with server.client(api_key="afk_not_a_key_this_server_issued") as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.payments.GetPayment(payments_pb2.GetPaymentRequest(name="payments/x"))
    assert caught.value.reason is Reason.API_KEY_INVALID


async def test_non_bearer_authorization_is_unauthenticated(server: RunningServer) -> None:
    async with server.client(api_key=None) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.admin.ListApiKeys(
                admin_pb2.ListApiKeysRequest(), metadata=(("authorization", f"Basic {ADMIN_KEY}"),)
            )
    assert caught.value.reason is Reason.API_KEY_MISSING


async def test_read_only_key_calling_a_write_is_permission_denied(server: RunningServer, create_key: CreateKey) -> None:
    reader = await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY)
    async with server.client(reader.secret) as client:
        with pytest.raises(PermissionDenied) as caught:
            await client.payments.SubmitPayment(WRITE)
        assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.reason is Reason.SCOPE_DENIED
        assert caught.value.metadata == {"scope": "read_only", "required_scopes": "admin,payer"}
        with pytest.raises(PermissionDenied) as admin_call:
            await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
        assert admin_call.value.reason is Reason.SCOPE_DENIED
        # A read passes.
        await client.accounts.ListTokens(accounts_pb2.ListTokensRequest())


async def test_payer_key_works_until_revoked(server: RunningServer, admin: AsyncClient, create_key: CreateKey) -> None:
    created = await create_key(admin_pb2.API_KEY_SCOPE_PAYER, addresses=(ALICE.lower(),))
    assert created.secret.startswith("afk_")
    assert created.api_key.key_prefix == created.secret[:12]
    assert list(created.api_key.addresses) == [ALICE]  # stored checksummed
    async with server.client(created.secret) as payer:
        # Authenticated and authorised: the payment reaches the ledger (which finds no funds yet).
        with pytest.raises(InsufficientBalance):
            await payer.payments.SubmitPayment(WRITE)

        revoked = await admin.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(name=created.api_key.name))
        assert revoked.api_key.HasField("revoke_time")

        with pytest.raises(Unauthenticated) as refused:
            await payer.payments.SubmitPayment(WRITE)
        assert refused.value.reason is Reason.API_KEY_REVOKED


async def test_keys_survive_a_restart(start_server: StartServer) -> None:
    first = await start_server()
    async with first.client() as admin:
        kept = await admin.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_ADMIN, display_name="kept")
        )
        gone = await admin.admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_ADMIN, display_name="gone")
        )
        await admin.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(name=gone.api_key.name))
    await first.service.stop(grace=0)

    # Same ledger, no bootstrap key this time: the stored keys alone decide.
    second = await start_server(admin_api_key=None)
    async with second.client(kept.secret) as client:
        listed = await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(show_revoked=True))
        names = {key.display_name: key for key in listed.api_keys}
        assert names["kept"].name == kept.api_key.name
        assert names["gone"].HasField("revoke_time")
    async with second.client(gone.secret) as client:
        with pytest.raises(Unauthenticated) as revoked:
            await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
        assert revoked.value.reason is Reason.API_KEY_REVOKED
    async with second.client(ADMIN_KEY) as client:
        with pytest.raises(Unauthenticated) as retired:
            await client.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
        assert retired.value.reason is Reason.API_KEY_REVOKED


async def test_list_api_keys_pages_and_never_shows_secrets(admin: AsyncClient, create_key: CreateKey) -> None:
    created = [await create_key(admin_pb2.API_KEY_SCOPE_READ_ONLY, display_name=f"k{i}") for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(page_size=2, page_token=token))
        assert len(page.api_keys) <= 2
        seen += [key.name for key in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    # Newest first, each once, and the bootstrap key as well.
    assert seen[:5] == [c.api_key.name for c in reversed(created)]
    assert len(seen) == len(set(seen)) == 6
    wire = page.SerializeToString()
    for c in created:
        assert c.secret.encode() not in wire


async def test_list_api_keys_refuses_a_forged_page_token(admin: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(page_token="bm90LWEtdG9rZW4"))
    assert caught.value.field_violations[0].field == "page_token"


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (admin_pb2.CreateApiKeyRequest(), {"scope"}),
        (admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_PAYER), {"addresses"}),
        (
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=["0x1234"]),
            {"addresses[0]"},
        ),
        (
            # Mixed case with a wrong checksum (the last letter's case flipped).
            admin_pb2.CreateApiKeyRequest(
                scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=[ALICE, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"]
            ),
            {"addresses[1]"},
        ),
        (
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_PAYER, addresses=["0x" + "0" * 40]),
            {"addresses[0]"},
        ),
        (admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_ADMIN, addresses=[ALICE]), {"addresses"}),
        (
            admin_pb2.CreateApiKeyRequest(
                scope=admin_pb2.API_KEY_SCOPE_READ_ONLY, rate_limit=admin_pb2.RateLimit(requests_per_minute=0, burst=0)
            ),
            {"rate_limit.requests_per_minute", "rate_limit.burst"},
        ),
        (
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_READ_ONLY, display_name="x" * 129),
            {"display_name"},
        ),
        (
            admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_READ_ONLY, expire_time={"seconds": 1}),
            {"expire_time"},
        ),
    ],
)
async def test_create_api_key_names_each_invalid_field_and_changes_nothing(
    admin: AsyncClient, request_: admin_pb2.CreateApiKeyRequest, fields: set[str]
) -> None:
    before = await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(show_revoked=True))
    with pytest.raises(InvalidArgument) as caught:
        await admin.admin.CreateApiKey(request_)
    assert caught.value.reason is Reason.INVALID_FIELD
    assert {v.field for v in caught.value.field_violations} == fields
    after = await admin.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(show_revoked=True))
    assert after == before


async def test_revoking_an_unknown_key_is_not_found(admin: AsyncClient) -> None:
    with pytest.raises(NotFound) as caught:
        await admin.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(name="apiKeys/nope"))
    assert caught.value.reason is Reason.API_KEY_NOT_FOUND
    with pytest.raises(InvalidArgument) as bad_name:
        await admin.admin.RevokeApiKey(admin_pb2.RevokeApiKeyRequest(name="nope"))
    assert bad_name.value.field_violations[0].field == "name"


async def test_expired_key_is_unauthenticated(server: RunningServer, admin: AsyncClient) -> None:
    import time

    from google.protobuf.timestamp_pb2 import Timestamp

    soon = Timestamp()
    soon.FromNanoseconds(time.time_ns() + 300_000_000)
    created = await admin.admin.CreateApiKey(
        admin_pb2.CreateApiKeyRequest(scope=admin_pb2.API_KEY_SCOPE_READ_ONLY, expire_time=soon)
    )
    async with server.client(created.secret) as client:
        await client.accounts.ListTokens(accounts_pb2.ListTokensRequest())
        await _sleep_until(soon.ToNanoseconds())
        with pytest.raises(Unauthenticated) as caught:
            await client.accounts.ListTokens(accounts_pb2.ListTokensRequest())
    assert caught.value.reason is Reason.API_KEY_EXPIRED


async def _sleep_until(deadline_ns: int) -> None:
    import asyncio
    import time

    await asyncio.sleep(max(0.0, (deadline_ns - time.time_ns()) / 1e9) + 0.01)
