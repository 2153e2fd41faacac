"""The ``agentflow`` command as a newcomer and an operator run it: dev banner, grpcurl, SIGTERM, bad config."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentflow_payments import AsyncClient

BIN = Path(sys.executable).parent
AGENTFLOW = str(BIN / "agentflow")
GRPCURL = str(BIN / "grpcurl")
SERVICES = [
    "agentflow.payments.v1.AccountService",
    "agentflow.payments.v1.AdminService",
    "agentflow.payments.v1.EscrowService",
    "agentflow.payments.v1.EventService",
    "agentflow.payments.v1.PaymentService",
    "agentflow.payments.v1.WebhookService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update(AGENTFLOW_DATA_DIR=str(tmp_path / "data"), AGENTFLOW_METRICS_LISTEN="", **extra)
    return env


async def _run(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, limit: float = 30
) -> tuple[int, str, str]:
    """Run a command to its end (killed after ``limit`` seconds, so a hung server never outlives the test)."""
    process = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), limit)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class DevServer:
    def __init__(self, process: asyncio.subprocess.Process, target: str, admin_key: str, banner: str) -> None:
        self.process = process
        self.target = target
        self.admin_key = admin_key
        self.banner = banner


@pytest.fixture
async def dev_server(tmp_path: Path) -> AsyncIterator[DevServer]:
    """``agentflow dev`` in a subprocess on a free port, as ./scripts/dev runs it."""
    process = await asyncio.create_subprocess_exec(
        AGENTFLOW,
        "dev",
        "--listen",
        "127.0.0.1:0",
        env=_env(tmp_path, AGENTFLOW_SHUTDOWN_GRACE="1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    banner = ""
    while "Ctrl-C stops it." not in banner:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line, f"agentflow dev exited early: {banner}"
        banner += line.decode()
    target = re.search(r"gRPC:\s+(\S+)", banner)
    key = re.search(r"admin key:\s+(\S+)", banner)
    assert target is not None
    assert key is not None
    yield DevServer(process, target.group(1), key.group(1), banner)
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_grpcurl_lists_the_services_of_the_dev_server_and_checks_health(dev_server: DevServer) -> None:
    code, out, err = await _run(GRPCURL, "-plaintext", dev_server.target, "list")
    assert code == 0, err
    assert out.split() == SERVICES

    code, out, err = await _run(GRPCURL, "-plaintext", dev_server.target, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_grpcurl_with_the_printed_dev_key_reaches_admin(dev_server: DevServer) -> None:
    assert dev_server.admin_key.startswith("afk_dev_")
    code, out, err = await _run(
        GRPCURL,
        "-plaintext",
        "-H",
        f"authorization: Bearer {dev_server.admin_key}",
        "-d",
        "{}",
        dev_server.target,
        "agentflow.payments.v1.AdminService/ListApiKeys",
    )
    assert code == 0, err
    # The bootstrap admin key, and a payer key for each dev agent.
    scopes = sorted(key["scope"] for key in json.loads(out)["api_keys"])
    assert scopes == ["API_KEY_SCOPE_ADMIN"] + ["API_KEY_SCOPE_PAYER"] * 3

    code, out, err = await _run(
        GRPCURL, "-plaintext", "-d", "{}", dev_server.target, "agentflow.payments.v1.AdminService/ListApiKeys"
    )
    assert code != 0
    assert "Unauthenticated" in err
    assert '"reason":"API_KEY_MISSING"' in err.replace(" ", "")


async def test_a_dev_agent_pays_another_with_its_printed_key_and_the_payment_completes(
    dev_server: DevServer,
) -> None:
    agents = re.findall(r"^  (\w+)\s+(0x[0-9a-fA-F]{40})\n.*\n\s+payer key\s+(\S+)$", dev_server.banner, re.MULTILINE)
    assert [name for name, _, _ in agents] == ["alice", "bob", "carol"]
    (_, alice, alice_key), (_, bob, _), _ = agents
    request = json.dumps({"payer": alice, "payee": bob, "token": "USDC", "amount": "1500000"})
    auth = f"authorization: Bearer {alice_key}"
    code, out, err = await _run(
        GRPCURL, "-plaintext", "-H", auth, "-d", request, dev_server.target,
        "agentflow.payments.v1.PaymentService/SubmitPayment",
    )  # fmt: skip
    assert code == 0, err
    payment = json.loads(out)["payment"]
    assert payment["status"] == "PAYMENT_STATUS_QUEUED"
    deadline = time.monotonic() + 20
    while payment["status"] != "PAYMENT_STATUS_COMPLETED":
        assert time.monotonic() < deadline, payment
        await asyncio.sleep(0.2)
        code, out, err = await _run(
            GRPCURL, "-plaintext", "-H", auth, "-d", json.dumps({"name": payment["name"]}), dev_server.target,
            "agentflow.payments.v1.PaymentService/GetPayment",
        )  # fmt: skip
        assert code == 0, err
        payment = json.loads(out)["payment"]
    assert payment["settlement"]["transaction_hash"].startswith("0x")
    # Alice's key may not pay from Bob's address.
    refused = json.dumps({"payer": bob, "payee": alice, "token": "USDC", "amount": "1"})
    code, out, err = await _run(
        GRPCURL, "-plaintext", "-H", auth, "-d", refused, dev_server.target,
        "agentflow.payments.v1.PaymentService/SubmitPayment",
    )  # fmt: skip
    assert code != 0
    assert "PermissionDenied" in err


async def test_sigterm_reports_not_serving_then_exits_cleanly(dev_server: DevServer) -> None:
    async with AsyncClient(dev_server.target) as client:
        health = health_pb2_grpc.HealthStub(client.channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="agentflow.payments.v1.PaymentService"))
        statuses = aiter(watch)
        first = await asyncio.wait_for(anext(statuses), 10)
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        dev_server.process.send_signal(signal.SIGTERM)
        # Load balancers watching health stop sending traffic before the server stops.
        second = await asyncio.wait_for(anext(statuses), 10)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING

    code = await asyncio.wait_for(dev_server.process.wait(), 15)
    assert code == 0
    assert dev_server.process.stderr is not None
    log = (await dev_server.process.stderr.read()).decode()
    assert "shutting down" in log
    assert "stopped" in log


async def test_serve_logs_json_and_keeps_keys_in_the_data_dir(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        AGENTFLOW,
        "serve",
        env=_env(tmp_path, AGENTFLOW_LISTEN="127.0.0.1:0", AGENTFLOW_ADMIN_API_KEY="afk_operator_key_1234567890"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        started: dict[str, object] = {}
        while started.get("event") != "server.started":
            line = await asyncio.wait_for(process.stderr.readline(), 30)
            assert line, "agentflow serve exited early"
            started = json.loads(line)
        assert isinstance(started["grpc_port"], int)
        assert started["event_loop"] == "uvloop"  # the default: AGENTFLOW_EVENT_LOOP
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert (tmp_path / "data" / "agentflow.db").is_file()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENTFLOW_LISTEN": "nowhere"}, "listen must be host:port"),
        ({"AGENTFLOW_RATE_LIMIT_PER_MINUTE": "0"}, "rate_limit_per_minute"),
        ({"AGENTFLOW_CONFIG": "/nonexistent/agentflow.toml"}, "no such file"),
        ({"AGENTFLOW_TLS_CERT_FILE": "/tmp/cert.pem"}, "go together"),
    ],
)
async def test_bad_configuration_exits_2_with_the_setting_named(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    code, _, err = await _run(AGENTFLOW, "serve", env=_env(tmp_path, **{"AGENTFLOW_LISTEN": "127.0.0.1:0", **env}))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


async def test_healthcheck_command_tells_serving_from_down(dev_server: DevServer, tmp_path: Path) -> None:
    code, out, _ = await _run(AGENTFLOW, "healthcheck", "--listen", dev_server.target, env=_env(tmp_path))
    assert (code, out.strip()) == (0, "SERVING")
    dev_server.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(dev_server.process.wait(), 15) == 0
    code, _, err = await _run(
        AGENTFLOW, "healthcheck", "--listen", dev_server.target, "--timeout", "1", env=_env(tmp_path)
    )
    assert code == 1
    assert "unhealthy" in err
