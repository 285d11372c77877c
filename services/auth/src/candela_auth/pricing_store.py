"""Postgres access for price overrides and model aliases; each write notifies the pricing watchers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from candela_auth.pricing import NOTIFY_CHANNEL, notice_payload

_OVERRIDE_COLUMNS = (
    "provider, model, input_price_per_mtok, output_price_per_mtok, cached_input_price_per_mtok, "
    "cache_write_price_per_mtok, updated_at"
)
_ALIAS_COLUMNS = "model, target_provider, target_model, updated_at"


@dataclass(frozen=True)
class PriceOverrideRow:
    """One organization's price for a (provider, model), per million tokens; None cache prices mean the
    input price."""

    provider: str
    model: str
    input_price_per_mtok: Decimal
    output_price_per_mtok: Decimal
    cached_input_price_per_mtok: Decimal | None
    cache_write_price_per_mtok: Decimal | None
    updated_at: datetime


@dataclass(frozen=True)
class ModelAliasRow:
    """A model name priced as another (provider, model)."""

    model: str
    target_provider: str
    target_model: str
    updated_at: datetime


class PricingStore:
    """Queries over ``price_overrides`` and ``model_aliases``. Every write commits with a NOTIFY on
    :data:`~candela_auth.pricing.NOTIFY_CHANNEL`, so each auth replica hears of it."""

    def __init__(self, pool: asyncpg.Pool, replica_id: str) -> None:
        self._pool = pool
        self._replica_id = replica_id

    async def set_price_override(
        self,
        organization_id: uuid.UUID,
        provider: str,
        model: str,
        input_price: Decimal,
        output_price: Decimal,
        cached_input_price: Decimal | None,
        cache_write_price: Decimal | None,
    ) -> PriceOverrideRow | None:
        """Inserts or replaces the override; None when the organization does not exist."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"""
                INSERT INTO price_overrides (organization_id, provider, model, input_price_per_mtok,
                    output_price_per_mtok, cached_input_price_per_mtok, cache_write_price_per_mtok)
                SELECT $1, $2, $3, $4, $5, $6, $7 FROM organizations WHERE id = $1
                ON CONFLICT (organization_id, provider, model) DO UPDATE SET
                    input_price_per_mtok = EXCLUDED.input_price_per_mtok,
                    output_price_per_mtok = EXCLUDED.output_price_per_mtok,
                    cached_input_price_per_mtok = EXCLUDED.cached_input_price_per_mtok,
                    cache_write_price_per_mtok = EXCLUDED.cache_write_price_per_mtok,
                    updated_at = now()
                RETURNING {_OVERRIDE_COLUMNS}
                """,
                organization_id,
                provider,
                model,
                input_price,
                output_price,
                cached_input_price,
                cache_write_price,
            )
            if row is not None:
                await _notify(connection, self._replica_id, organization_id)
        return None if row is None else PriceOverrideRow(**dict(row))

    async def list_price_overrides(self, organization_id: uuid.UUID) -> list[PriceOverrideRow]:
        """The organization's overrides, by provider then model."""
        rows = await self._pool.fetch(
            f"SELECT {_OVERRIDE_COLUMNS} FROM price_overrides WHERE organization_id = $1 ORDER BY provider, model",
            organization_id,
        )
        return [PriceOverrideRow(**dict(row)) for row in rows]

    async def delete_price_override(self, organization_id: uuid.UUID, provider: str, model: str) -> bool:
        """Removes the override; False when there was none."""
        async with self._pool.acquire() as connection, connection.transaction():
            deleted = await connection.fetchval(
                "DELETE FROM price_overrides WHERE organization_id = $1 AND provider = $2 AND model = $3 RETURNING 1",
                organization_id,
                provider,
                model,
            )
            if deleted is not None:
                await _notify(connection, self._replica_id, organization_id)
        return deleted is not None

    async def set_model_alias(
        self, organization_id: uuid.UUID, model: str, target_provider: str, target_model: str
    ) -> ModelAliasRow | None:
        """Inserts or replaces the alias of ``model``; None when the organization does not exist."""
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"""
                INSERT INTO model_aliases (organization_id, model, target_provider, target_model)
                SELECT $1, $2, $3, $4 FROM organizations WHERE id = $1
                ON CONFLICT (organization_id, model) DO UPDATE SET
                    target_provider = EXCLUDED.target_provider,
                    target_model = EXCLUDED.target_model,
                    updated_at = now()
                RETURNING {_ALIAS_COLUMNS}
                """,
                organization_id,
                model,
                target_provider,
                target_model,
            )
            if row is not None:
                await _notify(connection, self._replica_id, organization_id)
        return None if row is None else ModelAliasRow(**dict(row))

    async def list_model_aliases(self, organization_id: uuid.UUID) -> list[ModelAliasRow]:
        """The organization's aliases, by model name."""
        rows = await self._pool.fetch(
            f"SELECT {_ALIAS_COLUMNS} FROM model_aliases WHERE organization_id = $1 ORDER BY model",
            organization_id,
        )
        return [ModelAliasRow(**dict(row)) for row in rows]

    async def delete_model_alias(self, organization_id: uuid.UUID, model: str) -> bool:
        """Removes the alias; False when there was none."""
        async with self._pool.acquire() as connection, connection.transaction():
            deleted = await connection.fetchval(
                "DELETE FROM model_aliases WHERE organization_id = $1 AND model = $2 RETURNING 1",
                organization_id,
                model,
            )
            if deleted is not None:
                await _notify(connection, self._replica_id, organization_id)
        return deleted is not None


async def _notify(connection: asyncpg.Connection, replica_id: str, organization_id: uuid.UUID) -> None:
    """Queues the change notice; Postgres delivers it when (and only if) the transaction commits."""
    await connection.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, notice_payload(replica_id, organization_id))
