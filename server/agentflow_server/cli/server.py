"""``agentflow serve`` runs the service, ``agentflow dev`` runs it on the embedded defaults with a dev key, and
``agentflow healthcheck`` asks a configured server whether it is SERVING (for container health checks)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any

import grpc
from pydantic import ValidationError

from ..config import CONFIG_FILE_VARIABLE, Settings, load_settings
from .errors import ExitCode

if TYPE_CHECKING:
    from ..app import Service

EXIT_UNHEALTHY = ExitCode.REFUSED
EXIT_CONFIG = ExitCode.USAGE
EXIT_STARTUP = ExitCode.STARTUP


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: value for name in ("listen", "data_dir") if (value := getattr(args, name, None)) is not None}


def _dev_banner(admin_key: str, generated: bool, fresh_ledger: bool) -> Any:
    async def banner(service: Service) -> None:
        from ..devchain import DEV_DEPOSITS, fund_dev_agents

        agents = (
            await fund_dev_agents(service) if service.chain is not None and service.chain.connection.embedded else []
        )
        host = service.settings.listen.rpartition(":")[0]
        target = f"{host}:{service.endpoints.grpc_port}"
        ledger = service.settings.ledger_url + (
            " (new each run: the embedded chain lives in memory)" if fresh_ledger else ""
        )
        lines = [
            "",
            "AgentFlow Payments dev server",
            f"  gRPC:      {target} (plaintext, reflection on)",
            f"  ledger:    {ledger}",
        ]
        if service.chain is not None:
            identity = service.chain.connection.identity
            kind = "embedded EVM" if service.chain.connection.embedded else service.settings.chain_rpc_url
            lines.append(f"  chain:     {identity.chain_id} ({kind}), settlement contract {identity.contract}")
        if service.endpoints.metrics_port is not None:
            lines.append(f"  metrics:   http://{host}:{service.endpoints.metrics_port}/metrics")
        note = " (generated for this run)" if generated else " (from AGENTFLOW_ADMIN_API_KEY)"
        lines += [f"  admin key: {admin_key}{note}", ""]
        if agents:
            deposits = ", ".join(f"{symbol}" for symbol in DEV_DEPOSITS)
            lines.append(f"Dev agents, each with deposits of {deposits} (dev keys: never use them elsewhere):")
            for agent in agents:
                lines += [
                    f"  {agent.name:<6} {agent.address}",
                    f"         private key {agent.private_key}",
                    f"         payer key   {agent.api_key}",
                ]
            lines.append("")
        lines += [
            "Try:",
            f"  grpcurl -plaintext {target} list",
            f"  grpcurl -plaintext -H 'authorization: Bearer {admin_key}' \\",
            f"      -d '{{}}' {target} agentflow.payments.v1.AdminService/ListApiKeys",
        ]
        if len(agents) >= 2:
            payer, payee = agents[0], agents[1]
            lines += [
                f"  grpcurl -plaintext -H 'authorization: Bearer {payer.api_key}' \\",
                f'      -d \'{{"payer": "{payer.address}", "payee": "{payee.address}", '
                '"token": "USDC", "amount": "1500000"}\' \\',
                f"      {target} agentflow.payments.v1.PaymentService/SubmitPayment",
                "  (then GetPayment with its name: QUEUED, and COMPLETED about a second later)",
                "",
                "Or with the agentflow command: paste these into another shell (the README's walk-through uses",
                "them), then agentflow --help:",
                f"  export AGENTFLOW_TARGET={target} ADMIN_KEY={admin_key}",
                *(
                    f"  export {agent.name.upper()}={agent.address} {agent.name.upper()}_KEY={agent.api_key}"
                    for agent in agents
                ),
                f"  export AGENTFLOW_API_KEY=${payer.name.upper()}_KEY",
                f"  agentflow balance ${payer.name.upper()}",
                f"  agentflow pay ${payer.name.upper()} ${payee.name.upper()} 1.5 USDC --decimal --wait",
            ]
        lines += ["", "Ctrl-C stops it.", ""]
        print("\n".join(lines), flush=True)

    return banner


async def _check_health(target: str, tls_root: bytes | None, deadline: float) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_root is not None:
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=tls_root))
    else:
        channel = grpc.aio.insecure_channel(target)
    async with channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=deadline)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _healthcheck(settings: Settings, timeout: float) -> int:
    """Exit 0 when the server this configuration describes answers SERVING (for container health checks)."""
    host, _, port = settings.listen.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    tls_root = settings.tls_cert_file.read_bytes() if settings.tls_cert_file is not None else None
    try:
        status = asyncio.run(_check_health(f"{host}:{port}", tls_root, timeout))
    except grpc.aio.AioRpcError as error:
        print(f"agentflow: unhealthy: {error.code().name}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(status)
    return 0 if status == "SERVING" else EXIT_UNHEALTHY


def register(commands: Any) -> None:
    """Add ``serve``, ``dev`` and ``healthcheck`` to the ``agentflow`` parser."""
    for name, help_text in (
        ("serve", "run the server, configured by AGENTFLOW_* variables and an optional TOML file"),
        ("dev", "run the server on the embedded defaults and print a dev admin key"),
    ):
        command = commands.add_parser(name, help=help_text, description=help_text)
        command.add_argument("--config", help=f"TOML configuration file (also {CONFIG_FILE_VARIABLE})")
        command.add_argument("--listen", help="host:port to serve gRPC on (AGENTFLOW_LISTEN)")
        command.add_argument("--data-dir", dest="data_dir", help="ledger directory (AGENTFLOW_DATA_DIR)")
        command.set_defaults(run=run)
    check = commands.add_parser(
        "healthcheck",
        help="exit 0 if the configured server answers SERVING",
        description="Ask the server this configuration describes for its health: exit 0 if it is SERVING, 1 if not.",
    )
    check.add_argument("--config", help=f"TOML configuration file (also {CONFIG_FILE_VARIABLE})")
    check.add_argument("--listen", help="host:port of the server (AGENTFLOW_LISTEN)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``serve``, ``dev`` or ``healthcheck``."""
    if args.config:
        os.environ[CONFIG_FILE_VARIABLE] = args.config

    overrides = _overrides(args)
    on_started = None
    dev_dir: str | None = None
    if args.command == "dev":
        from ..auth.keys import KEY_PREFIX

        generated = not os.environ.get("AGENTFLOW_ADMIN_API_KEY")
        admin_key = os.environ.get("AGENTFLOW_ADMIN_API_KEY") or KEY_PREFIX + "dev_" + secrets.token_urlsafe(24)
        overrides.setdefault("admin_api_key", admin_key)
        overrides.setdefault("log_format", os.environ.get("AGENTFLOW_LOG_FORMAT", "text"))
        # A developer's webhook receiver runs on this machine: dev lets webhooks reach private addresses
        # (serve refuses them unless AGENTFLOW_WEBHOOK_ALLOW_PRIVATE says otherwise).
        if "AGENTFLOW_WEBHOOK_ALLOW_PRIVATE" not in os.environ:
            overrides["webhook_allow_private"] = True
        # The embedded chain lives in memory, so its ledger cannot outlive it: a new one each run, unless a
        # data directory is named explicitly.
        fresh_ledger = (
            "data_dir" not in overrides
            and not os.environ.get("AGENTFLOW_DATA_DIR")
            and not os.environ.get("AGENTFLOW_CHAIN_RPC_URL")
        )
        if fresh_ledger:
            dev_dir = tempfile.mkdtemp(prefix="agentflow-dev-")
            overrides["data_dir"] = dev_dir
        on_started = _dev_banner(admin_key, generated, fresh_ledger)
    try:
        settings = load_settings(**overrides)
    except (ValidationError, FileNotFoundError, ValueError) as error:
        print(f"agentflow: invalid configuration:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "healthcheck":
        return _healthcheck(settings, args.timeout)

    from ..app import StartupError, serve
    from ..event_loop import run
    from ..logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        run(serve(settings, on_started), settings.event_loop)
    except StartupError as error:
        print(f"agentflow: {error}", file=sys.stderr)
        return EXIT_STARTUP
    finally:
        if dev_dir is not None:
            shutil.rmtree(dev_dir, ignore_errors=True)
    return 0
