"""Postgres access for organizations and API keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_ORGANIZATION_COLUMNS = "id, name, created_at, max_stored_logs, retention_days, updated_at"
_API_KEY_COLUMNS = "id, organization_id, name, prefix, key_hash, scopes, created_at, expires_at, revoked_at"

UNCHANGED: object = object()
"""Marks a field of :meth:`AuthStore.update_organization` that keeps its value."""


@dataclass(frozen=True)
class OrganizationRow:
    """An organization as stored; a None limit means unlimited."""

    id: uuid.UUID
    name: str
    created_at: datetime
    max_stored_logs: int | None
    retention_days: int | None
    updated_at: datetime


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
            f"INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING {_ORGANIZATION_COLUMNS}",
            uuid.uuid4(),
            name,
        )
        return OrganizationRow(**dict(row))

    async def get_organization(self, organization_id: uuid.UUID) -> OrganizationRow | None:
        """The organization, if it exists."""
        row = await self._pool.fetchrow(
            f"SELECT {_ORGANIZATION_COLUMNS} FROM organizations WHERE id = $1", organization_id
        )
        return None if row is None else OrganizationRow(**dict(row))

    async def organization_exists(self, organization_id: uuid.UUID) -> bool:
        """Whether the organization exists."""
        found = await self._pool.fetchval("SELECT 1 FROM organizations WHERE id = $1", organization_id)
        return found is not None

    async def update_organization(
        self,
        organization_id: uuid.UUID,
        *,
        name: object = UNCHANGED,
        max_stored_logs: object = UNCHANGED,
        retention_days: object = UNCHANGED,
    ) -> OrganizationRow | None:
        """Sets the given fields (``UNCHANGED`` keeps one); None when the organization does not exist."""
        changes = {
            column: value
            for column, value in (
                ("name", name),
                ("max_stored_logs", max_stored_logs),
                ("retention_days", retention_days),
            )
            if value is not UNCHANGED
        }
        # Column names come from the fixed tuple above, never from the caller.
        assignments = ", ".join(f"{column} = ${index}" for index, column in enumerate(changes, start=2))
        row = await self._pool.fetchrow(
            f"UPDATE organizations SET {assignments + ', ' if assignments else ''}updated_at = now() "
            f"WHERE id = $1 RETURNING {_ORGANIZATION_COLUMNS}",
            organization_id,
            *changes.values(),
        )
        return None if row is None else OrganizationRow(**dict(row))

    async def create_api_key(
        self,
        organization_id: uuid.UUID,
        name: str,
        prefix: str,
        key_hash: bytes,
        scopes: list[int],
        expires_at: datetime | None = None,
    ) -> ApiKeyRow:
        """Inserts a new key by its hash."""
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO api_keys (id, organization_id, name, prefix, key_hash, scopes, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            RETURNING {_API_KEY_COLUMNS}
            """,
            uuid.uuid4(),
            organization_id,
            name,
            prefix,
            key_hash,
            scopes,
            expires_at,
        )
        return _api_key_row(row)

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        """The key with this hash, if any."""
        row = await self._pool.fetchrow(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash)
        return None if row is None else _api_key_row(row)

    async def list_api_keys(self, organization_id: uuid.UUID, include_revoked: bool) -> list[ApiKeyRow]:
        """The organization's keys, newest first."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_API_KEY_COLUMNS} FROM api_keys
            WHERE organization_id = $1 AND ($2 OR revoked_at IS NULL)
            ORDER BY created_at DESC, id
            """,
            organization_id,
            include_revoked,
        )
        return [_api_key_row(row) for row in rows]

    async def get_api_key(self, api_key_id: uuid.UUID) -> ApiKeyRow | None:
        """The key with this id, if any."""
        row = await self._pool.fetchrow(f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE id = $1", api_key_id)
        return None if row is None else _api_key_row(row)

    async def revoke_api_key(self, api_key_id: uuid.UUID, organization_id: uuid.UUID | None) -> ApiKeyRow | None:
        """Revokes the key (keeping the first revocation time); None when no such key (in that organization)."""
        row = await self._pool.fetchrow(
            f"""
            UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
            WHERE id = $1 AND ($2::uuid IS NULL OR organization_id = $2)
            RETURNING {_API_KEY_COLUMNS}
            """,
            api_key_id,
            organization_id,
        )
        return None if row is None else _api_key_row(row)


def _api_key_row(row: asyncpg.Record) -> ApiKeyRow:
    values = dict(row)
    values["scopes"] = tuple(values["scopes"])
    values["key_hash"] = bytes(values["key_hash"])
    return ApiKeyRow(**values)
