"""The launcher's infrastructure, for real: every server starts, answers, is migrated, and stops without a trace."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from botocore.config import Config
from botocore.exceptions import ClientError
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException as ServerError

from candela_schema import migrator
from candela_stack import seaweed
from candela_stack.ports import port_is_free
from candela_stack.stack import INFRA, Component, Stack, StackConfig

pytestmark = pytest.mark.integration

INFRA_PROCESSES = ["redis", "clickhouse", "seaweedfs", "kafka", "envoy"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The infrastructure (no Candela service) on a free port base in a temporary dir."""
    config = StackConfig.for_tests(tmp_path_factory.mktemp("stack"), components=INFRA)
    running = Stack(config).start()
    try:
        yield running
    finally:
        running.stop()


def direct_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    """GET without any proxy from the environment (with HTTP basic `auth`); HTTP errors are returned, not raised."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def test_starts_the_infrastructure_processes_with_the_gateway_last(stack: Stack) -> None:
    names = [process.name for process in stack.processes()]
    assert sorted(names) == sorted(INFRA_PROCESSES)
    assert names[-1] == "envoy"
    assert stack.startup_seconds is not None
    assert set(stack.timings) >= {"postgres", "clickhouse migrations", "s3 buckets", "kafka topics", *INFRA_PROCESSES}


async def test_postgres_database_exists_and_is_migrated(stack: Stack) -> None:
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        assert await connection.fetchval("SELECT current_database()") == stack.config.database
        applied = [row["name"] for row in await connection.fetch("SELECT name FROM schema_migrations ORDER BY name")]
    finally:
        await connection.close()
    assert applied == [migration.name for migration in migrator.load(migrator.POSTGRES)]


def test_postgres_migrations_are_applied_once(stack: Stack) -> None:
    assert migrator.apply_postgres(stack.postgres_dsn) == []


def test_clickhouse_answers_and_is_migrated(stack: Stack) -> None:
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    try:
        assert client.execute("SELECT 1") == [(1,)]
        applied = [row[0] for row in client.execute("SELECT name FROM schema_migrations ORDER BY name")]
    finally:
        client.disconnect()
    assert applied == [migration.name for migration in migrator.load(migrator.CLICKHOUSE)]
    assert (
        migrator.apply_clickhouse(
            stack.clickhouse_host,
            stack.clickhouse_port,
            stack.clickhouse_database,
            user=stack.clickhouse_user,
            password=stack.clickhouse_password,
        )
        == []
    )
    status, body = direct_get(f"{stack.clickhouse_http_url}/ping")
    assert (status, body) == (200, b"Ok.\n")


async def test_kafka_topics_exist_and_a_message_round_trips(stack: Stack) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([stack.kafka_topic, stack.kafka_dlq_topic])
    finally:
        await admin.close()
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in described}
    assert partitions == {stack.kafka_topic: 4, stack.kafka_dlq_topic: 4}

    topic = f"stack-test-{secrets.token_hex(4)}"
    payload = secrets.token_bytes(64)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=f"stack-test-{secrets.token_hex(4)}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000, max_records=1)
    finally:
        await consumer.stop()
    records = [record for batch in batches.values() for record in batch]
    assert [(record.key, record.value) for record in records] == [(b"k", payload)]


def s3_client(stack: Stack, secret_key: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.s3_access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def test_s3_buckets_exist_and_an_object_round_trips(stack: Stack) -> None:
    s3 = s3_client(stack, stack.s3_secret_key)
    buckets = {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}
    assert {stack.s3_bucket, "tansu"} <= buckets
    body = secrets.token_bytes(3 * 1024 * 1024)
    s3.put_object(Bucket=stack.s3_bucket, Key="bodies/test/object", Body=body)
    ranged = s3.get_object(Bucket=stack.s3_bucket, Key="bodies/test/object", Range="bytes=10-19")
    assert ranged["Body"].read() == body[10:20]
    assert s3.get_object(Bucket=stack.s3_bucket, Key="bodies/test/object")["Body"].read() == body


def test_s3_rejects_a_wrong_secret(stack: Stack) -> None:
    s3 = s3_client(stack, "not-the-secret")
    with pytest.raises(ClientError):
        s3.list_objects_v2(Bucket=stack.s3_bucket)


def test_clickhouse_refuses_a_client_without_the_password(stack: Stack) -> None:
    """Being on the machine (or reaching a port through a confused proxy) is not enough to read the logs."""
    for password in ("", "not-the-password"):
        client = Client(host=stack.clickhouse_host, port=stack.clickhouse_port, password=password, connect_timeout=5)
        try:
            with pytest.raises(ServerError, match=r"(?i)password"):
                client.execute("SELECT 1")
        finally:
            client.disconnect()
    query = urllib.parse.urlencode({"query": f"SELECT count() FROM {stack.clickhouse_database}.requests"})
    status, body = direct_get(f"{stack.clickhouse_http_url}/?{query}")
    assert status == 401, (status, body)
    assert b"Password required" in body
    status, _ = direct_get(f"{stack.clickhouse_http_url}/?{query}", auth=(stack.clickhouse_user, "not-the-password"))
    assert status == 401
    status, body = direct_get(
        f"{stack.clickhouse_http_url}/?{query}", auth=(stack.clickhouse_user, stack.clickhouse_password)
    )
    assert (status, body) == (200, b"0\n"), "the stack's own password is accepted"
    config = (stack.data_dir / "clickhouse" / "config.xml").read_text()
    assert stack.clickhouse_password not in config, "the server config holds only the password's hash"
    for log_file in stack.log_dir.rglob("*"):
        if log_file.is_file():
            assert stack.clickhouse_password not in log_file.read_text(errors="replace"), log_file.name


def test_the_s3_filer_and_volume_server_refuse_unauthenticated_reads(stack: Stack) -> None:
    """Only the S3 gateway (which checks S3 credentials) may list or read the stored bodies."""
    s3 = s3_client(stack, stack.s3_secret_key)
    s3.put_object(Bucket=stack.s3_bucket, Key="bodies/org-a/packed", Body=b"another organization's prompt")
    filer = f"http://{stack.clickhouse_host}:{stack.ports.seaweed_filer}"
    for path in (f"/buckets/{stack.s3_bucket}/", f"/buckets/{stack.s3_bucket}/bodies/org-a/", "/"):
        status, body = direct_get(f"{filer}{path}")
        assert status == 401, (path, status, body[:200])
        assert b"org-a" not in body
    status, body = direct_get(f"{filer}/buckets/{stack.s3_bucket}/bodies/org-a/packed")
    assert status == 401
    assert b"prompt" not in body
    volume = f"http://{stack.clickhouse_host}:{stack.ports.seaweed_volume}"
    assert direct_get(f"{volume}/ui/index.html")[0] == 401
    assert s3.get_object(Bucket=stack.s3_bucket, Key="bodies/org-a/packed")["Body"].read() == (
        b"another organization's prompt"
    ), "the S3 gateway itself still reads and writes"


def test_s3_keeps_taking_writes_beyond_the_old_eight_volume_slots(tmp_path: Path) -> None:
    """`make run` ran out of writable volumes (8 slots; each bucket grows 7 at a time) and every PUT then
    failed. With slots sized by disk space, 12 buckets of 1 MiB volumes, filled past their size, still take
    every write."""
    config = StackConfig.for_tests(tmp_path, components=frozenset({Component.S3}), seaweed_volume_size_limit_mb=1)
    with Stack(config) as stack:
        s3 = s3_client(stack, stack.s3_secret_key)
        body = secrets.token_bytes(700 * 1024)
        began = time.monotonic()
        for bucket_index in range(12):
            bucket = f"volumes-{bucket_index}"
            s3.create_bucket(Bucket=bucket)
            for object_index in range(3):
                s3.put_object(Bucket=bucket, Key=f"object-{object_index}", Body=body)
        took = time.monotonic() - began
        assert s3.get_object(Bucket="volumes-11", Key="object-2")["Body"].read() == body
        status, topology = direct_get(f"http://{stack.clickhouse_host}:{stack.ports.seaweed_master}/dir/status")
        assert status == 200
        volumes = json.loads(topology)["Topology"]["Max"]
    assert volumes > 8, f"only {volumes} volume slots"
    assert took < 60, f"36 writes took {took:.1f} s"


def test_redis_answers_ping(stack: Stack) -> None:
    with socket.create_connection((stack.clickhouse_host, stack.ports.redis), timeout=5) as connection:
        connection.sendall(b"PING\r\n")
        assert connection.recv(64) == b"+PONG\r\n"


def test_envoy_is_live_and_routes_to_the_missing_proxy(stack: Stack) -> None:
    assert direct_get(f"{stack.envoy_admin_url}/ready") == (200, b"LIVE\n")
    # No proxy in an infra-only stack: Envoy itself answers, with "no healthy upstream".
    status, _ = direct_get(f"{stack.gateway_url}/v1/models")
    assert status == 503


def test_stop_leaves_no_process_and_no_database_behind(stack: Stack) -> None:
    pids = stack.pids()
    assert len(pids) == len(INFRA_PROCESSES)
    # Still running seconds after start-up (Envoy, for one, ends itself when the thread that launched it exits).
    assert [process.name for process in stack.processes() if not process.running()] == []
    listening = [stack.ports.gateway, stack.ports.kafka, stack.ports.seaweed_s3, stack.ports.clickhouse_tcp]

    stack.stop()

    assert stack.pids() == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} is still alive"
    assert all(port_is_free(port) for port in listening)
    assert not (stack.data_dir / "run" / "pids.json").exists()
    assert [path for path in seaweed.socket_files(stack.ports) if path.exists()] == []
    assert not _database_exists(stack)
    stack.stop()  # idempotent


def _database_exists(stack: Stack) -> bool:
    async def check() -> bool:
        connection = await asyncpg.connect(stack.postgres_admin_dsn)
        try:
            found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", stack.config.database)
        finally:
            await connection.close()
        return found is not None

    from candela_stack.probes import run_sync

    return run_sync(check())


def test_a_failing_start_stops_what_it_started(tmp_path: Path) -> None:
    # SeaweedFS left out only to keep this test quick.
    stack = Stack(StackConfig.for_tests(tmp_path, components=INFRA - {Component.S3}))
    # Envoy comes last, after every other server is up; a file where its config dir goes makes it fail.
    (tmp_path / "envoy").write_text("in the way")
    with pytest.raises(FileExistsError):
        stack.start()
    assert stack.pids() == []
    for name in ("redis", "clickhouse", "kafka"):
        assert (tmp_path / "logs" / f"{name}.log").exists(), f"{name} was never started"
    assert _processes_mentioning(str(tmp_path)) == []
    assert not _database_exists(stack)


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (e.g. a stack's data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command_line:
            found.append(int(entry.name))
    return found


async def test_kafka_on_the_s3_engine_keeps_messages_in_s3(tmp_path: Path) -> None:
    config = StackConfig.for_tests(tmp_path, components=frozenset({Component.KAFKA}), kafka_engine="s3")
    stack = Stack(config)
    assert [c.value for c in sorted(stack.components)] == ["kafka", "s3"]
    stack.start()
    try:
        topic = f"stack-test-{secrets.token_hex(4)}"
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"durable")
        finally:
            await producer.stop()
        objects = s3_client(stack, stack.s3_secret_key).list_objects_v2(Bucket="tansu")
        assert objects["KeyCount"] > 0
    finally:
        stack.stop()
