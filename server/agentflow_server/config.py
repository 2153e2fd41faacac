"""Configuration: ``AGENTFLOW_*`` environment variables over an optional TOML file over defaults.

Every setting is an environment variable (``AGENTFLOW_LISTEN``) and a TOML key
(``listen = "0.0.0.0:50051"``) in the file named by ``AGENTFLOW_CONFIG``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_VARIABLE = "AGENTFLOW_CONFIG"


def _host_port(value: str, setting: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{setting} must be host:port, got {value!r}")
    return value


EventLoopKind = Literal["uvloop", "asyncio"]
"""The server's event loop (``event_loop.py``)."""


class Settings(BaseSettings):
    """The server's settings. See the configuration table in the README."""

    model_config = SettingsConfigDict(env_prefix="AGENTFLOW_", extra="forbid", frozen=True)

    listen: str = Field("127.0.0.1:50051", description="host:port the gRPC server binds; port 0 picks a free one")
    data_dir: Path = Field(Path("./agentflow-data"), description="directory of the embedded SQLite ledger")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the ledger; SQLite in data_dir when unset")
    admin_api_key: SecretStr | None = Field(
        None, description="an admin API key to bootstrap with; valid while it is set"
    )
    metrics_listen: str = Field(
        "127.0.0.1:9464", description="host:port of the Prometheus /metrics endpoint; empty to disable"
    )
    rate_limit_per_minute: int = Field(100, ge=1, description="default requests a minute per API key")
    rate_limit_burst: int = Field(20, ge=1, description="default burst (bucket size) per API key")
    max_bulk_size: int = Field(500, ge=1, le=10_000, description="most items in one SubmitPayments call")
    max_queue_size: int = Field(
        10_000, ge=1, description="most payments waiting for settlement per token; beyond it QUEUE_FULL"
    )
    group_max_size: int = Field(1000, ge=1, le=100_000, description="most commands the engine commits at once")
    group_max_wait_ms: float = Field(
        0.0, ge=0, le=1000, description="how long a commit group waits for more commands after its first"
    )
    group_pipeline_depth: int = Field(
        2, ge=1, le=8, description="engine groups committing at once; above 1 the next is applied meanwhile"
    )
    group_pipeline_min: int = Field(
        100,
        ge=1,
        le=100_000,
        description="commands waiting for a group to start while another commits; fewer wait for it",
    )
    sqlite_wal_limit_mb: int = Field(
        1024,
        ge=1,
        le=1 << 20,
        description="SQLite: past this size the ledger's WAL is checkpointed and written from its start again",
    )
    ledger_writer: Literal["process", "thread"] = Field(
        "process",
        description="where the engine commits: a process of its own (beside the gRPC front end) or a thread",
    )
    event_loop: EventLoopKind = Field(
        "uvloop", description="the server's event loop: uvloop (its machinery in C) or asyncio's own"
    )
    fee_rate_bps: int = Field(30, ge=0, le=10_000, description="the base fee rate in basis points (30 is 0.3%)")
    min_fees: dict[str, int] = Field(
        default_factory=dict, description='minimum fee per token in base units, e.g. {"ETH": 1000000000000000}'
    )
    token_addresses: dict[str, str] = Field(
        default_factory=dict, description="ERC-20 contract address per token symbol on the configured chain"
    )
    escrow_default_expiry: float = Field(
        7 * 86_400.0, gt=0, description="seconds until an escrow created without expire_time expires (7 days)"
    )
    escrow_max_expiry: float = Field(
        90 * 86_400.0, gt=0, description="the furthest in the future, in seconds, an escrow's expiry may be set"
    )
    webhook_timeout_ms: int = Field(
        5000, ge=100, le=60_000, description="how long one webhook attempt may take, connection and answer"
    )
    webhook_max_retries: int = Field(
        3, ge=0, le=20, description="attempts after a webhook delivery's first before it fails for good"
    )
    webhook_retry_initial: float = Field(5.0, ge=0, description="seconds before a failed delivery's first retry")
    webhook_retry_multiplier: float = Field(
        6.0, ge=1, description="how much longer each next retry waits (5 s, 30 s, 3 min by default)"
    )
    webhook_retry_max_delay: float = Field(
        3600.0, ge=0, description="the longest wait between attempts, an endpoint's Retry-After included"
    )
    webhook_breaker_threshold: int = Field(
        5, ge=1, description="failed attempts in a row that stop deliveries to an endpoint for a while"
    )
    webhook_breaker_reset: float = Field(
        30.0, ge=0, description="seconds an endpoint's open circuit breaker waits before one probe attempt"
    )
    webhook_disable_after: float = Field(
        5 * 86_400.0, gt=0, description="seconds of failed attempts only after which an endpoint is disabled"
    )
    webhook_allow_private: bool = Field(
        False, description="let webhook URLs reach loopback, private and link-local addresses (development)"
    )
    event_heartbeat_interval: float = Field(
        15.0, gt=0, description="seconds an idle event stream waits before it sends a heartbeat"
    )
    event_subscriber_backlog: int = Field(
        10_000, ge=1, description="live events a stream may fall behind before it is ended as too slow"
    )
    settlement_enabled: bool = Field(
        True, description="settle on chain and credit deposits; off for a replica that only accepts payments"
    )
    chain_rpc_url: str | None = Field(
        None, description="JSON-RPC URL of the chain; unset: an in-process EVM that lives as long as the server"
    )
    chain_id: int | None = Field(None, ge=1, description="the chain id to insist on; the node's own when unset")
    contract_address: str | None = Field(
        None, description="the settlement contract on chain_rpc_url's chain (the in-process chain deploys its own)"
    )
    operator_private_key: SecretStr | None = Field(
        None, description="hex private key of the contract's operator, which signs settlement batches"
    )
    confirmations: int = Field(
        1, ge=1, le=1000, description="blocks, its own included, before a deposit or batch counts (12+ on mainnet)"
    )
    deposits_from_block: int = Field(0, ge=0, description="the first block to read deposits from on a new ledger")
    max_batch_size: int = Field(
        100, ge=1, le=2000, description="most payments in one settlement transaction (the gas cap may close it sooner)"
    )
    batch_timeout_ms: float = Field(
        1000, ge=0, description="how long the first queued payment waits for a fuller batch"
    )
    max_fee_per_gas: int = Field(500 * 10**9, ge=1, description="most wei per gas the operator pays for a batch")
    tx_replace_after: float = Field(
        30.0, gt=0, description="seconds before an unmined batch transaction is replaced with 12.5% higher fees"
    )
    chain_retries: int = Field(
        3, ge=0, le=20, description="retries of a batch whose transaction reverted or was refused, before it fails"
    )
    chain_poll_interval: float = Field(1.0, gt=0, description="seconds between looks at the chain for new blocks")
    fee_payout_interval: float = Field(
        3600.0, ge=0, description="seconds between payouts of settled fees to the four fee recipients; 0: never"
    )
    rpc_failure_threshold: int = Field(
        5, ge=1, description="failed calls in a row that open the circuit breaker on the chain's RPC endpoint"
    )
    rpc_reset_timeout: float = Field(10.0, gt=0, description="seconds the breaker stays open before one probe")
    shutdown_grace: float = Field(10.0, ge=0, description="seconds in-flight calls get to finish on SIGTERM")
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; enables TLS with tls_key_file")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: str = Field("json", description="json (one object a line) or text")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"{CONFIG_FILE_VARIABLE}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        return _host_port(value, "listen")

    @field_validator("metrics_listen")
    @classmethod
    def _check_metrics_listen(cls, value: str) -> str:
        return _host_port(value, "metrics_listen") if value else value

    @field_validator("contract_address")
    @classmethod
    def _check_contract_address(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 42 or not value.startswith("0x")):
            raise ValueError(f"contract_address must be a 0x-prefixed 20-byte hex address, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value.upper()

    @field_validator("log_format")
    @classmethod
    def _check_log_format(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError(f"log_format must be json or text, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_escrow_expiry(self) -> Settings:
        if self.escrow_default_expiry > self.escrow_max_expiry:
            raise ValueError("escrow_default_expiry must not exceed escrow_max_expiry")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def ledger_url(self) -> str:
        """The SQLAlchemy URL of the ledger database."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'agentflow.db'}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment and ``AGENTFLOW_CONFIG``; ``overrides`` win over both."""
    return Settings(**overrides)
