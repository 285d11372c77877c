"""What a writer commits after a batch, and the commit lag it reports: per partition, whatever order the
batch's messages came in (a rebalance can hand a partition back and fetch some of its messages again)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from candela_ingest.writer import metrics
from candela_ingest.writer.batch import ConsumedMessage
from candela_ingest.writer.consumer import commit_offsets

pytestmark = pytest.mark.unit

_MESSAGES = st.lists(
    st.builds(
        ConsumedMessage,
        topic=st.sampled_from(["logs", "dlq"]),
        partition=st.integers(0, 3),
        offset=st.integers(0, 50),
        key=st.none(),
        value=st.just(b""),
        timestamp_ms=st.one_of(st.none(), st.integers(-1, 10_000)),
    ),
    min_size=1,
    max_size=40,
)


@given(_MESSAGES)
def test_each_partition_is_committed_one_past_its_highest_offset(batch: list[ConsumedMessage]) -> None:
    expected: dict[TopicPartition, int] = {}
    for message in batch:
        key = TopicPartition(message.topic, message.partition)
        expected[key] = max(expected.get(key, 0), message.offset + 1)
    assert commit_offsets(batch) == expected


def test_a_partition_fetched_again_after_a_rebalance_is_committed_past_its_highest_offset() -> None:
    batch = [ConsumedMessage("logs", 0, offset, None, b"") for offset in (10, 11, 12)]
    batch += [ConsumedMessage("logs", 1, 5, None, b"")]
    batch += [ConsumedMessage("logs", 0, offset, None, b"") for offset in (10, 11)]
    assert commit_offsets(batch) == {TopicPartition("logs", 0): 13, TopicPartition("logs", 1): 6}


def test_the_commit_lag_is_the_age_of_each_partitions_newest_message() -> None:
    batch = [
        ConsumedMessage("lag-logs", 0, 1, None, b"", (), 4_000),
        ConsumedMessage("lag-logs", 1, 1, None, b"", (), 9_000),
        ConsumedMessage("lag-logs", 0, 2, None, b"", (), 7_000),
        ConsumedMessage("lag-logs", 1, 2, None, b"", (), None),  # no timestamp: left out
        ConsumedMessage("lag-logs", 0, 0, None, b"", (), 2_000),
        ConsumedMessage("lag-logs", 2, 0, None, b"", (), -1),  # the broker kept none: the gauge stays unset
    ]
    committed = REGISTRY.get_sample_value("candela_writer_batches_committed_total", {"topic": "lag-logs"}) or 0.0
    metrics.observe_commit(batch, now_s=10.0)

    def lag(partition: int) -> float | None:
        return REGISTRY.get_sample_value(
            "candela_writer_commit_lag_seconds", {"topic": "lag-logs", "partition": str(partition)}
        )

    assert (lag(0), lag(1), lag(2)) == (3.0, 1.0, None)
    assert REGISTRY.get_sample_value("candela_writer_batches_committed_total", {"topic": "lag-logs"}) == committed + 1
