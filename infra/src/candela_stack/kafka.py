"""The stack's Kafka-protocol broker (Tansu): command line, storage engine, readiness and topics.

Candela's code speaks plain Kafka through aiokafka; nothing here is needed in production, where any
Kafka service takes Tansu's place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from candela_stack.ports import LOOPBACK
from candela_stack.probes import run_sync, tcp_open

KafkaEngine = Literal["memory", "s3"]
"""Tansu storage: `memory` (nothing survives a restart) or `s3` (durable, in the stack's S3 store)."""

TANSU_BUCKET = "tansu"


def broker_argv(binary: Path, port: int, engine: KafkaEngine) -> list[str]:
    """`tansu broker` listening and advertising 127.0.0.1:`port`, storing in memory or in S3."""
    url = f"tcp://{LOOPBACK}:{port}"
    storage = "memory://tansu/" if engine == "memory" else f"s3://{TANSU_BUCKET}/"
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        storage,
    ]


def broker_env(s3_endpoint: str, access_key: str, secret_key: str) -> dict[str, str]:
    """The AWS_* variables that point Tansu's S3 engine at the stack's S3 store (plain HTTP allowed)."""
    return {
        "AWS_ENDPOINT": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }


def is_ready(port: int) -> bool:
    """True once the broker answers a metadata request (admin list_topics)."""
    if not tcp_open(port):
        return False
    return run_sync(_lists_topics(f"{LOOPBACK}:{port}"))


def ensure_topics(bootstrap: str, partitions_by_topic: Mapping[str, int]) -> list[str]:
    """Creates every topic of `partitions_by_topic` that does not exist yet; returns those it created."""
    return run_sync(_ensure_topics(bootstrap, partitions_by_topic))


async def _lists_topics(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), timeout=3)
        await asyncio.wait_for(admin.list_topics(), timeout=3)
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()
    return True


async def _ensure_topics(bootstrap: str, partitions_by_topic: Mapping[str, int]) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name=topic, num_partitions=partitions, replication_factor=1)
            for topic, partitions in partitions_by_topic.items()
            if topic not in existing
        ]
        if missing:
            await admin.create_topics(missing, timeout_ms=10000)
    finally:
        await admin.close()
    return [topic.name for topic in missing]
