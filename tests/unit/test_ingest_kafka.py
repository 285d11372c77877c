"""Ingest's batched produce keeps the producer's key partitioning, and the writer's columnar insert."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import murmur2

from candela_ingest.kafka import OutgoingMessage, _by_partition
from candela_ingest.writer.clickhouse import columns_of

pytestmark = pytest.mark.unit


def test_messages_go_to_the_partition_of_their_key_in_order() -> None:
    keys = [str(uuid.uuid4()).encode() for _ in range(200)]
    messages = [OutgoingMessage(key=key, value=str(index).encode(), headers=[]) for index, key in enumerate(keys)]
    groups = _by_partition(messages, [0, 1, 2, 3])
    # The Java client's (and aiokafka's) default: murmur2 of the key, positive, modulo the partitions.
    for partition, group in groups.items():
        assert all((murmur2(message.key) & 0x7FFFFFFF) % 4 == partition for message in group)
        values = [int(message.value) for message in group]
        assert values == sorted(values)
    assert sum(len(group) for group in groups.values()) == 200
    assert len(groups) == 4


def test_score_rows_become_columns_that_stay_aligned() -> None:
    rows = [(f"request-{index}", index) for index in range(3)]
    assert columns_of(rows) == [["request-0", "request-1", "request-2"], [0, 1, 2]]


def test_a_row_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        columns_of([("a", 1), ("b",)])
