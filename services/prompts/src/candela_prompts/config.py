"""Configuration of the prompts service."""

from __future__ import annotations

from dataclasses import dataclass

from candela_runtime.config import ServiceConfig, env_field


@dataclass(frozen=True, kw_only=True)
class PromptsConfig(ServiceConfig):
    """Settings of the prompts service (CANDELA_* variables)."""

    postgres_dsn: str = env_field("Postgres DSN holding prompt versions.")
    postgres_pool_size: int = env_field("Maximum Postgres connections.", 10)
    auth_addr: str = env_field("host:port of the auth service, which resolves callers' API keys.")
    key_cache_ttl_s: float = env_field(
        "Seconds an API key's resolution is cached: a revoked key keeps working here at most this long.", 5.0
    )
