"""Any input to any RPC, on real stores: a caller's mistake is a caller's status, never our fault.

Hypothesis sends every RPC of every service found in the ``candela`` package's descriptors arbitrary
requests (see tests/rpc_strategies.py: arbitrary field values, and bytes that do not parse), with no
credential, a bad one, a user key or the service credential. No answer may be UNKNOWN, INTERNAL,
DATA_LOSS or UNAVAILABLE (nothing is down here), every INVALID_ARGUMENT carries a BadRequest naming a
field, and every service still answers its health check and a valid call afterwards.

The services run in-process on real Postgres, ClickHouse 18.16, SeaweedFS S3 and a Tansu broker, with a
few logged requests and prompt versions to find. Runs are derandomized (the same examples every run, no
example database), so CI is reproducible; ``max_examples`` bounds each RPC's share of the time.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candela.auth.v1 import auth_service_pb2 as auth_pb
from candela.auth.v1 import auth_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela.prompts.v1 import prompts_service_pb2 as prompts_pb
from candela.prompts.v1 import prompts_service_pb2_grpc
from candela_ingest.app import build_deps as build_ingest_deps
from candela_ingest.app import create_server as create_ingest_server
from candela_ingest.app import wait_until_ready
from candela_ingest.config import IngestConfig
from candela_ingest.writer.rows import clickhouse_row
from candela_prompts.app import build_deps as build_prompts_deps
from candela_prompts.app import create_server as create_prompts_server
from candela_prompts.config import PromptsConfig
from candela_query.app import build_deps as build_query_deps
from candela_query.app import create_server as create_query_server
from candela_query.config import QueryConfig
from candela_query.filters import FIELDS, OPERATORS
from candela_query.row_reads import SORT_COLUMNS
from candela_runtime.errors import bad_request_violations
from candela_runtime.grpc_server import GrpcServer
from candela_runtime.security import service_metadata
from candela_stack.stack import Component, Stack, StackConfig
from tests.conftest import SERVICE_TOKEN
from tests.integration.conftest import AuthServer, bearer, create_key, create_organization
from tests.integration.query_support import BASE_SECONDS, DriverRunner, insert_rows, make_record
from tests.rpc_strategies import Vocabulary, candela_services, method_path, request_bytes

pytestmark = [
    pytest.mark.integration,
    # A falsifying example may hold a 100 kB string; Hypothesis warns that printing it is costly.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

SERVICES = candela_services()
METHODS = [method for service in SERVICES for method in service.methods]
EXAMPLES_PER_RPC = 200
CALL_TIMEOUT_S = 20.0
# Server streams that never end by design (a subscription): their first answer is read, then the call is
# cancelled; the property is about that answer (a status or a first message), not about an end.
SUBSCRIPTIONS = {"/candela.auth.v1.AuthService/WatchPricing", "/candela.auth.v1.AuthService/FollowPricing"}
# Most calls present a valid credential, so most reach the code behind authentication.
CREDENTIALS = ("admin key",) * 3 + ("service credential",) * 2 + ("read key", "none", "unknown key", "basic auth")
OUR_FAULTS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
}


@dataclass
class Mesh:
    """Every service, where it listens, and what a caller may present and name."""

    addresses: dict[str, str]
    credentials: dict[str, tuple[tuple[str, str], ...]]
    vocabulary: Vocabulary = field(default_factory=dict)
    servers: list[GrpcServer] = field(default_factory=list)
    admin_key: str = ""


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """ClickHouse, S3 and Kafka (Postgres is the session's test database)."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp("any-input"),
        components=frozenset({Component.CLICKHOUSE, Component.S3, Component.KAFKA}),
    )
    with Stack(config) as stack:
        yield stack


async def _create_topic(bootstrap: str) -> str:
    topic = f"it.any-input.{secrets.token_hex(4)}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    return topic


def _logged_requests(stores: Stack, organization_id: str) -> list[log_record_pb2.LogRecord]:
    """A few logged requests of the organization (without bodies), stored in ClickHouse."""
    rng = random.Random(11)
    messages = [make_record(rng, organization_id, index) for index in range(40)]
    for message in messages:
        message.ClearField("response_body")
    loader = DriverRunner.of(stores)
    try:
        insert_rows(loader.client, [clickhouse_row(message, version=2) for message in messages])
    finally:
        loader.close()
    return [message.record for message in messages]


@pytest.fixture(scope="module")
async def mesh(
    stores: Stack,
    postgres_dsn: str,
    auth_server: AuthServer,
    auth_stub: auth_service_pb2_grpc.AuthServiceAsyncStub,
) -> AsyncIterator[Mesh]:
    organization_id = await create_organization(auth_stub, "Any Input Co")
    scopes = (auth_pb.API_KEY_SCOPE_ADMIN,)
    admin = await create_key(auth_stub, organization_id, *scopes)
    reader = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_READ)
    # A key the fuzzer may revoke (its id is in the vocabulary; the admin key's is not).
    spare = await create_key(auth_stub, organization_id, auth_pb.API_KEY_SCOPE_PROXY)
    other_organization = await create_organization(auth_stub, "Someone Else")
    mesh = Mesh(
        addresses={auth_pb.DESCRIPTOR.services_by_name["AuthService"].full_name: auth_server.address},
        credentials={
            "none": (),
            "admin key": bearer(admin.secret),
            "read key": bearer(reader.secret),
            "unknown key": bearer("cdl_" + "x" * 40),
            "basic auth": (("authorization", "Basic dXNlcjpwYXNz"),),
            "service credential": service_metadata(SERVICE_TOKEN),
        },
        admin_key=admin.secret,
    )
    logged = _logged_requests(stores, organization_id)
    mesh.vocabulary = {
        "organization_id": [organization_id, other_organization],
        "api_key_id": [spare.api_key.id],
        "prompt_id": ["fuzz-prompt"],
        "environment": ["production", "staging"],
        "template": ["Hello {{name}}", '[{"role": "user", "content": "Hi {{name}}"}]'],
        "key": ["name", "feature"],
        "name": ["Acme"],
        "paths": ["name", "max_stored_logs", "retention_days"],
        "request_id": [record.request_id for record in logged],
        "session_id": sorted({record.session_id for record in logged if record.session_id}),
        "user_id": sorted({record.user_id for record in logged if record.user_id}),
        "field": [*FIELDS, *SORT_COLUMNS],
        "operator": sorted({operator for operators in OPERATORS.values() for operator in operators}),
        "property_key": ["feature", "env", "name"],
        # Times of the logged requests, and the ends of what ClickHouse, Postgres and a Timestamp hold.
        "seconds": [
            BASE_SECONDS,
            BASE_SECONDS + 86_400,
            BASE_SECONDS + 10 * 86_400,
            0,
            2**32 - 1,
            -62_135_596_800,
            253_402_300_799,
        ],
        "nanos": [0, 999_999_999],
        "version": [1, 2],
        "base_version": [1, 2],
        "target_version": [1, 2],
        "limit": [1, 10],
        "page_size": [1, 2],
        # What page tokens encode, besides none (the strategies try these base64-encoded too).
        "page_token": ["", "p:fuzz-prompt", "v:2"],
        "days": [1, 30],
    }
    prompts_config = PromptsConfig(
        service_token=SERVICE_TOKEN, postgres_dsn=postgres_dsn, auth_addr=auth_server.address, grpc_port=0
    )
    query_config = QueryConfig(
        service_token=SERVICE_TOKEN,
        auth_addr=auth_server.address,
        clickhouse_host=stores.clickhouse_host,
        clickhouse_port=stores.clickhouse_port,
        clickhouse_database=stores.clickhouse_database,
        clickhouse_user=stores.clickhouse_user,
        clickhouse_password=stores.clickhouse_password,
        s3_endpoint=stores.s3_endpoint,
        s3_access_key=stores.s3_access_key,
        s3_secret_key=stores.s3_secret_key,
        s3_bucket=stores.s3_bucket,
        postgres_dsn=postgres_dsn,
        grpc_port=0,
    )
    ingest_config = IngestConfig(
        service_token=SERVICE_TOKEN,
        grpc_port=0,
        kafka_bootstrap=stores.kafka_bootstrap,
        kafka_topic=await _create_topic(stores.kafka_bootstrap),
        s3_endpoint=stores.s3_endpoint,
        s3_access_key=stores.s3_access_key,
        s3_secret_key=stores.s3_secret_key,
        s3_bucket=stores.s3_bucket,
        postgres_dsn=postgres_dsn,
    )
    async with (
        build_prompts_deps(prompts_config) as prompts_deps,
        build_ingest_deps(ingest_config) as ingest_deps,
    ):
        prompts = await create_prompts_server(prompts_config, prompts_deps)
        ingest = await create_ingest_server(ingest_config, ingest_deps)
        await wait_until_ready(ingest_config, ingest_deps)
        # Scores go through ingest; an id not visible at once is NOT_FOUND at once (no wait for a log).
        query_config = replace(query_config, ingest_addr=f"127.0.0.1:{ingest.port}", score_wait_s=0.0)
        async with build_query_deps(query_config) as query_deps:
            query = await create_query_server(query_config, query_deps)
            for server in (prompts, query, ingest):
                await server.set_serving()
                for name in server.service_names:
                    mesh.addresses[name] = f"127.0.0.1:{server.port}"
            mesh.servers = [auth_server.server, prompts, query, ingest]
            await _create_prompts(mesh.addresses[prompts.service_names[0]], admin.secret)
            yield mesh
            for server in (prompts, query, ingest):
                await server.stop(1)


async def _create_prompts(address: str, key: str) -> None:
    """Two versions of one prompt, the second in the "production" environment, for the fuzzer to find."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = prompts_service_pb2_grpc.PromptsServiceStub(channel)
        await stub.CreatePrompt(
            prompts_pb.CreatePromptRequest(prompt_id="fuzz-prompt", template="Hello {{name}}"), metadata=bearer(key)
        )
        await stub.CreatePrompt(
            prompts_pb.CreatePromptRequest(
                prompt_id="fuzz-prompt",
                template='[{"role": "user", "content": "Hi {{name}}"}]',
                format=prompts_pb.TEMPLATE_FORMAT_CHAT,
                environment="production",
            ),
            metadata=bearer(key),
        )


def _describe(payload: bytes) -> str:
    shown = payload if len(payload) <= 300 else payload[:300] + b"..."
    return f"{len(payload)} bytes: {shown!r}"


def _check_rpc(mesh: Mesh, method: MethodDescriptor) -> None:
    """The property, for one RPC (run in a thread: the servers answer on the test's event loop)."""
    with grpc.insecure_channel(mesh.addresses[method.containing_service.full_name]) as channel:
        unary = channel.unary_unary(method_path(method), request_serializer=bytes, response_deserializer=bytes)
        stream = channel.unary_stream(method_path(method), request_serializer=bytes, response_deserializer=bytes)
        both_ways = channel.stream_stream(method_path(method), request_serializer=bytes, response_deserializer=bytes)

        def call(payload: bytes, metadata: tuple[tuple[str, str], ...], timeout: float) -> None:
            """One call, its whole answer read (every message of a server stream, e.g. an export)."""
            if method_path(method) in SUBSCRIPTIONS:
                answers = (
                    both_ways(iter([payload]), metadata=metadata, timeout=timeout)
                    if method.client_streaming
                    else stream(payload, metadata=metadata, timeout=timeout)
                )
                for _first in answers:
                    break
                answers.cancel()  # type: ignore[no-untyped-call]
            elif method.server_streaming:
                list(stream(payload, metadata=metadata, timeout=timeout))
            else:
                unary(payload, metadata=metadata, timeout=timeout)

        @settings(
            max_examples=EXAMPLES_PER_RPC,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(
            payload=request_bytes(method.input_type, mesh.vocabulary),
            credential=st.sampled_from(CREDENTIALS),
        )
        def answers_as_the_callers_fault(payload: bytes, credential: str) -> None:
            try:
                call(payload, metadata=mesh.credentials[credential], timeout=CALL_TIMEOUT_S)
                return
            except grpc.RpcError as error:
                failed: grpc.Call = error  # type: ignore[assignment]
            code = failed.code()
            said = f"{method_path(method)} with {credential}, request of {_describe(payload)}"
            assert code not in OUR_FAULTS, f"{code.name} ({failed.details()}) for {said}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                status = rpc_status.from_call(failed)
                assert status is not None, f"INVALID_ARGUMENT without a google.rpc.Status for {said}"
                assert bad_request_violations(status), f"INVALID_ARGUMENT without field violations for {said}"

        answers_as_the_callers_fault()


async def _still_answers(mesh: Mesh) -> None:
    for server in mesh.servers:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", *server.service_names):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    auth_address = mesh.addresses[auth_pb.DESCRIPTOR.services_by_name["AuthService"].full_name]
    async with grpc.aio.insecure_channel(auth_address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        reply = await stub.GetOrganization(auth_pb.GetOrganizationRequest(), metadata=bearer(mesh.admin_key), timeout=5)
        assert reply.organization.id


def test_every_service_of_the_api_is_fuzzed(mesh: Mesh) -> None:
    """A service added to the protos must be started here too, or this fails."""
    assert {service.full_name for service in SERVICES} <= set(mesh.addresses)


@pytest.mark.parametrize("method", METHODS, ids=[method_path(method)[1:] for method in METHODS])
async def test_no_input_is_answered_with_our_fault(mesh: Mesh, method: MethodDescriptor) -> None:
    await asyncio.to_thread(_check_rpc, mesh, method)
    await _still_answers(mesh)
