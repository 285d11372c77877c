"""Scores and feedback end to end on the real stack: submitted to QueryService (gRPC, and REST through Envoy in
Helicone's shape), stored through ingest -> Kafka -> writer -> ClickHouse, then read back by GetRequest and
QueryRequests, filtered and averaged; with the scope, tenancy and input checks a caller meets."""

from __future__ import annotations

import functools
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.ingest.v1 import ingest_service_pb2 as ingest_pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_runtime.errors import bad_request_violations, rpc_error_status
from candela_runtime.security import service_metadata
from candela_stack.stack import Component, Stack, StackConfig
from tests.factories import ingest_record

pytestmark = pytest.mark.integration

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """The running stack, three logged requests of one organization, and keys of it and of another."""

    stack: Stack
    query: query_service_pb2_grpc.QueryServiceStub
    write_key: str
    read_key: str
    other_write_key: str
    request_ids: list[str]
    """Logged with models gpt-4o-mini, gpt-4o-mini, gpt-4o (in that order)."""


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


def eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 30.0) -> T:
    """``probe()`` once ``done`` says its answer is the awaited one (scores travel through Kafka)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = probe()
        if done(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    components = frozenset({Component.QUERY, Component.INGEST, Component.WRITER, Component.ENVOY})
    with Stack(StackConfig.for_tests(tmp_path_factory.mktemp("scores"), components=components)) as stack:
        admin = stack.bootstrap()
        internal = service_metadata(stack.service_token)
        with (
            grpc.insecure_channel(stack.gateway_addr) as gateway,
            grpc.insecure_channel(stack.ingest_addr) as ingest_channel,
        ):
            auth = auth_service_pb2_grpc.AuthServiceStub(gateway)

            def key(organization_id: str, *scopes: auth_pb.ApiKeyScope.ValueType) -> str:
                request = auth_pb.CreateApiKeyRequest(organization_id=organization_id, name="scores", scopes=scopes)
                secret: str = auth.CreateApiKey(request, metadata=internal).secret
                return secret

            other = auth.CreateOrganization(auth_pb.CreateOrganizationRequest(name="Other"), metadata=internal)
            records = [
                ingest_record(
                    organization_id=admin.organization_id,
                    provider="openai",
                    model=model,
                    path="/v1/chat/completions",
                    status_code=200,
                    latency_ms=100 + index,
                    created_at=datetime.now(UTC) - timedelta(minutes=1),
                )
                for index, model in enumerate(("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"))
            ]
            ingest = ingest_service_pb2_grpc.IngestServiceStub(ingest_channel)
            ingest.Ingest(ingest_pb.IngestRequest(records=records), metadata=internal, timeout=30)
            query = query_service_pb2_grpc.QueryServiceStub(gateway)
            write_key = key(admin.organization_id, auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_WRITE)
            request_ids = [record.record.request_id for record in records]

            def listed(request_id: str) -> int:
                """How many rows QueryRequests lists for the id (the log travels ingest -> Kafka -> writer)."""
                condition = pb.FilterCondition(
                    field="request_id", operator="equals", value=struct_pb2.Value(string_value=request_id)
                )
                request = pb.QueryRequestsRequest(filter=pb.RequestFilter(conditions=[condition]))
                return len(query.QueryRequests(request, metadata=bearer(write_key)).requests)

            for request_id in request_ids:
                assert eventually(functools.partial(listed, request_id), bool) == 1
            yield World(
                stack=stack,
                query=query,
                write_key=write_key,
                read_key=key(admin.organization_id, auth_pb.API_KEY_SCOPE_READ),
                other_write_key=key(other.organization.id, auth_pb.API_KEY_SCOPE_READ, auth_pb.API_KEY_SCOPE_WRITE),
                request_ids=request_ids,
            )


def scores_of(world: World, request_id: str) -> dict[str, float]:
    response = world.query.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=bearer(world.write_key))
    return dict(response.scores)


def rest(world: World, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{world.stack.gateway_url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key or world.write_key}"},
        timeout=30,
    )


def test_feedback_shows_on_the_request_and_the_newest_rating_wins(world: World) -> None:
    first = world.request_ids[0]
    world.query.SubmitFeedback(
        pb.SubmitFeedbackRequest(request_id=first, rating=True), metadata=bearer(world.write_key)
    )
    assert eventually(lambda: scores_of(world, first), bool) == {"feedback": 1.0}
    world.query.SubmitFeedback(
        pb.SubmitFeedbackRequest(request_id=first, rating=False), metadata=bearer(world.write_key)
    )
    assert eventually(lambda: scores_of(world, first), lambda s: s.get("feedback") == 0.0) == {"feedback": 0.0}


def test_scores_over_rest_in_helicones_shape_then_read_filtered_and_averaged(world: World) -> None:
    first, second, third = world.request_ids
    answer = rest(world, f"/v1/request/{first}/feedback", {"rating": False})
    assert answer.status_code == 200, answer.text
    answer = rest(world, f"/v1/request/{second}/score", {"scores": {"accuracy": 0.25, "helpful": True}})
    assert answer.status_code == 200, answer.text
    answer = rest(world, f"/v1/request/{third}/score", {"scores": {"accuracy": 0.75}})
    assert answer.status_code == 200, answer.text
    answer = rest(world, f"/v1/request/{third}/feedback", {"rating": True})
    assert answer.status_code == 200, answer.text

    got = eventually(
        lambda: httpx.get(
            f"{world.stack.gateway_url}/v1/request/{second}",
            headers={"Authorization": f"Bearer {world.write_key}"},
            timeout=30,
        ).json(),
        lambda body: bool(body.get("scores")),
    )
    assert got["scores"] == {"accuracy": 0.25, "helpful": 1}
    eventually(lambda: scores_of(world, third), lambda s: len(s) == 2)
    eventually(lambda: scores_of(world, first), lambda s: s == {"feedback": 0.0})

    def page(*conditions: pb.FilterCondition) -> pb.QueryRequestsResponse:
        request = pb.QueryRequestsRequest(filter=pb.RequestFilter(conditions=conditions))
        response: pb.QueryRequestsResponse = world.query.QueryRequests(request, metadata=bearer(world.write_key))
        return response

    everything = page()
    assert {request_id: dict(entry.scores) for request_id, entry in everything.scores.items()} == {
        first: {"feedback": 0.0},
        second: {"accuracy": 0.25, "helpful": 1.0},
        third: {"accuracy": 0.75, "feedback": 1.0},
    }
    accurate = page(
        pb.FilterCondition(
            field="score", property_key="accuracy", operator="gte", value=struct_pb2.Value(number_value=0.5)
        )
    )
    assert [record.request_id for record in accurate.requests] == [third]
    liked = page(pb.FilterCondition(field="feedback", operator="equals", value=struct_pb2.Value(bool_value=True)))
    assert [record.request_id for record in liked.requests] == [third]

    now = datetime.now(UTC)
    aggregate = pb.AggregateRequestsRequest(group_by=[pb.GROUP_BY_MODEL])
    aggregate.start.FromDatetime(now - timedelta(hours=1))
    aggregate.end.FromDatetime(now + timedelta(minutes=1))
    groups = {
        group.keys[0]: group.metrics
        for group in world.query.AggregateRequests(aggregate, metadata=bearer(world.write_key)).groups
    }
    assert dict(groups["gpt-4o-mini"].score_averages) == {"feedback": 0.0, "accuracy": 0.25, "helpful": 1.0}
    assert dict(groups["gpt-4o-mini"].score_counts) == {"feedback": 1, "accuracy": 1, "helpful": 1}
    assert dict(groups["gpt-4o"].score_averages) == {"feedback": 1.0, "accuracy": 0.75}
    total = pb.AggregateRequestsRequest(start=aggregate.start, end=aggregate.end)
    (overall,) = world.query.AggregateRequests(total, metadata=bearer(world.write_key)).groups
    assert overall.metrics.score_averages["accuracy"] == 0.5
    assert overall.metrics.score_averages["feedback"] == 0.5  # one of the two rated requests is liked


def test_a_read_only_key_may_not_score(world: World) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        world.query.SubmitFeedback(
            pb.SubmitFeedbackRequest(request_id=world.request_ids[0], rating=True), metadata=bearer(world.read_key)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    answer = rest(world, f"/v1/request/{world.request_ids[0]}/score", {"scores": {"x": 1}}, key=world.read_key)
    assert answer.status_code == 403


def test_another_organizations_request_and_an_unknown_one_are_not_found_alike(world: World) -> None:
    before = scores_of(world, world.request_ids[0])
    messages = []
    for request_id in (world.request_ids[0], str(uuid.uuid4())):
        with pytest.raises(grpc.RpcError) as missing:
            world.query.SubmitScores(
                pb.SubmitScoresRequest(request_id=request_id, scores={"intruder": struct_pb2.Value(number_value=1)}),
                metadata=bearer(world.other_write_key),
            )
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        messages.append(str(missing.value.details()).replace(request_id, "<id>"))
    assert messages[0] == messages[1], "the answer must not reveal that the other organization's id exists"
    answer = rest(world, f"/v1/request/{uuid.uuid4()}/feedback", {"rating": True})
    assert answer.status_code == 404
    time.sleep(1.0)  # had the refused score been stored, the writer would have written it by now
    assert scores_of(world, world.request_ids[0]) == before


@pytest.mark.parametrize(
    ("scores", "request_id", "field"),
    [
        ({}, None, "scores"),
        ({"feedback": struct_pb2.Value(number_value=1)}, None, "scores[feedback]"),
        ({"<b>bold</b>": struct_pb2.Value(number_value=1)}, None, "scores[<b>bold</b>]"),
        ({"x" * 129: struct_pb2.Value(number_value=1)}, None, "scores[" + "x" * 64 + "]"),
        ({"accuracy": struct_pb2.Value(string_value="high")}, None, "scores[accuracy]"),
        ({"accuracy": struct_pb2.Value(number_value=math.inf)}, None, "scores[accuracy]"),
        ({"accuracy": struct_pb2.Value(number_value=1)}, "not-a-uuid", "request_id"),
    ],
    ids=["none", "reserved", "markup", "long", "text", "infinite", "bad-id"],
)
def test_bad_scores_are_invalid_argument_naming_the_field(
    world: World, scores: dict[str, struct_pb2.Value], request_id: str | None, field: str
) -> None:
    request = pb.SubmitScoresRequest(request_id=request_id or world.request_ids[0], scores=scores)
    with pytest.raises(grpc.RpcError) as refused:
        world.query.SubmitScores(request, metadata=bearer(world.write_key))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_error_status(refused.value)
    assert status is not None
    assert [violation.field for violation in bad_request_violations(status)] == [field]


def test_bad_scores_over_rest_are_400_with_the_reason(world: World) -> None:
    answer = rest(world, f"/v1/request/{world.request_ids[0]}/score", {"scores": {"accuracy": "high"}})
    assert answer.status_code == 400
    assert "must be a finite number or a bool" in answer.text
