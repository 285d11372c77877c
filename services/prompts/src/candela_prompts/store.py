"""Postgres access for prompt versions and environment labels; every query is scoped to one organization."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# The environments pointing at a version, folded into each version row.
_VERSION_COLUMNS = """
    v.prompt_id, v.version, v.template, v.format, v.created_at,
    ARRAY(
        SELECT e.environment FROM prompt_environments e
        WHERE e.organization_id = v.organization_id AND e.prompt_id = v.prompt_id AND e.version = v.version
        ORDER BY e.environment
    ) AS environments
"""


@dataclass(frozen=True)
class VersionRow:
    """One stored version of a prompt."""

    prompt_id: str
    version: int
    template: str
    format: int
    created_at: datetime
    environments: tuple[str, ...]


@dataclass(frozen=True)
class PromptSummaryRow:
    """A prompt with its latest version and environment labels."""

    prompt_id: str
    latest_version: int
    created_at: datetime
    updated_at: datetime
    environments: dict[str, int]


def _version_row(row: asyncpg.Record) -> VersionRow:
    values = dict(row)
    values["environments"] = tuple(values["environments"])
    return VersionRow(**values)


class PromptStore:
    """Queries over ``prompt_versions`` and ``prompt_environments``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_version(
        self,
        organization_id: uuid.UUID,
        prompt_id: str,
        template: str,
        template_format: int,
        variables: list[str],
        environment: str,
    ) -> VersionRow:
        """Stores the next version (and points ``environment`` at it when given), in one transaction."""
        async with self._pool.acquire() as connection, connection.transaction():
            # Serialises concurrent creations of the same prompt so versions stay dense and unique.
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 0))",
                str(organization_id),
                prompt_id,
            )
            version: int = await connection.fetchval(
                """
                INSERT INTO prompt_versions (organization_id, prompt_id, version, template, format, variables)
                SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5
                FROM prompt_versions WHERE organization_id = $1 AND prompt_id = $2
                RETURNING version
                """,
                organization_id,
                prompt_id,
                template,
                template_format,
                variables,
            )
            if environment:
                await _point(connection, organization_id, prompt_id, environment, version)
            row = await connection.fetchrow(
                f"SELECT {_VERSION_COLUMNS} FROM prompt_versions v"
                " WHERE v.organization_id = $1 AND v.prompt_id = $2 AND v.version = $3",
                organization_id,
                prompt_id,
                version,
            )
        return _version_row(row)

    async def get_version(
        self, organization_id: uuid.UUID, prompt_id: str, version: int, environment: str
    ) -> VersionRow | None:
        """The version named by number, else by environment, else the latest."""
        if environment:
            row = await self._pool.fetchrow(
                f"""
                SELECT {_VERSION_COLUMNS} FROM prompt_environments pe
                JOIN prompt_versions v USING (organization_id, prompt_id, version)
                WHERE pe.organization_id = $1 AND pe.prompt_id = $2 AND pe.environment = $3
                """,
                organization_id,
                prompt_id,
                environment,
            )
        else:
            row = await self._pool.fetchrow(
                f"""
                SELECT {_VERSION_COLUMNS} FROM prompt_versions v
                WHERE v.organization_id = $1 AND v.prompt_id = $2 AND ($3 = 0 OR v.version = $3)
                ORDER BY v.version DESC LIMIT 1
                """,
                organization_id,
                prompt_id,
                version,
            )
        return None if row is None else _version_row(row)

    async def list_versions(
        self, organization_id: uuid.UUID, prompt_id: str, below_version: int | None, limit: int
    ) -> list[VersionRow]:
        """Versions newest first, those below ``below_version`` when given."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_VERSION_COLUMNS} FROM prompt_versions v
            WHERE v.organization_id = $1 AND v.prompt_id = $2 AND ($3::int IS NULL OR v.version < $3)
            ORDER BY v.version DESC LIMIT $4
            """,
            organization_id,
            prompt_id,
            below_version,
            limit,
        )
        return [_version_row(row) for row in rows]

    async def list_prompts(self, organization_id: uuid.UUID, after: str, limit: int) -> list[PromptSummaryRow]:
        """Prompts ordered by id, those after ``after``."""
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(
                """
                SELECT prompt_id, max(version) AS latest_version, min(created_at) AS created_at,
                       max(created_at) AS updated_at
                FROM prompt_versions WHERE organization_id = $1 AND prompt_id > $2
                GROUP BY prompt_id ORDER BY prompt_id LIMIT $3
                """,
                organization_id,
                after,
                limit,
            )
            labels = await connection.fetch(
                "SELECT prompt_id, environment, version FROM prompt_environments"
                " WHERE organization_id = $1 AND prompt_id = ANY($2::text[])",
                organization_id,
                [row["prompt_id"] for row in rows],
            )
        environments: dict[str, dict[str, int]] = {}
        for label in labels:
            environments.setdefault(label["prompt_id"], {})[label["environment"]] = label["version"]
        return [PromptSummaryRow(**dict(row), environments=environments.get(row["prompt_id"], {})) for row in rows]

    async def set_environment(
        self, organization_id: uuid.UUID, prompt_id: str, environment: str, version: int
    ) -> tuple[VersionRow, int] | None:
        """Points the label at the version; (that version, the previous one or 0), None if no such version."""
        async with self._pool.acquire() as connection, connection.transaction():
            exists = await connection.fetchval(
                "SELECT 1 FROM prompt_versions WHERE organization_id = $1 AND prompt_id = $2 AND version = $3"
                " FOR KEY SHARE",
                organization_id,
                prompt_id,
                version,
            )
            if exists is None:
                return None
            previous = await _point(connection, organization_id, prompt_id, environment, version)
            row = await connection.fetchrow(
                f"SELECT {_VERSION_COLUMNS} FROM prompt_versions v"
                " WHERE v.organization_id = $1 AND v.prompt_id = $2 AND v.version = $3",
                organization_id,
                prompt_id,
                version,
            )
        return _version_row(row), previous


async def _point(
    connection: asyncpg.Connection, organization_id: uuid.UUID, prompt_id: str, environment: str, version: int
) -> int:
    """Upserts the label; returns the version it pointed at before (0 when new)."""
    previous = await connection.fetchval(
        "SELECT version FROM prompt_environments WHERE organization_id = $1 AND prompt_id = $2 AND environment = $3"
        " FOR UPDATE",
        organization_id,
        prompt_id,
        environment,
    )
    await connection.execute(
        """
        INSERT INTO prompt_environments (organization_id, prompt_id, environment, version)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (organization_id, prompt_id, environment)
        DO UPDATE SET version = EXCLUDED.version, updated_at = now()
        """,
        organization_id,
        prompt_id,
        environment,
        version,
    )
    return int(previous or 0)
