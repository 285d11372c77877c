"""Postgres access for organizations and API keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class OrganizationRow:
    """An organization as stored."""

    id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKeyRow:
    """An API key as stored (its hash, never the key)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    prefix: str
    key_hash: bytes
    scopes: tuple[int, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class AuthStore:
    """Queries over the ``organizations`` and ``api_keys`` tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_organization(self, name: str) -> OrganizationRow:
        """Inserts a new organization."""
        row = await self._pool.fetchrow(
            "INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
            uuid.uuid4(),
            name,
        )
        return OrganizationRow(**dict(row))

    async def organization_exists(self, organization_id: uuid.UUID) -> bool:
        """Whether the organization exists."""
        found = await self._pool.fetchval("SELECT 1 FROM organizations WHERE id = $1", organization_id)
        return found is not None

    async def create_api_key(
        self, organization_id: uuid.UUID, name: str, prefix: str, key_hash: bytes, scopes: list[int]
    ) -> ApiKeyRow:
        """Inserts a new key by its hash."""
        row = await self._pool.fetchrow(
            """
            INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, scopes)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING id, organization_id, name, prefix, key_hash, scopes, created_at, expires_at, revoked_at
            """,
            uuid.uuid4(),
            organization_id,
            name,
            prefix,
            key_hash,
            scopes,
        )
        return _api_key_row(row)

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        """The key with this hash, if any."""
        row = await self._pool.fetchrow(
            """
            SELECT id, organization_id, name, prefix, key_hash, scopes, created_at, expires_at, revoked_at
            FROM api_keys WHERE key_hash = $1
            """,
            key_hash,
        )
        return None if row is None else _api_key_row(row)


def _api_key_row(row: asyncpg.Record) -> ApiKeyRow:
    values = dict(row)
    values["scopes"] = tuple(values["scopes"])
    return ApiKeyRow(**values)
