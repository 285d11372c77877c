"""The pricing corpus: every provider family x endpoint x (streamed, not) x (with and without usage options),
through the gateway against the fake provider's exact wire formats, each request logged with its tokens
and the cost genai-prices gives for that provider, model and usage; an unknown model of every family is
logged with its tokens, unpriced, and flagged (``priced = false`` finds it, the totals count it).

Raw HTTP, one request per case, as the SDKs send them (the SDKs themselves are driven in the per-provider
modules): this module is about the matrix, so every cell is a row of :data:`CASES` and none is left out.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price
from google.protobuf import struct_pb2, timestamp_pb2

from candela.query.v1 import query_service_pb2 as query_pb
from candela.query.v1 import query_service_pb2_grpc
from candela_proxy.compatible import MEMBERS
from candela_stack.fake_provider.bedrock import FAKE_ACCESS_KEY_PREFIX, fake_secret_access_key
from candela_stack.stack import Bootstrap, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.e2e.test_named_providers import MODELS

pytestmark = pytest.mark.e2e

CHAT = [{"role": "user", "content": "Price me"}]
AWS_KEY = FAKE_ACCESS_KEY_PREFIX + "CORPUS0001"
AWS = {"Candela-Aws-Access-Key-Id": AWS_KEY, "Candela-Aws-Secret-Access-Key": fake_secret_access_key(AWS_KEY)}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Price me"}]}]}
VERTEX = "/vertex/v1/projects/corpus/locations/us-central1/publishers"


@dataclass(frozen=True)
class Case:
    """One cell: a request, and how it must be priced (``price`` is (provider id, model), None: unpriced)."""

    name: str
    path: str
    body: dict[str, Any]
    price: tuple[str, str] | None
    streamed: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    completion: bool = True
    """Whether the answer has output tokens (an embedding has none)."""


def _openai_family(label: str, prefix: str, model: str, price_id: str, *, unasked: bool = False) -> list[Case]:
    """Chat on an OpenAI-format API: not streamed, streamed as most code sends it (no options), and with
    ``include_usage`` true. ``unasked``: the provider reports stream usage without being asked (and takes no
    ``stream_options``)."""
    chat = {"model": model, "messages": CHAT}
    usage = {"x-fake-stream-usage": "unasked"} if unasked else {}
    return [
        Case(f"{label}-chat", f"{prefix}/chat/completions", chat, (price_id, model)),
        Case(
            f"{label}-chat-stream",
            f"{prefix}/chat/completions",
            {**chat, "stream": True},
            (price_id, model),
            True,
            usage,
        ),
        Case(
            f"{label}-chat-stream-usage",
            f"{prefix}/chat/completions",
            {**chat, "stream": True, "stream_options": {"include_usage": True}},
            (price_id, model),
            True,
            usage,
        ),
    ]


def _cases() -> list[Case]:
    cases = _openai_family("openai", "/v1", "gpt-4o-mini", "openai")
    completion = {"model": "gpt-3.5-turbo-instruct", "prompt": "Price me"}
    instruct = ("openai", "gpt-3.5-turbo-instruct")
    responses = {"model": "gpt-4o-mini", "input": "Price me"}
    cases += [
        Case("openai-completions", "/v1/completions", completion, instruct),
        Case("openai-completions-stream", "/v1/completions", {**completion, "stream": True}, instruct, True),
        Case(
            "openai-completions-stream-usage",
            "/v1/completions",
            {**completion, "stream": True, "stream_options": {"include_usage": True}},
            instruct,
            True,
        ),
        Case("openai-responses", "/v1/responses", responses, ("openai", "gpt-4o-mini")),
        Case(
            "openai-responses-stream", "/v1/responses", {**responses, "stream": True}, ("openai", "gpt-4o-mini"), True
        ),
        Case(
            "openai-embeddings",
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": "Price me"},
            ("openai", "text-embedding-3-small"),
            completion=False,
        ),
    ]
    messages = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": CHAT}
    anthropic = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-corpus"}
    cases += [
        Case(
            "anthropic-messages",
            "/anthropic/v1/messages",
            messages,
            ("anthropic", "claude-haiku-4-5"),
            headers=anthropic,
        ),
        Case(
            "anthropic-messages-stream",
            "/anthropic/v1/messages",
            {**messages, "stream": True},
            ("anthropic", "claude-haiku-4-5"),
            True,
            anthropic,
        ),
    ]
    gemini = "/gemini/v1beta/models/gemini-2.5-flash"
    google = ("google", "gemini-2.5-flash")
    key = {"x-goog-api-key": "AIza-corpus"}
    cases += [
        Case("gemini-generate", f"{gemini}:generateContent", GEMINI_BODY, google, headers=key),
        Case("gemini-stream-sse", f"{gemini}:streamGenerateContent?alt=sse", GEMINI_BODY, google, True, key),
        Case("gemini-stream-array", f"{gemini}:streamGenerateContent", GEMINI_BODY, google, True, key),
        Case(
            "gemini-embed",
            "/gemini/v1beta/models/gemini-embedding-001:embedContent",
            {"content": {"parts": [{"text": "one two three"}]}},
            ("google", "gemini-embedding-001"),
            headers=key,
            completion=False,
        ),
    ]
    cases += _openai_family("gemini-openai", "/gemini/v1beta/openai", "gemini-2.5-flash", "google")
    bearer_token = {"Authorization": "Bearer ya29.corpus"}
    claude_vertex = "claude-sonnet-4-5@20250929"
    vertex_claude = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "messages": CHAT}
    cases += [
        Case(
            "vertex-gemini",
            f"{VERTEX}/google/models/gemini-2.5-flash:generateContent",
            GEMINI_BODY,
            google,
            headers=bearer_token,
        ),
        Case(
            "vertex-gemini-stream",
            f"{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            GEMINI_BODY,
            google,
            True,
            bearer_token,
        ),
        Case(
            "vertex-claude",
            f"{VERTEX}/anthropic/models/{claude_vertex}:rawPredict",
            vertex_claude,
            ("google", claude_vertex),
            headers=bearer_token,
        ),
        Case(
            "vertex-claude-stream",
            f"{VERTEX}/anthropic/models/{claude_vertex}:streamRawPredict",
            {**vertex_claude, "stream": True},
            ("google", claude_vertex),
            True,
            bearer_token,
        ),
    ]
    azure = "/azure/openai/deployments/gpt-4o-mini"
    azure_chat = {"messages": CHAT}
    azure_headers = {"api-key": "azure-corpus-key"}
    cases += [
        Case(
            "azure-chat",
            f"{azure}/chat/completions?api-version=2024-10-21",
            azure_chat,
            ("azure", "gpt-4o-mini"),
            headers=azure_headers,
        ),
        Case(
            "azure-chat-stream",
            f"{azure}/chat/completions?api-version=2024-10-21",
            {**azure_chat, "stream": True},
            ("azure", "gpt-4o-mini"),
            True,
            azure_headers,
        ),
    ]
    nova, claude = "amazon.nova-lite-v1:0", "us.anthropic.claude-3-5-sonnet-20241022-v2:0"
    converse = {"messages": [{"role": "user", "content": [{"text": "Price me"}]}]}
    invoke = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": CHAT}
    cases += [
        Case("bedrock-converse", f"/bedrock/model/{nova}/converse", converse, ("aws", nova), headers=AWS),
        Case("bedrock-converse-stream", f"/bedrock/model/{nova}/converse-stream", converse, ("aws", nova), True, AWS),
        Case("bedrock-invoke", f"/bedrock/model/{claude}/invoke", invoke, ("aws", claude), headers=AWS),
        Case(
            "bedrock-invoke-stream",
            f"/bedrock/model/{claude}/invoke-with-response-stream",
            invoke,
            ("aws", claude),
            True,
            AWS,
        ),
    ]
    for member in MEMBERS:
        if member.price_id:  # vLLM and Ollama have no prices (what they serve is the operator's)
            prefix = f"/{member.name}{member.native_prefix or '/v1'}"
            cases += _openai_family(
                member.name, prefix, MODELS[member.name], member.price_id, unasked=not member.stream_options
            )
    return cases


def _unknown() -> list[Case]:
    """A model genai-prices does not know, in every family: logged with its tokens, unpriced."""
    return [
        Case("unknown-openai", "/v1/chat/completions", {"model": "corpus-unknown-1", "messages": CHAT}, None),
        Case(
            "unknown-anthropic",
            "/anthropic/v1/messages",
            {"model": "claude-corpus-unknown", "max_tokens": 64, "messages": CHAT},
            None,
            headers={"anthropic-version": "2023-06-01", "x-api-key": "k"},
        ),
        Case(
            "unknown-gemini",
            "/gemini/v1beta/models/gemini-corpus-unknown:generateContent",
            GEMINI_BODY,
            None,
            headers={"x-goog-api-key": "k"},
        ),
        Case(
            "unknown-bedrock",
            "/bedrock/model/amazon.corpus-unknown-v1:0/converse",
            {"messages": [{"role": "user", "content": [{"text": "Price me"}]}]},
            None,
            headers=AWS,
        ),
        Case(
            "unknown-groq",
            "/groq/openai/v1/chat/completions",
            {"model": "corpus-unknown-2", "messages": CHAT, "stream": True},
            None,
            True,
        ),
    ]


CASES = _cases()
UNKNOWN = _unknown()


@pytest.fixture(scope="module")
def sent(stack: Stack, admin: Bootstrap) -> tuple[str, dict[str, str]]:
    """Sends every case once (all before any is awaited in the logs); the marker property and the request
    id of each case by name."""
    marker = uuid.uuid4().hex
    ids: dict[str, str] = {}
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        for case in CASES + UNKNOWN:
            headers = {
                "Candela-Auth": f"Bearer {admin.api_key}",
                "Candela-Property-Corpus": marker,
                "Authorization": "Bearer sk-corpus",
                **case.headers,
            }
            with client.stream("POST", case.path, content=json.dumps(case.body), headers=headers) as answer:
                answer.read()
                assert answer.status_code == 200, f"{case.name}: {answer.status_code} {answer.text[:300]}"
                ids[case.name] = answer.headers["candela-id"]
    return marker, ids


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_known_model_is_priced_exactly_from_its_usage(
    case: Case,
    sent: tuple[str, dict[str, str]],
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
) -> None:
    record = wait_for_logged_request(query_stub, admin.api_key, sent[1][case.name]).request
    usage = record.usage
    assert record.streamed == case.streamed
    assert usage.prompt_tokens > 0, "no input tokens logged"
    assert (usage.completion_tokens > 0) == case.completion, "output tokens"
    assert case.price is not None
    provider_id, model = case.price
    expected = calc_price(
        Usage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            cache_read_tokens=usage.cache_read_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        ),
        model_ref=model,
        provider_id=provider_id,
    ).total_price
    assert record.HasField("cost_usd"), f"{case.name} was logged unpriced"
    assert Decimal(record.cost_usd) == expected


def test_unknown_models_are_logged_unpriced_and_flagged(
    sent: tuple[str, dict[str, str]], admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    marker, ids = sent
    for case in UNKNOWN:
        record = wait_for_logged_request(query_stub, admin.api_key, ids[case.name]).request
        assert not record.HasField("cost_usd"), f"{case.name} was priced"
        assert record.usage.prompt_tokens > 0, case.name
        assert record.usage.completion_tokens > 0, case.name
    for case in CASES:  # every request is queryable before the totals are read
        wait_for_logged_request(query_stub, admin.api_key, ids[case.name])

    corpus = query_pb.FilterCondition(
        field="property", property_key="Corpus", operator="equals", value=struct_pb2.Value(string_value=marker)
    )
    unpriced = query_pb.FilterCondition(field="priced", operator="equals", value=struct_pb2.Value(bool_value=False))
    flagged = query_stub.QueryRequests(
        query_pb.QueryRequestsRequest(filter=query_pb.RequestFilter(conditions=[corpus, unpriced]), limit=100),
        metadata=bearer(admin.api_key),
        timeout=10,
    )
    assert sorted(r.request_id for r in flagged.requests) == sorted(ids[case.name] for case in UNKNOWN)

    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    start = timestamp_pb2.Timestamp(seconds=now.seconds - 3600)
    end = timestamp_pb2.Timestamp(seconds=now.seconds + 3600)
    totals = query_stub.AggregateRequests(
        query_pb.AggregateRequestsRequest(start=start, end=end, filter=query_pb.RequestFilter(conditions=[corpus])),
        metadata=bearer(admin.api_key),
        timeout=10,
    )
    (total,) = totals.groups
    assert (total.metrics.request_count, total.metrics.unpriced_count) == (len(CASES) + len(UNKNOWN), len(UNKNOWN))
