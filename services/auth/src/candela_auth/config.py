"""Configuration of the auth service."""

from __future__ import annotations

from dataclasses import dataclass

from candela_runtime.config import ServiceConfig, env_field


@dataclass(frozen=True, kw_only=True)
class AuthConfig(ServiceConfig):
    """Settings of the auth service (CANDELA_* variables)."""

    postgres_dsn: str = env_field("Postgres DSN holding organizations and API keys.")
    postgres_pool_size: int = env_field("Maximum Postgres connections.", 10)
