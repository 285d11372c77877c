"""The whole mesh, started once per test run by the same launcher `make run` uses."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from genai_prices import Usage, calc_price

from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Stack, StackConfig
from tests.e2e.proxy_support import services, start_proxy


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Postgres, Redis, ClickHouse, SeaweedFS, Tansu, every Candela service, the fake provider and Envoy."""
    with Stack(StackConfig.for_tests(tmp_path_factory.mktemp("stack"))) as running:
        yield running


@pytest.fixture(scope="session")
def admin(stack: Stack) -> Bootstrap:
    """The first organization's all-scopes key, made as `make run` makes it."""
    return stack.bootstrap()


@pytest.fixture(scope="session")
def gateway_channel(stack: Stack) -> Iterator[grpc.Channel]:
    """A gRPC channel to the Envoy gateway."""
    with grpc.insecure_channel(stack.gateway_addr) as channel:
        yield channel


@pytest.fixture(scope="session")
def query_stub(gateway_channel: grpc.Channel) -> query_service_pb2_grpc.QueryServiceStub:
    """QueryService through the gateway."""
    return query_service_pb2_grpc.QueryServiceStub(gateway_channel)


@pytest.fixture(scope="session")
def local_target_proxy(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a proxy of its own whose operator lets custom targets reach the stand-in provider (exactly
    its host:port in CANDELA_TARGET_HOSTS); the stack's proxy, as installed, reaches only public targets. Its
    operator also maps the Azure deployment prod-chat to gpt-4o (CANDELA_AZURE_DEPLOYMENTS)."""
    assert stack.fake_provider_url is not None
    with services() as started:
        proxy, url = start_proxy(
            stack,
            tmp_path_factory.mktemp("local-target-proxy"),
            CANDELA_TARGET_HOSTS=stack.fake_provider_url.removeprefix("http://"),
            CANDELA_AZURE_DEPLOYMENTS="prod-chat=gpt-4o",
        )
        started.append(proxy)
        yield url


@pytest.fixture
def closing() -> Iterator[contextlib.ExitStack]:
    """Closes what a test opens (SDK clients and their connection pools) when it ends."""
    with contextlib.ExitStack() as stack:
        yield stack


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting an API key."""
    return (("authorization", f"Bearer {secret}"),)


def wait_for_logged_request(
    query_stub: query_service_pb2_grpc.QueryServiceStub, api_key: str, request_id: str, timeout_s: float = 30.0
) -> query_service_pb2.GetRequestResponse:
    """Polls GetRequest until the log is queryable (it travels proxy -> ingest -> Kafka -> writer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response: query_service_pb2.GetRequestResponse = query_stub.GetRequest(
                query_service_pb2.GetRequestRequest(request_id=request_id), metadata=bearer(api_key), timeout=5
            )
            return response
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def expected_cost(model: str, provider: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The price genai-prices gives, computed independently of the proxy."""
    usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return calc_price(usage, model_ref=model, provider_id=provider).total_price


async def topic_payloads(stack: Stack, must_see: set[str], timeout_s: float = 20.0) -> list[bytes]:
    """Every message (key, value and headers) on the logs topic, read until ``must_see`` request ids showed."""
    consumer = AIOKafkaConsumer(
        stack.kafka_topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"payloads-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    payloads: list[bytes] = []
    try:
        deadline = time.monotonic() + timeout_s
        unseen = {request_id.encode() for request_id in must_see}
        while unseen and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    payload = b"".join(
                        [record.key or b"", record.value or b"", *(value for _, value in record.headers)]
                    )
                    payloads.append(payload)
                    unseen = {request_id for request_id in unseen if request_id not in payload}
        assert not unseen, "the test's requests never showed on Kafka: checked nothing"
    finally:
        await consumer.stop()
    return payloads
