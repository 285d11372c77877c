"""The PromptsService servicer: versioned templates, each organization seeing only its own."""

from __future__ import annotations

import re
import uuid

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.prompts.v1 import prompts_service_pb2 as pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_runtime.errors import NotFound, Violations
from candela_runtime.security import KeyAuthenticator

PROMPT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_TEMPLATE_BYTES = 256 * 1024

Context = grpc.aio.ServicerContext[object, object]


class PromptsServicer(prompts_service_pb2_grpc.PromptsServiceServicer):
    """Prompt templates in Postgres; a new template for an existing prompt becomes its next version."""

    def __init__(self, pool: asyncpg.Pool, authenticator: KeyAuthenticator) -> None:
        self._pool = pool
        self._authenticator = authenticator

    async def CreatePrompt(self, request: pb.CreatePromptRequest, context: Context) -> pb.CreatePromptResponse:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(auth_pb.API_KEY_SCOPE_WRITE)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        if not request.template:
            violations.add("template", "is required")
        elif len(request.template.encode()) > MAX_TEMPLATE_BYTES:
            violations.add("template", f"must be at most {MAX_TEMPLATE_BYTES} bytes")
        violations.raise_if_any()
        organization_id = uuid.UUID(caller.organization_id)
        async with self._pool.acquire() as connection, connection.transaction():
            # Serialises concurrent creations of the same prompt so versions stay dense and unique.
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1::text || '/' || $2, 0))",
                str(organization_id),
                request.prompt_id,
            )
            row = await connection.fetchrow(
                """
                INSERT INTO prompt_versions (organization_id, prompt_id, version, template)
                SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3
                FROM prompt_versions WHERE organization_id = $1 AND prompt_id = $2
                RETURNING prompt_id, version, template, created_at
                """,
                organization_id,
                request.prompt_id,
                request.template,
            )
        return pb.CreatePromptResponse(prompt=_prompt_message(row))

    async def GetPrompt(self, request: pb.GetPromptRequest, context: Context) -> pb.GetPromptResponse:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        if request.version < 0:
            violations.add("version", "must be positive, or 0 for the latest")
        violations.raise_if_any()
        row = await self._pool.fetchrow(
            """
            SELECT prompt_id, version, template, created_at FROM prompt_versions
            WHERE organization_id = $1 AND prompt_id = $2 AND ($3 = 0 OR version = $3)
            ORDER BY version DESC LIMIT 1
            """,
            uuid.UUID(caller.organization_id),
            request.prompt_id,
            request.version,
        )
        if row is None:
            which = f"version {request.version} of " if request.version else ""
            raise NotFound(f"{which}prompt {request.prompt_id!r} does not exist")
        return pb.GetPromptResponse(prompt=_prompt_message(row))


def _check_prompt_id(violations: Violations, prompt_id: str) -> None:
    if not prompt_id:
        violations.add("prompt_id", "is required")
    elif not PROMPT_ID_PATTERN.match(prompt_id):
        violations.add("prompt_id", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _prompt_message(row: asyncpg.Record) -> pb.Prompt:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(row["created_at"])
    return pb.Prompt(prompt_id=row["prompt_id"], version=row["version"], template=row["template"], create_time=created)
