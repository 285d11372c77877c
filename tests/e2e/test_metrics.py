"""Every gRPC service exposes Prometheus metrics that move with the traffic it handles."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from candela.query.v1 import query_service_pb2, query_service_pb2_grpc
from candela_stack.stack import Bootstrap, Component, Stack
from tests.e2e.conftest import bearer

pytestmark = pytest.mark.e2e


def _handled(stack: Stack, component: Component, method: str) -> float:
    port = stack.metrics_ports()[component]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "candela_grpc_server_handled_total" and sample.labels["grpc_method"] == method:
                total += sample.value
    return total


def test_query_and_auth_count_the_calls_they_serve(
    stack: Stack, admin: Bootstrap, query_stub: query_service_pb2_grpc.QueryServiceStub
) -> None:
    query_method = "/candela.query.v1.QueryService/QueryRequests"
    auth_method = "/candela.auth.v1.AuthService/Authenticate"
    queries_before = _handled(stack, Component.QUERY, query_method)
    for _ in range(3):
        query_stub.QueryRequests(query_service_pb2.QueryRequestsRequest(), metadata=bearer(admin.api_key), timeout=5)
    assert _handled(stack, Component.QUERY, query_method) == queries_before + 3
    # The query service resolved the key through auth at least once (then from its short cache).
    assert _handled(stack, Component.AUTH, auth_method) >= 1


@pytest.mark.parametrize(
    "component", [Component.AUTH, Component.PROMPTS, Component.INGEST, Component.QUERY, Component.WRITER]
)
def test_each_service_serves_metrics(stack: Stack, component: Component) -> None:
    response = httpx.get(f"http://127.0.0.1:{stack.metrics_ports()[component]}/metrics", timeout=5)
    assert response.status_code == 200
    assert "process_resident_memory_bytes" in response.text
