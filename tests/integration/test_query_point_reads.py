"""Point reads (a request, a session, a page's full rows) on ClickHouse 18.16 and modern ClickHouse (chDB).

They select the wanted requests with PREWHERE and keep the newest version themselves, without FINAL. A
redelivered log leaves several stored versions until a merge collapses them: the reads must show one
request, its newest version, whatever order the copies arrived in, and only the caller's organization.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer.rows import Row, clickhouse_row
from candela_query.row_reads import BodyLocation
from candela_query.scope import SqlRunner
from candela_query.store import RequestStore
from candela_stack.stack import Component, Stack, StackConfig
from tests.integration.query_support import ChdbRunner, DriverRunner, insert_rows, make_record

pytestmark = pytest.mark.integration

ORG = "44444444-4444-4444-8444-444444444444"
OTHER_ORG = "55555555-5555-4555-8555-555555555555"
SESSION = "session-redelivered"


def _message(rng: random.Random, organization_id: str, index: int) -> log_record_pb2.LogMessage:
    message = make_record(rng, organization_id, index)
    message.record.session_id = SESSION
    message.record.session_name = "Redelivered run"
    if index % 2:
        # A log written since bodies are compressed: its bodies sit in zstd frames (the response body of
        # make_record is one of before, a plain byte range).
        message.request_body.MergeFrom(
            log_record_pb2.BodyRef(
                object_key=f"bodies/{organization_id}/{index}.zst",
                offset=index * 100,
                length=2_000,
                frame_offset=5_000_000_000 + index,
                frame_length=60_000,
            )
        )
    return message


def _version(message: log_record_pb2.LogMessage, model: str, version: int) -> Row:
    copy = log_record_pb2.LogMessage()
    copy.CopyFrom(message)
    copy.record.model = model
    return clickhouse_row(copy, version=version)


@pytest.fixture(scope="module")
def messages() -> list[log_record_pb2.LogMessage]:
    rng = random.Random(11)
    return [_message(rng, ORG, index) for index in range(5)]


@pytest.fixture(scope="module")
def inserts(messages: list[log_record_pb2.LogMessage]) -> list[list[Row]]:
    """Separate inserts (separate parts, so nothing is merged before the reads): the first request is
    written, redelivered with a newer version, then an older copy arrives last; another organization has
    a request with the same id."""
    first = messages[0]
    foreign = log_record_pb2.LogMessage()
    foreign.CopyFrom(first)
    foreign.record.organization_id = OTHER_ORG
    foreign.record.model = "other-organization"
    return [
        [_version(first, "v2", 2), *(clickhouse_row(message, version=2) for message in messages[1:])],
        [_version(first, "v3-newest", 3), clickhouse_row(foreign, version=9)],
        [_version(first, "v1-stale", 1)],
    ]


@pytest.fixture(scope="module", params=["clickhouse-18.16", "chdb"])
def runner(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, inserts: list[list[Row]]
) -> Iterator[SqlRunner]:
    """The rows inserted into ``requests`` on one dialect."""
    if request.param == "chdb":
        chdb = ChdbRunner(Path(tmp_path_factory.mktemp("chdb-rows")))
        for rows in inserts:
            chdb.insert(rows)
        yield chdb
        chdb.close()
        return
    config = StackConfig.for_tests(tmp_path_factory.mktemp("ch-rows"), components=frozenset({Component.CLICKHOUSE}))
    with Stack(config) as stack:
        driver = DriverRunner.of(stack)
        for rows in inserts:
            insert_rows(driver.client, rows)
        yield driver
        driver.close()


@pytest.fixture
def store(runner: SqlRunner) -> RequestStore:
    return RequestStore(runner)


async def test_the_stored_copies_are_still_there(runner: SqlRunner) -> None:
    """The reads below must hide copies that storage still holds (no merge has run)."""
    copies = await runner.fetch(
        "SELECT model FROM requests WHERE organization_id = toUUID(%(org)s) AND session_id = %(session)s",
        {"org": ORG, "session": SESSION},
    )
    assert sorted(model for (model,) in copies if model.startswith("v")) == ["v1-stale", "v2", "v3-newest"]


async def test_a_request_shows_once_with_its_newest_version(
    store: RequestStore, messages: list[log_record_pb2.LogMessage]
) -> None:
    stored = await store.get(ORG, uuid.UUID(messages[0].record.request_id))
    assert stored is not None
    assert stored.record.model == "v3-newest"
    assert stored.record.organization_id == ORG
    assert stored.response_body is not None
    assert stored.response_body.object_key == messages[0].response_body.object_key
    unchanged = await store.get(ORG, uuid.UUID(messages[1].record.request_id))
    assert unchanged is not None
    assert unchanged.record == messages[1].record


async def test_bodies_read_back_where_they_were_stored_framed_or_not(
    store: RequestStore, messages: list[log_record_pb2.LogMessage]
) -> None:
    for message in messages[1:]:
        stored = await store.get(ORG, uuid.UUID(message.record.request_id))
        assert stored is not None
        for ref, location in (
            (message.request_body, stored.request_body),
            (message.response_body, stored.response_body),
        ):
            if not ref.object_key:
                assert location is None
                continue
            assert location == BodyLocation(ref.object_key, ref.offset, ref.length, ref.frame_offset, ref.frame_length)
    assert {bool(message.request_body.frame_length) for message in messages[1:]} == {True, False}, "both kinds"


async def test_each_organization_sees_only_its_own_row(
    store: RequestStore, messages: list[log_record_pb2.LogMessage]
) -> None:
    assert await store.get(ORG, uuid.uuid4()) is None
    foreign = await store.get(OTHER_ORG, uuid.UUID(messages[0].record.request_id))
    assert foreign is not None
    assert foreign.record.model == "other-organization"
    session = await store.session_requests(OTHER_ORG, SESSION, 100)
    assert [row.record.model for row in session] == ["other-organization"], "the other organization's session"


async def test_a_session_lists_each_request_once(
    store: RequestStore, messages: list[log_record_pb2.LogMessage]
) -> None:
    rows = await store.session_requests(ORG, SESSION, 100)
    assert sorted(row.record.request_id for row in rows) == sorted(m.record.request_id for m in messages)
    assert {row.record.model for row in rows if row.record.request_id == messages[0].record.request_id} == {"v3-newest"}
    created = [row.sort_keys["created_at_us"] for row in rows]
    assert created == sorted(created), "oldest first"


async def test_a_page_shows_the_newest_version_only(
    store: RequestStore, messages: list[log_record_pb2.LogMessage]
) -> None:
    page = await store.page(ORG, "session_id = %(session)s", {"session": SESSION}, "created_at", True, None, 10)
    assert sorted(row.record.request_id for row in page.rows) == sorted(m.record.request_id for m in messages)
    assert not page.has_more
    models = {row.record.request_id: row.record.model for row in page.rows}
    assert models[messages[0].record.request_id] == "v3-newest"
    stale = await store.page(ORG, "model = %(model)s", {"model": "v1-stale"}, "created_at", True, None, 10)
    assert stale.rows == [], "a stale copy never matches a filter its newest version fails"
