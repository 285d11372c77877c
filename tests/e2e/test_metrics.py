"""Every service exposes Prometheus metrics that move, by the right amounts, with the traffic it handles.

Metrics are process-wide, not per organization, and the stack is shared by the whole session, so each test
measures deltas around its own traffic: it waits until the log pipeline is idle, scrapes, sends a known
amount of traffic, waits until the pipeline is idle again, and scrapes again (pytest runs tests serially).
"""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anthropic
import boto3
import botocore.config
import grpc
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from candela.ingest.v1 import ingest_service_pb2, ingest_service_pb2_grpc
from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_runtime.security import service_metadata
from candela_stack.fake_provider.bedrock import FAKE_ACCESS_KEY_PREFIX, fake_secret_access_key
from candela_stack.stack import Bootstrap, Component, Stack
from tests.e2e.conftest import bearer, wait_for_logged_request
from tests.factories import ingest_record

pytestmark = pytest.mark.e2e

INGEST_METHOD = "/candela.ingest.v1.IngestService/Ingest"
GET_REQUEST_METHOD = "/candela.query.v1.QueryService/GetRequest"
QUERY_METHOD = "/candela.query.v1.QueryService/QueryRequests"
AUTH_METHOD = "/candela.auth.v1.AuthService/Authenticate"
SERVICES = (Component.PROXY, Component.AUTH, Component.INGEST, Component.QUERY, Component.WRITER)
# What keeps changing while logs are still travelling proxy -> ingest -> Kafka -> writer.
PIPELINE_COUNTERS = (
    (Component.PROXY, "candela_proxy_logs_sent_total"),
    (Component.PROXY, "candela_proxy_logs_spooled_total"),
    (Component.INGEST, "candela_ingest_records_accepted_total"),
    (Component.WRITER, "candela_writer_rows_inserted_total"),
    (Component.WRITER, "candela_writer_batches_committed_total"),
)
BEDROCK_ACCESS_KEY = FAKE_ACCESS_KEY_PREFIX + "METRICS001"
# Longer than the proxy's flush interval (0.2 s) plus the writer's batch wait (0.5 s) and a store round trip.
QUIET_S = 1.5


@dataclass(frozen=True)
class Scrape:
    """One scrape of one service's /metrics."""

    samples: tuple[Sample, ...]

    def select(self, name: str, **labels: str) -> list[Sample]:
        """The samples named ``name`` whose labels include ``labels``."""
        return [s for s in self.samples if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the selected samples (0 when the series does not exist yet)."""
        return sum(sample.value for sample in self.select(name, **labels))


def _scrape_urls(stack: Stack, component: Component) -> list[str]:
    """Where ``component`` serves /metrics: one URL per process (the writer may run several)."""
    if component is Component.PROXY:
        return [f"{stack.proxy_url}/metrics"]
    if component is Component.WRITER:
        return [f"http://127.0.0.1:{port}/metrics" for port in stack.writer_metrics_ports()]
    return [f"http://127.0.0.1:{stack.metrics_ports()[component]}/metrics"]


def _scrape(stack: Stack, component: Component) -> Scrape:
    """Every process of ``component`` scraped; each sample labelled with its process (``instance``), so a
    total is the sum over the processes and a per-process series (a partition's lag gauge) stays apart."""
    samples: list[Sample] = []
    for instance, url in enumerate(_scrape_urls(stack, component)):
        response = httpx.get(url, timeout=5)
        response.raise_for_status()
        for family in text_string_to_metric_families(response.text):
            samples.extend(s._replace(labels={**s.labels, "instance": str(instance)}) for s in family.samples)
    return Scrape(tuple(samples))


def _snapshot(stack: Stack) -> dict[Component, Scrape]:
    return {component: _scrape(stack, component) for component in SERVICES}


def _settled(stack: Stack, timeout_s: float = 60.0) -> dict[Component, Scrape]:
    """A snapshot taken once the pipeline counters stood still for QUIET_S and the proxy's queue is empty."""
    deadline = time.monotonic() + timeout_s
    previous: tuple[float, ...] | None = None
    while True:
        snapshot = _snapshot(stack)
        pipeline = tuple(snapshot[component].value(name) for component, name in PIPELINE_COUNTERS)
        if pipeline == previous and snapshot[Component.PROXY].value("candela_proxy_log_queue_depth") == 0:
            return snapshot
        assert time.monotonic() < deadline, f"the log pipeline did not settle: {pipeline}"
        previous = pipeline
        time.sleep(QUIET_S)


class Deltas:
    """How much each series moved between two snapshots."""

    def __init__(self, before: dict[Component, Scrape], after: dict[Component, Scrape]) -> None:
        self.before = before
        self.after = after

    def __call__(self, component: Component, name: str, **labels: str) -> float:
        return self.after[component].value(name, **labels) - self.before[component].value(name, **labels)


def _client(stack: Stack, candela_key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1",
        api_key="sk-provider-key-never-stored",
        default_headers={"Candela-Auth": f"Bearer {candela_key}"},
        max_retries=0,
    )


def _send_chat_traffic(client: openai.OpenAI, succeeding: int) -> list[str]:
    """``succeeding`` chat completions, then one the provider refuses with 400; the Candela ids of all."""
    request_ids = []
    for index in range(succeeding):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"metrics {index}"}]
        )
        assert raw.parse().choices[0].message.content
        request_ids.append(raw.headers["candela-id"])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "refused"}],
            extra_headers={"x-fake-status": "400"},
        )
    request_ids.append(refused.value.response.headers["candela-id"])
    return request_ids


def test_a_known_amount_of_traffic_moves_every_service_counter_by_that_amount(
    stack: Stack,
    admin: Bootstrap,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    closing: contextlib.ExitStack,
) -> None:
    client = closing.enter_context(_client(stack, admin.api_key))
    before = _settled(stack)

    request_ids = _send_chat_traffic(client, succeeding=4)
    for request_id in request_ids:
        wait_for_logged_request(query_stub, admin.api_key, request_id)
    with pytest.raises(grpc.RpcError) as unknown_key:
        query_stub.QueryRequests(
            query_service_pb2.QueryRequestsRequest(), metadata=bearer(f"cdl_{secrets.token_hex(16)}"), timeout=5
        )
    assert unknown_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    after = _settled(stack)
    delta = Deltas(before, after)
    logged = len(request_ids)

    # Proxy: requests by provider and status class, every log acknowledged by ingest, nothing spooled or lost.
    chat = {"provider": "openai", "endpoint": "/v1/chat/completions"}
    assert delta(Component.PROXY, "candela_proxy_requests_total", **chat, status="2xx") == logged - 1
    assert delta(Component.PROXY, "candela_proxy_requests_total", **chat, status="4xx") == 1
    assert delta(Component.PROXY, "candela_proxy_request_duration_seconds_count", endpoint=chat["endpoint"]) == logged
    assert delta(Component.PROXY, "candela_proxy_logs_sent_total") == logged
    assert delta(Component.PROXY, "candela_proxy_logs_spooled_total") == 0
    assert delta(Component.PROXY, "candela_proxy_logs_dropped_total") == 0
    assert delta(Component.PROXY, "candela_proxy_overhead_seconds_count") == logged
    assert after[Component.PROXY].value("candela_proxy_log_queue_depth") == 0

    # Ingest: every record accepted once, in however many calls the proxy batched them; one S3 object per call
    # (one organization); each call timed against Kafka; nothing refused; every batch read in C (the proxy's
    # records are valid, with canonical ids).
    calls = delta(Component.INGEST, "candela_grpc_server_handled_total", grpc_method=INGEST_METHOD, grpc_code="OK")
    assert 1 <= calls <= logged
    assert delta(Component.INGEST, "candela_grpc_server_handled_total", grpc_method=INGEST_METHOD) == calls
    assert delta(Component.INGEST, "candela_ingest_records_accepted_total") == logged
    assert delta(Component.INGEST, "candela_ingest_batch_records_sum") == logged
    assert delta(Component.INGEST, "candela_ingest_batch_records_count") == calls
    assert delta(Component.INGEST, "candela_ingest_batch_objects_sum") == calls
    assert delta(Component.INGEST, "candela_ingest_batch_body_bytes_sum") > 0
    assert delta(Component.INGEST, "candela_ingest_kafka_produce_seconds_count", kind="logs") == calls
    assert delta(Component.INGEST, "candela_ingest_s3_put_seconds_count") == calls
    assert delta(Component.INGEST, "candela_ingest_records_refused_total") == 0
    assert delta(Component.INGEST, "candela_ingest_batches_read_total", reader="c") == calls, (
        "the proxy's logs read in C"
    )
    assert delta(Component.INGEST, "candela_ingest_store_failures_total") == 0

    # Writer: one row and one usage count per log, batch sizes adding up to the logs, no dead letter.
    logs_topic = stack.kafka_topic
    batches = delta(Component.WRITER, "candela_writer_batches_committed_total", topic=logs_topic)
    assert 1 <= batches <= logged
    assert delta(Component.WRITER, "candela_writer_batch_messages_sum", topic=logs_topic) == logged
    assert delta(Component.WRITER, "candela_writer_batch_messages_count", topic=logs_topic) == batches
    assert delta(Component.WRITER, "candela_writer_batch_bytes_sum", topic=logs_topic) > 0
    assert delta(Component.WRITER, "candela_writer_rows_inserted_total", table="requests") == logged
    assert delta(Component.WRITER, "candela_writer_usage_counted_total") == logged
    assert delta(Component.WRITER, "candela_writer_dead_letters_total") == 0
    assert delta(Component.WRITER, "candela_writer_dead_letters_parked_total") == 0
    assert delta(Component.WRITER, "candela_writer_store_errors_total") == 0
    assert delta(Component.WRITER, "candela_writer_retries_total") == 0
    assert delta(Component.WRITER, "candela_writer_commits_failed_total") == 0
    # The partitions committed since `before` (their gauge moved) report a lag of a second or so.
    lag_name = "candela_writer_commit_lag_seconds"
    lags_before = {
        (lag.labels["instance"], lag.labels["partition"]): lag.value
        for lag in before[Component.WRITER].select(lag_name, topic=logs_topic)
    }
    fresh = [
        lag
        for lag in after[Component.WRITER].select(lag_name, topic=logs_topic)
        if lags_before.get((lag.labels["instance"], lag.labels["partition"])) != lag.value
    ]
    assert fresh, "a commit of the log topic reports its lag"
    assert all(0 <= lag.value < 10 for lag in fresh), [(lag.labels, lag.value) for lag in fresh]

    # Query: exactly one successful GetRequest per log (the polls before it are NOT_FOUND), and the unknown
    # key counted under its status code, by query and by auth (a key never seen is not in any cache).
    assert (
        delta(Component.QUERY, "candela_grpc_server_handled_total", grpc_method=GET_REQUEST_METHOD, grpc_code="OK")
        == logged
    )
    assert (
        delta(
            Component.QUERY, "candela_grpc_server_handled_total", grpc_method=QUERY_METHOD, grpc_code="UNAUTHENTICATED"
        )
        == 1
    )
    assert (
        delta(Component.AUTH, "candela_grpc_server_handled_total", grpc_method=AUTH_METHOD, grpc_code="UNAUTHENTICATED")
        == 1
    )


def _ingest_item(organization_id: str, **properties: str) -> ingest_service_pb2.IngestRecord:
    return ingest_record(
        organization_id=organization_id,
        api_key_id=str(uuid.uuid4()),
        provider="openai",
        model="gpt-4o-mini",
        path="/v1/chat/completions",
        status_code=200,
        properties=properties,
        created_at=datetime.now(UTC),
        request_body=b'{"messages": []}',
    )


def test_ingest_counts_the_records_it_refuses_by_reason(stack: Stack, admin: Bootstrap) -> None:
    unknown_organization = str(uuid.uuid4())
    refusals = {
        "unknown_organization": [_ingest_item(unknown_organization), _ingest_item(unknown_organization)],
        "invalid": [ingest_service_pb2.IngestRecord()],  # no record at all
        # Metadata over the 256 KiB limit (it travels through Kafka, whose messages are capped at 1 MiB).
        "over_limit": [_ingest_item(admin.organization_id, note="x" * 300_000)],
    }
    before = _scrape(stack, Component.INGEST)
    with grpc.insecure_channel(stack.ingest_addr) as channel:
        ingest = ingest_service_pb2_grpc.IngestServiceStub(channel)
        for records in refusals.values():
            with pytest.raises(grpc.RpcError) as refused:
                ingest.Ingest(
                    ingest_service_pb2.IngestRequest(records=records),
                    metadata=service_metadata(stack.service_token),
                    timeout=10,
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    delta = Deltas({Component.INGEST: before}, {Component.INGEST: _scrape(stack, Component.INGEST)})

    for reason, records in refusals.items():
        assert delta(Component.INGEST, "candela_ingest_records_refused_total", reason=reason) == len(records), reason
    invalid_calls = delta(
        Component.INGEST, "candela_grpc_server_handled_total", grpc_method=INGEST_METHOD, grpc_code="INVALID_ARGUMENT"
    )
    assert invalid_calls == len(refusals)


def _handled(stack: Stack, component: Component, method: str) -> float:
    return _scrape(stack, component).value("candela_grpc_server_handled_total", grpc_method=method)


def test_query_and_auth_count_the_calls_they_serve(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    queries_before = _handled(stack, Component.QUERY, QUERY_METHOD)
    for _ in range(3):
        query_stub.QueryRequests(query_service_pb2.QueryRequestsRequest(), metadata=bearer(admin.api_key), timeout=5)
    assert _handled(stack, Component.QUERY, QUERY_METHOD) == queries_before + 3
    # The query service resolved the key through auth at least once (then from its short cache).
    assert _handled(stack, Component.AUTH, AUTH_METHOD) >= 1


@pytest.mark.parametrize(
    "component", [Component.AUTH, Component.PROMPTS, Component.INGEST, Component.QUERY, Component.WRITER]
)
def test_each_service_serves_metrics(stack: Stack, component: Component) -> None:
    for url in _scrape_urls(stack, component):
        response = httpx.get(url, timeout=5)
        assert response.status_code == 200
        assert "process_resident_memory_bytes" in response.text


def test_every_writer_process_serves_its_own_metrics_port(stack: Stack) -> None:
    """Each writer process has its own endpoint (one per configured writer, none shared)."""
    ports = stack.writer_metrics_ports()
    assert len(ports) == stack.config.writers == len(stack.processes_of(Component.WRITER))
    assert len(set(ports)) == len(ports)
    assert all(process.running() for process in stack.processes_of(Component.WRITER))


def test_the_writer_serves_its_own_metrics(stack: Stack) -> None:
    """The writer answers no RPC, so its endpoint must carry the writer's families, not just the process's."""
    for url in _scrape_urls(stack, Component.WRITER):
        text = httpx.get(url, timeout=5).text
        families = {family.name: family.type for family in text_string_to_metric_families(text)}
        assert {
            "candela_writer_batch_messages": "histogram",
            "candela_writer_rows_inserted": "counter",
            "candela_writer_dead_letters": "counter",
            "candela_writer_dead_letters_parked": "counter",
            "candela_writer_commit_lag_seconds": "gauge",
        }.items() <= families.items()


def test_the_proxy_counts_the_requests_it_refuses_by_endpoint(stack: Stack) -> None:
    before = _scrape(stack, Component.PROXY)
    with httpx.Client(base_url=stack.gateway_url, timeout=10) as http:
        unknown_key = http.post(
            "/v1/chat/completions",
            headers={"Candela-Auth": f"Bearer cdl_{secrets.token_hex(16)}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        )
        unknown_route = http.post("/not-a-provider/v1/chat", json={})
    assert (unknown_key.status_code, unknown_route.status_code) == (401, 404)
    after = _scrape(stack, Component.PROXY)

    def moved(**labels: str) -> float:
        name = "candela_proxy_requests_total"
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved(provider="openai", endpoint="/v1/chat/completions", status="4xx") == 1
    assert moved(provider="openai", endpoint="other", status="4xx") == 1
    assert moved(status="2xx") == 0
    # Refused requests never reached a provider: no end-to-end duration was recorded for them.
    duration = "candela_proxy_request_duration_seconds_count"
    assert after.value(duration) == before.value(duration)


def test_every_providers_requests_count_under_a_bounded_endpoint_label(
    stack: Stack, admin: Bootstrap, closing: contextlib.ExitStack
) -> None:
    """Gemini, Vertex AI, Bedrock, Azure and the named providers, each through its own SDK: counted under
    the method, operation or OpenAI path they are, never "other" and never a model id or a deployment."""
    candela = {"Candela-Auth": f"Bearer {admin.api_key}"}
    gemini = closing.enter_context(
        genai.Client(
            api_key="AIza-metrics",
            http_options=types.HttpOptions(base_url=f"{stack.gateway_url}/gemini", headers=candela),
        )
    )
    unknown_key = closing.enter_context(
        genai.Client(
            api_key="AIza-metrics",
            http_options=types.HttpOptions(
                base_url=f"{stack.gateway_url}/gemini", headers={"Candela-Auth": f"Bearer cdl_{secrets.token_hex(16)}"}
            ),
        )
    )
    vertex = closing.enter_context(
        anthropic.AnthropicVertex(
            region="us-east5",
            project_id="metrics-project",
            access_token="ya29.metrics",
            base_url=f"{stack.gateway_url}/vertex/v1",
            default_headers=candela,
            max_retries=0,
        )
    )
    azure = closing.enter_context(
        openai.AzureOpenAI(
            azure_endpoint=f"{stack.gateway_url}/azure",
            api_version="2024-10-21",
            api_key="azure-metrics",
            default_headers=candela,
            max_retries=0,
        )
    )
    groq = closing.enter_context(
        openai.OpenAI(
            base_url=f"{stack.gateway_url}/groq/openai/v1", api_key="groq", default_headers=candela, max_retries=0
        )
    )
    bedrock = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=f"{stack.gateway_url}/bedrock",
        aws_access_key_id=BEDROCK_ACCESS_KEY,
        aws_secret_access_key=fake_secret_access_key(BEDROCK_ACCESS_KEY),
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )
    closing.callback(bedrock.close)

    def add_headers(request: Any, **_: Any) -> None:
        request.headers["Candela-Auth"] = f"Bearer {admin.api_key}"
        request.headers["Candela-Aws-Access-Key-Id"] = BEDROCK_ACCESS_KEY
        request.headers["Candela-Aws-Secret-Access-Key"] = fake_secret_access_key(BEDROCK_ACCESS_KEY)

    bedrock.meta.events.register("before-sign.bedrock-runtime.*", add_headers)
    before = _settled(stack)

    assert gemini.models.generate_content(model="gemini-2.5-flash", contents="metrics").text
    assert list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="metrics"))
    assert gemini.models.count_tokens(model="gemini-2.5-flash", contents="metrics").total_tokens
    claude = "claude-sonnet-4-5@20250929"
    assert vertex.messages.create(model=claude, max_tokens=10, messages=[{"role": "user", "content": "metrics"}])
    messages: Any = [{"role": "user", "content": [{"text": "metrics"}]}]
    assert bedrock.converse(modelId="amazon.nova-lite-v1:0", messages=messages)["output"]
    assert list(bedrock.converse_stream(modelId="amazon.nova-lite-v1:0", messages=messages)["stream"])
    chat: Any = [{"role": "user", "content": "metrics"}]
    assert azure.chat.completions.create(model="prod-chat", messages=chat).choices
    assert groq.chat.completions.create(model="llama-3.3-70b-versatile", messages=chat).choices
    with pytest.raises(genai_errors.ClientError):
        unknown_key.models.generate_content(model="gemini-2.5-flash", contents="refused")

    after = _settled(stack)
    delta = Deltas(before, after)
    served = {
        ("google", "generateContent"): 1,
        ("google", "streamGenerateContent"): 1,
        ("google", "countTokens"): 1,
        ("google-vertex", "rawPredict"): 1,
        ("aws", "converse"): 1,
        ("aws", "converse-stream"): 1,
        ("azure", "/v1/chat/completions"): 1,
        ("groq", "/v1/chat/completions"): 1,
    }
    for (provider, endpoint), count in served.items():
        moved = delta(
            Component.PROXY, "candela_proxy_requests_total", provider=provider, endpoint=endpoint, status="2xx"
        )
        assert (provider, endpoint, moved) == (provider, endpoint, count)
    assert delta(Component.PROXY, "candela_proxy_requests_total", endpoint="generateContent", status="4xx") == 1
    assert delta(Component.PROXY, "candela_proxy_requests_total", endpoint="other") == 0
    assert delta(Component.PROXY, "candela_proxy_request_duration_seconds_count", endpoint="converse-stream") == 1
    labels = {sample.labels["endpoint"] for sample in after[Component.PROXY].select("candela_proxy_requests_total")}
    assert not any("gemini-" in label or "nova" in label or "prod-chat" in label for label in labels), labels
