"""The PromptsService servicer: versioned templates, each organization seeing only its own.

Every call is scoped to the organization of the caller's key (resolved through AuthService with a short
cache); another organization's prompt is NOT_FOUND, exactly like one that does not exist. Reads need
READ, writes WRITE (ADMIN implies both). RenderPrompt, which the proxy calls on the hot path, also
accepts a PROXY key, and the service credential together with ``organization_id``: the proxy has
already authenticated its caller, so it names the organization instead of making prompts resolve the key
a second time.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable

import asyncpg
import grpc
from google.protobuf import timestamp_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.prompts.v1 import prompts_service_pb2 as pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_prompts import templates
from candela_prompts.store import PromptStore, PromptSummaryRow, VersionRow
from candela_runtime.errors import NotFound, PermissionDenied, Violations
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES, prompt_inputs_bytes
from candela_runtime.security import Caller, KeyAuthenticator, has_service_credential

PROMPT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ENVIRONMENT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
MAX_TEMPLATE_BYTES = 256 * 1024
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_RENDER_SCOPES = frozenset({auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_PROXY, auth_pb.API_KEY_SCOPE_ADMIN})

Context = grpc.aio.ServicerContext[object, object]


class PromptsServicer(prompts_service_pb2_grpc.PromptsServiceServicer):
    """Prompt templates in Postgres; a new template for an existing prompt becomes its next version."""

    def __init__(self, pool: asyncpg.Pool, authenticator: KeyAuthenticator, service_token: str) -> None:
        self._store = PromptStore(pool)
        self._authenticator = authenticator
        self._service_token = service_token

    async def CreatePrompt(self, request: pb.CreatePromptRequest, context: Context) -> pb.CreatePromptResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_WRITE)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        if request.environment:
            _check_environment(violations, request.environment)
        template_format = request.format or pb.TEMPLATE_FORMAT_TEXT
        if template_format not in (pb.TEMPLATE_FORMAT_TEXT, pb.TEMPLATE_FORMAT_CHAT):
            violations.add("format", f"unknown template format {request.format}")
        parsed = None
        if not request.template:
            violations.add("template", "is required")
        elif len(request.template.encode()) > MAX_TEMPLATE_BYTES:
            violations.add("template", f"must be at most {MAX_TEMPLATE_BYTES} bytes")
        elif "\x00" in request.template:
            # Postgres text cannot hold NUL (a CHAT template can still say "\u0000" in its JSON).
            violations.add("template", "must not contain NUL (U+0000) characters")
        elif template_format in (pb.TEMPLATE_FORMAT_TEXT, pb.TEMPLATE_FORMAT_CHAT):
            try:
                parsed = templates.parse_template(request.template, template_format)
            except templates.TemplateError as err:
                violations.add("template", str(err))
        violations.raise_if_any()
        assert parsed is not None
        row = await self._store.create_version(
            uuid.UUID(caller.organization_id),
            request.prompt_id,
            request.template,
            template_format,
            list(parsed.variables),
            request.environment,
        )
        return pb.CreatePromptResponse(prompt=_prompt_message(row))

    async def GetPrompt(self, request: pb.GetPromptRequest, context: Context) -> pb.GetPromptResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        _check_selector(violations, request.version, request.environment)
        violations.raise_if_any()
        row = await self._version(caller.organization_id, request.prompt_id, request.version, request.environment)
        return pb.GetPromptResponse(prompt=_prompt_message(row))

    async def ListPrompts(self, request: pb.ListPromptsRequest, context: Context) -> pb.ListPromptsResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        page_size = _page_size(violations, request.page_size)
        after = _decode_token(violations, request.page_token, "p", _is_prompt_id)
        violations.raise_if_any()
        rows = await self._store.list_prompts(uuid.UUID(caller.organization_id), after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return pb.ListPromptsResponse(
            prompts=[_summary_message(row) for row in rows],
            next_page_token=_encode_token("p", rows[-1].prompt_id) if more else "",
        )

    async def ListPromptVersions(
        self, request: pb.ListPromptVersionsRequest, context: Context
    ) -> pb.ListPromptVersionsResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        page_size = _page_size(violations, request.page_size)
        token = _decode_token(violations, request.page_token, "v", _is_version)
        below = int(token) if token else None
        violations.raise_if_any()
        rows = await self._store.list_versions(
            uuid.UUID(caller.organization_id), request.prompt_id, below, page_size + 1
        )
        if not rows and below is None:
            raise NotFound(f"prompt {request.prompt_id!r} does not exist")
        more = len(rows) > page_size
        rows = rows[:page_size]
        return pb.ListPromptVersionsResponse(
            versions=[_prompt_message(row) for row in rows],
            next_page_token=_encode_token("v", str(rows[-1].version)) if more else "",
        )

    async def SetEnvironment(self, request: pb.SetEnvironmentRequest, context: Context) -> pb.SetEnvironmentResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_WRITE)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        _check_environment(violations, request.environment)
        if request.version <= 0:
            violations.add("version", "must be a version number (1 or more)")
        violations.raise_if_any()
        moved = await self._store.set_environment(
            uuid.UUID(caller.organization_id), request.prompt_id, request.environment, request.version
        )
        if moved is None:
            raise NotFound(f"version {request.version} of prompt {request.prompt_id!r} does not exist")
        row, previous = moved
        return pb.SetEnvironmentResponse(prompt=_prompt_message(row), previous_version=previous)

    async def ComparePromptVersions(
        self, request: pb.ComparePromptVersionsRequest, context: Context
    ) -> pb.ComparePromptVersionsResponse:
        caller = await self._caller(context, auth_pb.API_KEY_SCOPE_READ)
        violations = Violations()
        _check_prompt_id(violations, request.prompt_id)
        for field, version in (("base_version", request.base_version), ("target_version", request.target_version)):
            if version <= 0:
                violations.add(field, "must be a version number (1 or more)")
        violations.raise_if_any()
        base = await self._version(caller.organization_id, request.prompt_id, request.base_version, "")
        target = await self._version(caller.organization_id, request.prompt_id, request.target_version, "")
        base_message, target_message = _prompt_message(base), _prompt_message(target)
        # Mixed formats are compared as text; same-format CHAT templates field by field.
        same_chat = base.format == target.format == pb.TEMPLATE_FORMAT_CHAT
        compared_format = pb.TEMPLATE_FORMAT_CHAT if same_chat else pb.TEMPLATE_FORMAT_TEXT
        labels = (f"{request.prompt_id}@v{base.version}", f"{request.prompt_id}@v{target.version}")
        return pb.ComparePromptVersionsResponse(
            base=base_message,
            target=target_message,
            diff=templates.diff(base.template, target.template, compared_format, labels),
            added_variables=[v for v in target_message.variables if v not in base_message.variables],
            removed_variables=[v for v in base_message.variables if v not in target_message.variables],
        )

    async def RenderPrompt(self, request: pb.RenderPromptRequest, context: Context) -> pb.RenderPromptResponse:
        violations = Violations()
        if has_service_credential(context, self._service_token):
            organization_id = _organization_id(violations, request.organization_id)
        else:
            caller = await self._authenticator.authenticate_call(context)
            if not caller.scopes & _RENDER_SCOPES:
                raise PermissionDenied("rendering a prompt needs the PROXY or READ scope")
            if request.organization_id and request.organization_id != caller.organization_id:
                raise PermissionDenied("an API key can only render its own organization's prompts")
            organization_id = caller.organization_id
        _check_prompt_id(violations, request.prompt_id)
        _check_selector(violations, request.version, request.environment)
        # The rendered inputs are logged with the request: the bound is the one ingest and the proxy keep.
        if prompt_inputs_bytes(request.inputs) > MAX_PROMPT_INPUTS_BYTES:
            violations.add("inputs", f"must total at most {MAX_PROMPT_INPUTS_BYTES} bytes (names and values, UTF-8)")
        violations.raise_if_any()
        row = await self._version(organization_id, request.prompt_id, request.version, request.environment)
        parsed = templates.parse_template(row.template, _format(row.format))
        try:
            rendered = templates.render(parsed, dict(request.inputs))
        except templates.RenderError as err:
            for field, description in err.problems:
                violations.add(field, description)
            violations.raise_if_any(f"the inputs do not fit version {row.version} of prompt {row.prompt_id!r}")
            raise  # unreachable: RenderError always carries problems
        return pb.RenderPromptResponse(
            prompt_id=row.prompt_id,
            version=row.version,
            format=parsed.format,
            messages=[pb.ChatMessage(role=role, content=content) for role, content in rendered.messages],
            text=rendered.text,
        )

    async def _caller(self, context: Context, scope: auth_pb.ApiKeyScope.ValueType) -> Caller:
        caller = await self._authenticator.authenticate_call(context)
        caller.require_scope(scope)
        return caller

    async def _version(self, organization_id: str, prompt_id: str, version: int, environment: str) -> VersionRow:
        row = await self._store.get_version(uuid.UUID(organization_id), prompt_id, version, environment)
        if row is None:
            if environment:
                raise NotFound(f"prompt {prompt_id!r} has no environment {environment!r}")
            which = f"version {version} of " if version else ""
            raise NotFound(f"{which}prompt {prompt_id!r} does not exist")
        return row


def _is_prompt_id(value: str) -> bool:
    return PROMPT_ID_PATTERN.fullmatch(value) is not None


def _is_version(value: str) -> bool:
    """A version number: 1 to 2**31 - 1 (the column is a Postgres integer), in ASCII digits."""
    return value.isascii() and value.isdigit() and len(value) <= 10 and 0 < int(value) < 2**31


def _check_prompt_id(violations: Violations, prompt_id: str) -> None:
    if not prompt_id:
        violations.add("prompt_id", "is required")
    elif not _is_prompt_id(prompt_id):
        violations.add("prompt_id", "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")


def _check_environment(violations: Violations, environment: str) -> None:
    if not ENVIRONMENT_PATTERN.fullmatch(environment):
        violations.add(
            "environment", "must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )


def _check_selector(violations: Violations, version: int, environment: str) -> None:
    if version < 0:
        violations.add("version", "must be positive, or 0 for the latest")
    if environment:
        _check_environment(violations, environment)
        if version:
            violations.add("environment", "give either version or environment, not both")


def _organization_id(violations: Violations, value: str) -> str:
    if not value:
        violations.add("organization_id", "is required with the service credential")
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        violations.add("organization_id", f"must be a UUID, got {value!r}")
        return ""


def _page_size(violations: Violations, page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        violations.add("page_size", f"must be 1-{MAX_PAGE_SIZE} (0 for {DEFAULT_PAGE_SIZE})")
    return page_size or DEFAULT_PAGE_SIZE


def _encode_token(kind: str, value: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode()


def _decode_token(violations: Violations, token: str, kind: str, valid: Callable[[str], bool]) -> str:
    """The position a page token encodes ('' for the first page). A token is caller input and its value
    goes to Postgres, so it must also be ``valid``."""
    if not token:
        return ""
    try:
        decoded = base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    found_kind, _, value = decoded.partition(":")
    if found_kind != kind or not valid(value):
        violations.add("page_token", "is not a token this method returned")
        return ""
    return value


def _format(stored: int) -> pb.TemplateFormat.ValueType:
    return pb.TEMPLATE_FORMAT_CHAT if stored == pb.TEMPLATE_FORMAT_CHAT else pb.TEMPLATE_FORMAT_TEXT


def _timestamp(row_time: object) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(row_time)  # type: ignore[arg-type]
    return stamp


def _prompt_message(row: VersionRow) -> pb.Prompt:
    template_format = _format(row.format)
    parsed = templates.parse_template(row.template, template_format)
    return pb.Prompt(
        prompt_id=row.prompt_id,
        version=row.version,
        template=row.template,
        create_time=_timestamp(row.created_at),
        format=template_format,
        variables=list(parsed.variables),
        environments=list(row.environments),
    )


def _summary_message(row: PromptSummaryRow) -> pb.PromptSummary:
    return pb.PromptSummary(
        prompt_id=row.prompt_id,
        latest_version=row.latest_version,
        environments=row.environments,
        create_time=_timestamp(row.created_at),
        update_time=_timestamp(row.updated_at),
    )
