"""One trace per LLM request, across every process: a stack of its own exports its spans (OTLP/gRPC) to a
receiver this test runs, and the span tree of one chat completion sent with the real openai SDK and a
client `traceparent` is checked hop by hop: Envoy, the proxy's LLM span (with the GenAI attributes), the
key check in auth, the shipping of the log to ingest, and the writer's batch with its Postgres and
ClickHouse spans. The proxy's GenAI client metrics reach the same receiver. No span carries a key."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import grpc
import openai
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack, StackConfig
from tests.e2e.conftest import wait_for_logged_request
from tests.e2e.otlp_support import ReceivedSpan, SpanKind, SpanReceiver, otlp_receiver

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-provider-key-never-in-a-span"
AUTHENTICATE = "/candela.auth.v1.AuthService/Authenticate"
INGEST = "/candela.ingest.v1.IngestService/Ingest"


@pytest.fixture(scope="module")
def receiver() -> Iterator[SpanReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, receiver: SpanReceiver) -> Iterator[Stack]:
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("traced-stack"), otlp_endpoint=receiver.endpoint, otlp_flush_interval_ms=200
    )
    with Stack(config) as running:
        yield running


@pytest.fixture(scope="module")
def traced_admin(traced_stack: Stack) -> Bootstrap:
    return traced_stack.bootstrap()


@pytest.fixture(scope="module")
def traced_query(traced_stack: Stack) -> Iterator[query_service_pb2_grpc.QueryServiceStub]:
    with grpc.insecure_channel(traced_stack.gateway_addr) as channel:
        yield query_service_pb2_grpc.QueryServiceStub(channel)


class Trace:
    """The spans of one trace id, looked up the way the assertions read."""

    def __init__(self, spans: list[ReceivedSpan]) -> None:
        self.spans = spans
        self.by_id = {span.span_id: span for span in spans}

    def one(self, service: str, name: str, kind: int | None = None) -> ReceivedSpan:
        found = [
            span
            for span in self.spans
            if span.service == service and span.name == name and (kind is None or span.kind == kind)
        ]
        assert len(found) == 1, f"expected one {service} span {name!r}, got {len(found)}: {self.names()}"
        return found[0]

    def parent_of(self, span: ReceivedSpan) -> ReceivedSpan:
        assert span.parent_span_id in self.by_id, f"the parent of {span.service} {span.name!r} is not in the trace"
        return self.by_id[span.parent_span_id]

    def names(self) -> list[tuple[str, str]]:
        return sorted((span.service, span.name) for span in self.spans)


def _client(stack: Stack, candela_key: str, traceparent: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key=PROVIDER_KEY,
        default_headers={"Candela-Auth": f"Bearer {candela_key}", "traceparent": traceparent},
        max_retries=0,
    )


def _new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _complete_trace(receiver: SpanReceiver, trace_id: str, *also: tuple[str, str]) -> Trace:
    """Waits until the trace holds the spans of every process, and the ``also`` (service, name) ones.

    The writer's batch span is the last to end (after its inserts, the ledger and the offset commit); its
    children may be exported in an earlier export batch, so the wait is for the batch span itself."""
    wanted = {
        ("candela-proxy", "chat gpt-4o-mini"),
        ("candela-proxy", "send ingest"),
        ("candela-ingest", INGEST),
        ("candela-writer", "clickhouse.insert"),
        ("candela-writer", "writer.batch"),
        *also,
    }

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [span for span in spans if span.trace_id == trace_id]
        return wanted <= {(span.service, span.name) for span in ours} and any(
            span.service == "candela-gateway" for span in ours
        )

    spans = receiver.wait_for(f"complete trace {trace_id}", complete)
    return Trace([span for span in spans if span.trace_id == trace_id])


def _assert_no_secret_in_any_span(receiver: SpanReceiver, *secrets_: str) -> None:
    for span in receiver.spans:
        text = repr((span.name, span.attributes, span.events))
        for secret in secrets_:
            assert secret not in text, f"a secret is in the {span.service} span {span.name!r}"


def test_one_chat_completion_is_one_trace_from_the_client_to_the_writer(
    traced_stack: Stack,
    traced_admin: Bootstrap,
    traced_query: query_service_pb2_grpc.QueryServiceStub,
    receiver: SpanReceiver,
    closing: contextlib.ExitStack,
) -> None:
    traceparent, trace_id, client_span_id = _new_traceparent()
    client = closing.enter_context(_client(traced_stack, traced_admin.api_key, traceparent))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Trace this request please"}],
        max_tokens=4,
        temperature=0.5,
        top_p=0.9,
    )
    completion = raw.parse()
    assert completion.usage is not None
    request_id = raw.headers["candela-id"]
    logged = wait_for_logged_request(traced_query, traced_admin.api_key, request_id).request
    assert logged.trace_id == trace_id, "the log names the trace it is part of"
    spans = _complete_trace(receiver, trace_id, ("candela-auth", AUTHENTICATE))

    # Envoy continues the client's trace; the proxy's LLM span is its child.
    envoy = next(span for span in spans.spans if span.service == "candela-gateway")
    assert envoy.parent_span_id == client_span_id
    llm = spans.one("candela-proxy", "chat gpt-4o-mini", SpanKind.SPAN_KIND_CLIENT)
    assert spans.parent_of(llm) is envoy

    # The current GenAI semantic-convention attributes (not the deprecated gen_ai.system): what the request
    # asked for and what the provider answered.
    assert "gen_ai.system" not in llm.attributes
    assert llm.attributes["gen_ai.provider.name"] == "openai"
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm.attributes["gen_ai.request.max_tokens"] == 4
    assert llm.attributes["gen_ai.request.temperature"] == 0.5
    assert llm.attributes["gen_ai.request.top_p"] == 0.9
    assert llm.attributes["gen_ai.request.stream"] is False
    assert llm.attributes["gen_ai.response.id"] == completion.id
    assert llm.attributes["gen_ai.response.model"] == completion.model
    assert llm.attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert llm.attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert llm.attributes["gen_ai.usage.cache_read.input_tokens"] == 0
    assert llm.attributes["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]
    assert completion.choices[0].finish_reason == "length", "max_tokens=4 cuts the fake provider's reply"
    assert llm.attributes["server.address"] == "127.0.0.1"
    assert llm.attributes["candela.request_id"] == request_id

    # The GenAI client metrics: this call's tokens by type, and its duration.
    prompt_tokens = completion.usage.prompt_tokens
    tokens = receiver.metrics.wait_for(
        "input token usage",
        lambda point: (
            point.service == "candela-proxy"
            and point.metric == "gen_ai.client.token.usage"
            and point.attributes.get("gen_ai.token.type") == "input"
            and point.attributes.get("gen_ai.request.model") == "gpt-4o-mini"
            and point.sum >= prompt_tokens
        ),
    )
    assert tokens.unit == "{token}"
    assert tokens.attributes["gen_ai.provider.name"] == "openai"
    assert tokens.attributes["gen_ai.operation.name"] == "chat"
    assert tokens.explicit_bounds[:3] == (1.0, 4.0, 16.0)
    duration = receiver.metrics.wait_for(
        "operation duration",
        lambda point: point.service == "candela-proxy" and point.metric == "gen_ai.client.operation.duration",
    )
    assert duration.unit == "s"
    assert duration.count >= 1
    assert duration.sum > 0

    # The key check: proxy client span under the LLM span, auth's server span under that.
    auth_client = spans.one("candela-proxy", AUTHENTICATE, SpanKind.SPAN_KIND_CLIENT)
    assert spans.parent_of(auth_client) is llm
    auth_server = spans.one("candela-auth", AUTHENTICATE, SpanKind.SPAN_KIND_SERVER)
    assert spans.parent_of(auth_server) is auth_client

    # Shipping the log (later, in a batch): its span's parent is the request; ingest's spans follow.
    ship = spans.one("candela-proxy", "send ingest", SpanKind.SPAN_KIND_PRODUCER)
    assert spans.parent_of(ship) is llm
    assert ship.attributes["messaging.batch.message_count"] == 1
    ingest_client = spans.one("candela-proxy", INGEST, SpanKind.SPAN_KIND_CLIENT)
    assert spans.parent_of(ingest_client) is ship
    ingest_server = spans.one("candela-ingest", INGEST, SpanKind.SPAN_KIND_SERVER)
    assert spans.parent_of(ingest_server) is ingest_client
    for step in ("ingest.store_bodies", "ingest.produce"):
        assert spans.parent_of(spans.one("candela-ingest", step)) is ingest_server

    # The writer continues the request's trace from the Kafka headers; its stores are under its batch.
    batch = spans.one("candela-writer", "writer.batch", SpanKind.SPAN_KIND_CONSUMER)
    assert spans.parent_of(batch) is llm
    postgres = spans.one("candela-writer", "postgres.count_usage")
    assert spans.parent_of(postgres) is batch
    assert postgres.attributes["db.system"] == "postgresql"
    clickhouse = spans.one("candela-writer", "clickhouse.insert")
    # The ClickHouse insert runs inside the Postgres transaction (offsets commit only after both).
    assert spans.parent_of(clickhouse) is postgres
    assert clickhouse.attributes["db.system"] == "clickhouse"

    assert {span.trace_id for span in spans.spans} == {trace_id}
    _assert_no_secret_in_any_span(receiver, traced_admin.api_key, PROVIDER_KEY, traced_stack.service_token)


def test_a_streamed_completion_is_one_trace_too(
    traced_stack: Stack,
    traced_admin: Bootstrap,
    traced_query: query_service_pb2_grpc.QueryServiceStub,
    receiver: SpanReceiver,
    closing: contextlib.ExitStack,
) -> None:
    traceparent, trace_id, client_span_id = _new_traceparent()
    client = closing.enter_context(_client(traced_stack, traced_admin.api_key, traceparent))
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream this traced request"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["candela-id"]
        chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None
    finish_reason = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    logged = wait_for_logged_request(traced_query, traced_admin.api_key, request_id).request
    assert logged.trace_id == trace_id
    spans = _complete_trace(receiver, trace_id)

    envoy = next(span for span in spans.spans if span.service == "candela-gateway")
    assert envoy.parent_span_id == client_span_id
    llm = spans.one("candela-proxy", "chat gpt-4o-mini", SpanKind.SPAN_KIND_CLIENT)
    assert spans.parent_of(llm) is envoy
    assert llm.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert llm.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
    assert llm.attributes["gen_ai.response.finish_reasons"] == [finish_reason]
    assert llm.attributes["gen_ai.request.stream"] is True
    assert llm.attributes["gen_ai.response.id"] == chunks[0].id
    assert 0 < llm.attributes["gen_ai.response.time_to_first_chunk"] < 30
    first_chunk = receiver.metrics.wait_for(
        "time to first chunk",
        lambda point: (
            point.service == "candela-proxy"
            and point.metric == "gen_ai.client.operation.time_to_first_chunk"
            and point.count >= 1
        ),
    )
    assert first_chunk.unit == "s"
    assert first_chunk.sum > 0
    assert spans.parent_of(spans.one("candela-proxy", "send ingest")) is llm
    batch = spans.one("candela-writer", "writer.batch")
    assert spans.parent_of(batch) is llm
    assert spans.parent_of(spans.one("candela-writer", "postgres.count_usage")) is batch
    assert {span.trace_id for span in spans.spans} == {trace_id}
    _assert_no_secret_in_any_span(receiver, traced_admin.api_key, PROVIDER_KEY, traced_stack.service_token)


def test_a_refused_key_is_traced_as_an_error_without_the_key(
    traced_stack: Stack, receiver: SpanReceiver, closing: contextlib.ExitStack
) -> None:
    wrong_key = f"cdl_{secrets.token_hex(16)}"
    traceparent, trace_id, _ = _new_traceparent()
    client = closing.enter_context(_client(traced_stack, wrong_key, traceparent))
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

    def refused(spans: list[ReceivedSpan]) -> bool:
        ours = {(span.service, span.name) for span in spans if span.trace_id == trace_id}
        return {("candela-proxy", "chat /v1/chat/completions"), ("candela-auth", AUTHENTICATE)} <= ours

    spans = Trace([span for span in receiver.wait_for("refused request spans", refused) if span.trace_id == trace_id])
    llm = spans.one("candela-proxy", "chat /v1/chat/completions", SpanKind.SPAN_KIND_CLIENT)
    assert llm.attributes["http.response.status_code"] == 401
    assert llm.attributes["error.type"] == "401"
    assert llm.attributes["gen_ai.provider.name"] == "openai"
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.status_code == trace_pb2.Status.STATUS_CODE_ERROR
    auth_server = spans.one("candela-auth", AUTHENTICATE, SpanKind.SPAN_KIND_SERVER)
    assert spans.parent_of(spans.parent_of(auth_server)) is llm
    _assert_no_secret_in_any_span(receiver, wrong_key, PROVIDER_KEY, traced_stack.service_token)
    for point in receiver.metrics.points:
        for secret in (wrong_key, PROVIDER_KEY, traced_stack.service_token):
            assert secret not in repr(point), f"a secret is in the {point.service} metric {point.metric}"
