"""Config loading from CANDELA_* variables: conversions and the errors a misconfigured service prints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from candela_runtime.config import ConfigError, ServiceConfig, env_field, load_config

pytestmark = pytest.mark.unit


@dataclass(frozen=True, kw_only=True)
class _ExampleConfig(ServiceConfig):
    """A service config for the tests."""

    database_url: str = env_field("Where the data lives.")
    batch_size: int = env_field("Rows per batch.", 100)
    verbose: bool = env_field("Say more.", False)
    spool_dir: Path = env_field("Spool directory.", Path("/tmp/spool"))


def test_reads_and_converts_each_type() -> None:
    config = load_config(
        _ExampleConfig,
        {
            "CANDELA_SERVICE_TOKEN": "t0ken",
            "CANDELA_DATABASE_URL": "postgresql://x",
            "CANDELA_BATCH_SIZE": "250",
            "CANDELA_VERBOSE": "yes",
            "CANDELA_SPOOL_DIR": "/var/spool/candela",
            "CANDELA_SHUTDOWN_GRACE_S": "2.5",
        },
    )
    assert config.database_url == "postgresql://x"
    assert config.batch_size == 250
    assert config.verbose is True
    assert config.spool_dir == Path("/var/spool/candela")
    assert config.shutdown_grace_s == 2.5
    assert config.grpc_port == 0


def test_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_ExampleConfig, {"CANDELA_BATCH_SIZE": "lots", "CANDELA_VERBOSE": "maybe"})
    message = str(caught.value)
    assert "CANDELA_SERVICE_TOKEN is required" in message
    assert "CANDELA_DATABASE_URL is required: Where the data lives." in message
    assert "CANDELA_BATCH_SIZE='lots' is not a valid int" in message
    assert "CANDELA_VERBOSE='maybe' is not a valid bool" in message


def test_empty_value_counts_as_missing() -> None:
    with pytest.raises(ConfigError, match="CANDELA_DATABASE_URL is required"):
        load_config(_ExampleConfig, {"CANDELA_SERVICE_TOKEN": "t", "CANDELA_DATABASE_URL": ""})
