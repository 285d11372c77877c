"""The batch murmur2 gives aiokafka's (the Java client's) murmur2 for any key, so partitions do not move."""

from __future__ import annotations

import random
import uuid

import pytest
from aiokafka.partitioner import murmur2
from hypothesis import given
from hypothesis import strategies as st

from candela_ingest.kafka import OutgoingMessage, _by_partition, murmur2_all

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("length", range(41))
def test_every_key_length_hashes_as_aiokafka_does(length: int) -> None:
    rng = random.Random(length)
    # Bytes of every value: the Java client reads them as signed, so the high ones are the ones to get right.
    keys = [bytes([0xFF] * length), bytes(length)] + [rng.randbytes(length) for _ in range(200)]
    assert murmur2_all(keys) == [murmur2(key) for key in keys]


@given(st.lists(st.binary(max_size=100), max_size=50))
def test_keys_of_mixed_lengths_keep_their_order(keys: list[bytes]) -> None:
    assert murmur2_all(keys) == [murmur2(key) for key in keys]


# The cases of Kafka's own test of its partitioner's hash (clients UtilsTest.testMurmur2), as Java ints.
JAVA_CLIENT_CASES = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_the_java_clients_own_cases() -> None:
    assert murmur2_all(list(JAVA_CLIENT_CASES)) == [value & 0xFFFFFFFF for value in JAVA_CLIENT_CASES.values()]


def test_messages_without_a_key_still_all_go_out_in_order() -> None:
    keys: list[bytes | None] = [str(uuid.uuid4()).encode(), None, b"short", None, str(uuid.uuid4()).encode()]
    messages = [OutgoingMessage(key=key, value=str(index).encode(), headers=[]) for index, key in enumerate(keys)]
    groups = _by_partition(messages, [0, 1, 2])
    assert sorted(int(message.value) for group in groups.values() for message in group) == [0, 1, 2, 3, 4]
    for partition, group in groups.items():
        assert [int(m.value) for m in group] == sorted(int(m.value) for m in group)
        for message in group:
            if message.key is not None:
                assert (murmur2(message.key) & 0x7FFFFFFF) % 3 == partition


def test_partitions_follow_the_sorted_partition_list() -> None:
    # A topic's partitions need not be 0..n-1 in the list the partitioner gets; the index picks from it.
    messages = [OutgoingMessage(key=str(uuid.uuid4()).encode(), value=b"v", headers=[]) for _ in range(100)]
    groups = _by_partition(messages, [3, 5, 8])
    for partition, group in groups.items():
        assert all([3, 5, 8][(murmur2(m.key or b"") & 0x7FFFFFFF) % 3] == partition for m in group)
    assert sum(len(group) for group in groups.values()) == 100
