"""PromptsService on a real Postgres behind real key authentication: versions, scopes, tenant isolation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import grpc
import pytest

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.prompts.v1 import prompts_service_pb2 as pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_prompts.app import build_deps, create_server
from candela_prompts.config import PromptsConfig
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.limits import MAX_PROMPT_INPUTS_BYTES
from candela_runtime.security import service_metadata
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, bearer, create_key, create_organization

pytestmark = pytest.mark.integration

KEY_CACHE_TTL_S = 1.0


@pytest.fixture(scope="module")
async def prompts_stub(
    postgres_dsn: str, auth_server: AuthServer
) -> AsyncIterator[prompts_service_pb2_grpc.PromptsServiceAsyncStub]:
    config = PromptsConfig(
        service_token=SERVICE_TOKEN,
        postgres_dsn=postgres_dsn,
        auth_addr=auth_server.address,
        grpc_port=0,
        key_cache_ttl_s=KEY_CACHE_TTL_S,
    )
    async with build_deps(config) as deps:
        server = await create_server(config, deps)
        await server.set_serving()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield prompts_service_pb2_grpc.PromptsServiceStub(channel)
        await server.stop(1)


async def _writer_key(auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub) -> str:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_WRITE)
    return created.secret


async def test_versions_increase_and_each_can_be_read(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    first = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="support-reply", template="Hello {{name}}"), metadata=bearer(key)
    )
    second = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="support-reply", template="Hi {{name}}!"), metadata=bearer(key)
    )
    assert (first.prompt.version, second.prompt.version) == (1, 2)

    latest = await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="support-reply"), metadata=bearer(key))
    assert (latest.prompt.version, latest.prompt.template) == (2, "Hi {{name}}!")
    old = await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="support-reply", version=1), metadata=bearer(key))
    assert old.prompt.template == "Hello {{name}}"


async def test_another_organization_cannot_see_the_prompt(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    ours, theirs = await _writer_key(auth_stub), await _writer_key(auth_stub)
    await prompts_stub.CreatePrompt(pb.CreatePromptRequest(prompt_id="secret", template="t"), metadata=bearer(ours))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="secret"), metadata=bearer(theirs))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Their own prompt of the same name starts at version 1.
    created = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="secret", template="theirs"), metadata=bearer(theirs)
    )
    assert created.prompt.version == 1


async def test_scopes_and_credentials_are_enforced(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    organization_id = await create_organization(auth_stub)
    reader = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ)
    request = pb.CreatePromptRequest(prompt_id="p", template="t")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request, metadata=bearer(reader.secret))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.CreatePrompt(request, metadata=bearer("cdl_not-a-real-key"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_prompt_requests_are_invalid_argument(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    for request in (
        pb.CreatePromptRequest(prompt_id="", template="t"),
        pb.CreatePromptRequest(prompt_id="has spaces", template="t"),
        pb.CreatePromptRequest(prompt_id="ok", template=""),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await prompts_stub.CreatePrompt(request, metadata=bearer(key))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="missing"), metadata=bearer(key))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


CHAT_TEMPLATE = json.dumps(
    [
        {"role": "system", "content": "You answer for {{company}}."},
        {"role": "user", "content": "Help {{ customer }} with: {{question}} (ask {{customer}} again)"},
    ]
)


async def _violations_of(call: Awaitable[object]) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    status = rpc_error_status(caught.value)
    assert status is not None
    return {v.field: v.description for v in bad_request_violations(status)}


async def _code_of(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code: grpc.StatusCode = caught.value.code()
    return code


async def test_chat_template_renders_messages_and_names_missing_and_unexpected_inputs(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    created = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="support", template=CHAT_TEMPLATE, format=pb.TEMPLATE_FORMAT_CHAT),
        metadata=bearer(key),
    )
    assert list(created.prompt.variables) == ["company", "customer", "question"]
    assert created.prompt.format == pb.TEMPLATE_FORMAT_CHAT

    rendered = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(
            prompt_id="support", inputs={"company": "Acme", "customer": "Bo", "question": 'say "hi"\nplease'}
        ),
        metadata=bearer(key),
    )
    assert (rendered.prompt_id, rendered.version, rendered.format) == ("support", 1, pb.TEMPLATE_FORMAT_CHAT)
    assert [(m.role, m.content) for m in rendered.messages] == [
        ("system", "You answer for Acme."),
        ("user", 'Help Bo with: say "hi"\nplease (ask Bo again)'),
    ]

    problems = await _violations_of(
        prompts_stub.RenderPrompt(
            pb.RenderPromptRequest(prompt_id="support", inputs={"company": "Acme", "tone": "dry"}),
            metadata=bearer(key),
        )
    )
    assert problems == {
        "inputs.customer": "missing: the template uses this variable",
        "inputs.question": "missing: the template uses this variable",
        "inputs.tone": "unexpected: the template has no such variable",
    }


async def test_malformed_templates_are_refused_naming_the_problem(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    cases = [
        ("Hello {{name", pb.TEMPLATE_FORMAT_TEXT, "unclosed '{{' at offset 6"),
        ("Hello {{first name}}", pb.TEMPLATE_FORMAT_TEXT, "invalid variable name 'first name' at offset 6"),
        ("[{'role': 'user'}]", pb.TEMPLATE_FORMAT_CHAT, "must be a JSON list of messages"),
        ('{"role": "user", "content": "x"}', pb.TEMPLATE_FORMAT_CHAT, "non-empty JSON list"),
        ('[{"role": "user", "content": 3}]', pb.TEMPLATE_FORMAT_CHAT, "messages[0].content: must be a string"),
        ('[{"role": "user", "content": "{{}}"}]', pb.TEMPLATE_FORMAT_CHAT, "messages[0].content: invalid variable"),
        ('[{"role": "", "content": "x"}]', pb.TEMPLATE_FORMAT_CHAT, "messages[0].role"),
        ('[{"role": "user", "content": "x", "name": "n"}]', pb.TEMPLATE_FORMAT_CHAT, "unknown keys ['name']"),
    ]
    for template, template_format, problem in cases:
        found = await _violations_of(
            prompts_stub.CreatePrompt(
                pb.CreatePromptRequest(prompt_id="bad", template=template, format=template_format),
                metadata=bearer(key),
            )
        )
        assert list(found) == ["template"], template
        assert problem in found["template"], (template, found)
    # Nothing was stored by the refused attempts.
    assert await _code_of(prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="bad"), metadata=bearer(key))) == (
        grpc.StatusCode.NOT_FOUND
    )
    literal = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="literal", template="JSON like \\{{ and }} stays; {{x}}"),
        metadata=bearer(key),
    )
    assert list(literal.prompt.variables) == ["x"]
    rendered = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="literal", inputs={"x": "{{y}}"}), metadata=bearer(key)
    )
    assert rendered.text == "JSON like {{ and }} stays; {{y}}"
    assert [(m.role, m.content) for m in rendered.messages] == [("user", rendered.text)]


async def test_versions_are_immutable_and_environments_move(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
    postgres_dsn: str,
) -> None:
    key = await _writer_key(auth_stub)
    first = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="greet", template="Hello {{name}}", environment="production"),
        metadata=bearer(key),
    )
    assert list(first.prompt.environments) == ["production"]
    second = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="greet", template="Hi {{name}}, from {{team}}"), metadata=bearer(key)
    )
    assert second.prompt.version == 2

    production = await prompts_stub.GetPrompt(
        pb.GetPromptRequest(prompt_id="greet", environment="production"), metadata=bearer(key)
    )
    assert production.prompt.version == 1
    moved = await prompts_stub.SetEnvironment(
        pb.SetEnvironmentRequest(prompt_id="greet", environment="production", version=2), metadata=bearer(key)
    )
    assert (moved.prompt.version, moved.previous_version) == (2, 1)
    staging = await prompts_stub.SetEnvironment(
        pb.SetEnvironmentRequest(prompt_id="greet", environment="staging", version=1), metadata=bearer(key)
    )
    assert (staging.prompt.version, staging.previous_version, list(staging.prompt.environments)) == (1, 0, ["staging"])
    rendered = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="greet", environment="production", inputs={"name": "Ann", "team": "ops"}),
        metadata=bearer(key),
    )
    assert (rendered.version, rendered.text) == (2, "Hi Ann, from ops")
    pinned = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="greet", version=1, inputs={"name": "Ann"}), metadata=bearer(key)
    )
    assert pinned.text == "Hello Ann"

    # Version 1 is unchanged by all of this, and the database itself refuses to edit it.
    old = await prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="greet", version=1), metadata=bearer(key))
    assert old.prompt.template == "Hello {{name}}"
    assert old.prompt.create_time == first.prompt.create_time
    connection = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            await connection.execute("UPDATE prompt_versions SET template = 'x' WHERE prompt_id = 'greet'")
    finally:
        await connection.close()

    unknown_version = prompts_stub.SetEnvironment(
        pb.SetEnvironmentRequest(prompt_id="greet", environment="production", version=9), metadata=bearer(key)
    )
    assert await _code_of(unknown_version) == grpc.StatusCode.NOT_FOUND
    unknown_environment = prompts_stub.GetPrompt(
        pb.GetPromptRequest(prompt_id="greet", environment="qa"), metadata=bearer(key)
    )
    assert await _code_of(unknown_environment) == grpc.StatusCode.NOT_FOUND
    bad = await _violations_of(
        prompts_stub.SetEnvironment(
            pb.SetEnvironmentRequest(prompt_id="greet", environment="Prod!", version=0), metadata=bearer(key)
        )
    )
    assert set(bad) == {"environment", "version"}
    both = await _violations_of(
        prompts_stub.GetPrompt(
            pb.GetPromptRequest(prompt_id="greet", version=1, environment="staging"), metadata=bearer(key)
        )
    )
    assert set(both) == {"environment"}


async def test_list_prompts_versions_and_compare(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    for prompt_id in ("a-prompt", "b-prompt", "c-prompt"):
        await prompts_stub.CreatePrompt(
            pb.CreatePromptRequest(prompt_id=prompt_id, template="v1"), metadata=bearer(key)
        )
    await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="b-prompt", template="line one\n{{new_var}}\n", environment="production"),
        metadata=bearer(key),
    )
    first_page = await prompts_stub.ListPrompts(pb.ListPromptsRequest(page_size=2), metadata=bearer(key))
    assert [p.prompt_id for p in first_page.prompts] == ["a-prompt", "b-prompt"]
    assert (first_page.prompts[1].latest_version, dict(first_page.prompts[1].environments)) == (2, {"production": 2})
    second_page = await prompts_stub.ListPrompts(
        pb.ListPromptsRequest(page_size=2, page_token=first_page.next_page_token), metadata=bearer(key)
    )
    assert ([p.prompt_id for p in second_page.prompts], second_page.next_page_token) == (["c-prompt"], "")

    versions = await prompts_stub.ListPromptVersions(
        pb.ListPromptVersionsRequest(prompt_id="b-prompt", page_size=1), metadata=bearer(key)
    )
    assert [v.version for v in versions.versions] == [2]
    rest = await prompts_stub.ListPromptVersions(
        pb.ListPromptVersionsRequest(prompt_id="b-prompt", page_token=versions.next_page_token), metadata=bearer(key)
    )
    assert ([v.version for v in rest.versions], rest.next_page_token) == ([1], "")

    compared = await prompts_stub.ComparePromptVersions(
        pb.ComparePromptVersionsRequest(prompt_id="b-prompt", base_version=1, target_version=2), metadata=bearer(key)
    )
    assert (list(compared.added_variables), list(compared.removed_variables)) == (["new_var"], [])
    assert compared.diff.splitlines() == [
        "--- b-prompt@v1",
        "+++ b-prompt@v2",
        "@@ -1 +1,2 @@",
        "-v1",
        "+line one",
        "+{{new_var}}",
    ]
    missing = prompts_stub.ComparePromptVersions(
        pb.ComparePromptVersionsRequest(prompt_id="b-prompt", base_version=1, target_version=3), metadata=bearer(key)
    )
    assert await _code_of(missing) == grpc.StatusCode.NOT_FOUND
    unknown = prompts_stub.ListPromptVersions(pb.ListPromptVersionsRequest(prompt_id="zzz"), metadata=bearer(key))
    assert await _code_of(unknown) == grpc.StatusCode.NOT_FOUND
    bad_token = await _violations_of(
        prompts_stub.ListPrompts(pb.ListPromptsRequest(page_token="garbage", page_size=5000), metadata=bearer(key))
    )
    assert set(bad_token) == {"page_token", "page_size"}


async def test_render_for_the_proxy_with_the_service_credential_and_with_a_proxy_key(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    organization_id = await create_organization(auth_stub)
    writer = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_WRITE)
    proxy_key = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_PROXY)
    other = await _writer_key(auth_stub)
    await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="p", template="Hi {{n}}"), metadata=bearer(writer.secret)
    )

    internal = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="p", inputs={"n": "x"}, organization_id=organization_id),
        metadata=service_metadata(SERVICE_TOKEN),
    )
    assert (internal.version, internal.text) == (1, "Hi x")
    by_proxy_key = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="p", inputs={"n": "y"}), metadata=bearer(proxy_key.secret)
    )
    assert by_proxy_key.text == "Hi y"
    # A PROXY key renders, but cannot read templates.
    read = prompts_stub.GetPrompt(pb.GetPromptRequest(prompt_id="p"), metadata=bearer(proxy_key.secret))
    assert await _code_of(read) == grpc.StatusCode.PERMISSION_DENIED
    # A WRITE-only key has neither READ nor PROXY.
    write_only = prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="p", inputs={"n": "y"}), metadata=bearer(writer.secret)
    )
    assert await _code_of(write_only) == grpc.StatusCode.PERMISSION_DENIED

    missing_org = await _violations_of(
        prompts_stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="p"), metadata=service_metadata(SERVICE_TOKEN))
    )
    assert set(missing_org) == {"organization_id"}
    cross = prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="p", inputs={"n": "y"}, organization_id=organization_id),
        metadata=bearer(other),
    )
    assert await _code_of(cross) == grpc.StatusCode.PERMISSION_DENIED
    unknown = prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="nope", organization_id=organization_id),
        metadata=service_metadata(SERVICE_TOKEN),
    )
    assert await _code_of(unknown) == grpc.StatusCode.NOT_FOUND
    no_credential = prompts_stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="p", organization_id=organization_id))
    assert await _code_of(no_credential) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_revoked_key_is_refused_within_the_cache_ttl(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    organization_id = await create_organization(auth_stub)
    created = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ)
    await prompts_stub.ListPrompts(pb.ListPromptsRequest(), metadata=bearer(created.secret))  # now cached
    await auth_stub.RevokeApiKey(
        auth_pb.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=service_metadata(SERVICE_TOKEN)
    )
    revoked_at = time.monotonic()
    refused: grpc.StatusCode | None = None
    while refused is None:
        try:
            await prompts_stub.ListPrompts(pb.ListPromptsRequest(), metadata=bearer(created.secret))
        except grpc.aio.AioRpcError as err:
            refused = err.code()
        else:
            assert time.monotonic() - revoked_at <= KEY_CACHE_TTL_S + 0.5, "still accepted after the cache TTL"
            await asyncio.sleep(0.05)
    assert refused == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - revoked_at <= KEY_CACHE_TTL_S + 0.5


def _token(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode()


async def test_page_tokens_that_decode_to_unusable_positions_are_invalid_argument(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    """A token is caller input: once its position reached Postgres as is (a NUL, a version no integer
    column holds, a non-ASCII digit) and failed there with INTERNAL."""
    key = await _writer_key(auth_stub)
    await prompts_stub.CreatePrompt(pb.CreatePromptRequest(prompt_id="paged", template="t"), metadata=bearer(key))
    not_ours = "is not a token this method returned"
    for position in ("p:a\x00b", "p:has space", "v:1"):
        listed = prompts_stub.ListPrompts(pb.ListPromptsRequest(page_token=_token(position)), metadata=bearer(key))
        assert await _violations_of(listed) == {"page_token": not_ours}, position
    for position in ("v:99999999999999999999", "v:2147483648", "v:²", "v:0", "v:-1", "p:paged"):
        versions = prompts_stub.ListPromptVersions(
            pb.ListPromptVersionsRequest(prompt_id="paged", page_token=_token(position)), metadata=bearer(key)
        )
        assert await _violations_of(versions) == {"page_token": not_ours}, position
    # The largest version a token can name still pages (there is nothing below it but version 1).
    last = await prompts_stub.ListPromptVersions(
        pb.ListPromptVersionsRequest(prompt_id="paged", page_token=_token("v:2147483647")), metadata=bearer(key)
    )
    assert [v.version for v in last.versions] == [1]


async def test_templates_postgres_cannot_hold_or_json_cannot_parse_are_invalid_argument(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    key = await _writer_key(auth_stub)
    cases = [
        ("Hello\x00{{name}}", pb.TEMPLATE_FORMAT_TEXT, "must not contain NUL (U+0000) characters"),
        ("[" * 100_000, pb.TEMPLATE_FORMAT_CHAT, "nested 2 levels deep ([ then {)"),
        ('[{"role": "user", "content": ' + "[" * 100_000 + "}]", pb.TEMPLATE_FORMAT_CHAT, "nested 2 levels deep"),
    ]
    for template, template_format, problem in cases:
        found = await _violations_of(
            prompts_stub.CreatePrompt(
                pb.CreatePromptRequest(prompt_id="odd", template=template, format=template_format),
                metadata=bearer(key),
            )
        )
        assert list(found) == ["template"], template[:40]
        assert problem in found["template"], found
    # JSON's own escape for U+0000 is text Postgres holds, and renders to the character.
    escaped = await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(
            prompt_id="odd", template='[{"role": "user", "content": "a\\u0000b"}]', format=pb.TEMPLATE_FORMAT_CHAT
        ),
        metadata=bearer(key),
    )
    assert escaped.prompt.version == 1
    rendered = await prompts_stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="odd"), metadata=bearer(key))
    assert [m.content for m in rendered.messages] == ["a\x00b"]


async def test_ids_with_a_trailing_newline_are_refused(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    """``$`` matches before a final newline: the id patterns must match the whole text."""
    key = await _writer_key(auth_stub)
    found = await _violations_of(
        prompts_stub.CreatePrompt(
            pb.CreatePromptRequest(prompt_id="nl\n", template="t", environment="prod\n"), metadata=bearer(key)
        )
    )
    assert set(found) == {"prompt_id", "environment"}


async def test_inputs_above_the_bound_every_log_keeps_are_refused(
    prompts_stub: prompts_service_pb2_grpc.PromptsServiceAsyncStub,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> None:
    """The bound is the proxy's and ingest's (MAX_PROMPT_INPUTS_BYTES), in UTF-8 bytes, not characters."""
    key = await _writer_key(auth_stub)
    await prompts_stub.CreatePrompt(
        pb.CreatePromptRequest(prompt_id="doc", template="Sum up: {{d}}"), metadata=bearer(key)
    )
    fits = "é" * ((MAX_PROMPT_INPUTS_BYTES - 1) // 2)
    rendered = await prompts_stub.RenderPrompt(
        pb.RenderPromptRequest(prompt_id="doc", inputs={"d": fits}), metadata=bearer(key)
    )
    assert rendered.text == f"Sum up: {fits}"
    # Fewer characters than the bound, but more bytes.
    too_big = "é" * (MAX_PROMPT_INPUTS_BYTES // 2)
    problems = await _violations_of(
        prompts_stub.RenderPrompt(pb.RenderPromptRequest(prompt_id="doc", inputs={"d": too_big}), metadata=bearer(key))
    )
    assert problems == {"inputs": f"must total at most {MAX_PROMPT_INPUTS_BYTES} bytes (names and values, UTF-8)"}
