"""How ``candela-migrate`` reads where to migrate: arguments first, then the services' CANDELA_* variables."""

from __future__ import annotations

import pytest

from candela_schema.cli import EXIT_USAGE, Settings, UsageError, main, settings_of

pytestmark = pytest.mark.unit


def test_the_services_variables_are_the_fallbacks_with_the_services_defaults() -> None:
    assert settings_of([], {"CANDELA_POSTGRES_DSN": "postgresql://db/candela"}) == Settings(
        stores=("postgres", "clickhouse"),
        postgres_dsn="postgresql://db/candela",
        clickhouse_host="127.0.0.1",
        clickhouse_port=9000,
        clickhouse_database="candela",
        clickhouse_user="default",
        clickhouse_password="",
    )
    environ = {
        "CANDELA_POSTGRES_DSN": "postgresql://db/candela",
        "CANDELA_CLICKHOUSE_HOST": "ch",
        "CANDELA_CLICKHOUSE_PORT": "9440",
        "CANDELA_CLICKHOUSE_DATABASE": "logs",
        "CANDELA_CLICKHOUSE_USER": "writer",
        "CANDELA_CLICKHOUSE_PASSWORD": "secret",
    }
    settings = settings_of([], environ)
    assert (settings.clickhouse_host, settings.clickhouse_port, settings.clickhouse_database) == ("ch", 9440, "logs")
    assert (settings.clickhouse_user, settings.clickhouse_password) == ("writer", "secret")
    overridden = settings_of(["--clickhouse-port", "9000", "--postgres-dsn", "postgresql://other/x"], environ)
    assert (overridden.clickhouse_port, overridden.postgres_dsn) == (9000, "postgresql://other/x")


def test_the_other_members_come_from_the_services_variable_or_the_option() -> None:
    environ = {"CANDELA_CLICKHOUSE_ALT_HOSTS": "ch2,ch3:9440"}
    assert settings_of(["--only", "clickhouse"], environ).clickhouse_alt_hosts == "ch2,ch3:9440"
    assert settings_of(["--only", "clickhouse", "--clickhouse-alt-hosts", "ch4"], environ).clickhouse_alt_hosts == "ch4"
    assert settings_of(["--only", "clickhouse"], {}).clickhouse_alt_hosts == ""


def test_only_clickhouse_needs_no_postgres_dsn() -> None:
    assert settings_of(["--only", "clickhouse"], {}).stores == ("clickhouse",)
    with pytest.raises(UsageError, match="CANDELA_POSTGRES_DSN"):
        settings_of(["--only", "postgres"], {})


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--clickhouse-port", "nine"], "port is no number"),
        (["--clickhouse-port", "70000"], "port is out of range"),
        (["--clickhouse-database", "candela; DROP TABLE requests"], "invalid ClickHouse database name"),
        (["--clickhouse-alt-hosts", "ch2,ch3:nine"], "bad ClickHouse member 'ch3:nine'"),
    ],
)
def test_bad_settings_exit_2_before_touching_a_store(argv: list[str], problem: str) -> None:
    said: list[str] = []
    complaints: list[str] = []
    code = main(argv, {"CANDELA_POSTGRES_DSN": "postgresql://127.0.0.1:1/x"}, said.append, complaints.append)
    assert code == EXIT_USAGE
    assert said == []
    assert len(complaints) == 1
    assert problem in complaints[0]
