"""Score reads, score filters and score averages on ClickHouse 18.16 and on modern ClickHouse (chDB).

Score rows are made the way the writers make them (a LogUpdate through candela_ingest.writer.rows.score_rows),
with older values of some scores stored beside the newer ones (as updates that are not merged yet leave)
and a score of another organization on this organization's request ids, which no read may show. Score
averages over a span follow the metrics' rule: without FINAL over days proven free of copies, with FINAL
as soon as a request is stored twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela_ingest.writer.rows import REQUEST_COLUMNS, Row, score_rows, scores_insert_statement
from candela_query.filters import FilterCompiler, Params
from candela_query.store import RequestStore
from candela_runtime.errors import Violations
from candela_stack.stack import Component, Stack, StackConfig
from tests.integration.query_support import (
    BASE_SECONDS,
    ChdbRunner,
    DriverRunner,
    InsertsDuringReads,
    RecordingRunner,
    insert_rows,
    make_rows,
    store_rows,
)

pytestmark = pytest.mark.integration

ORG = "11111111-1111-4111-8111-111111111111"
OTHER_ORG = "22222222-2222-4222-8222-222222222222"
UPDATED_AT = 1_780_000_000


def _update(organization_id: str, request_id: str, seconds: int, **scores: float) -> log_record_pb2.LogUpdate:
    update = log_record_pb2.LogUpdate(organization_id=organization_id, request_id=request_id, scores=scores)
    update.updated_at.seconds = seconds
    return update


@pytest.fixture(scope="module")
def requests() -> list[Row]:
    return make_rows([ORG], 120, seed=11)


@pytest.fixture(scope="module")
def request_ids(requests: list[Row]) -> list[str]:
    column = REQUEST_COLUMNS.index("request_id")
    return sorted({str(row[column]) for row in requests})


@pytest.fixture(scope="module")
def scores(request_ids: list[str]) -> tuple[list[Row], dict[str, dict[str, float]]]:
    """Score rows (older values first, then the newest, then another organization's) and the newest
    value of each of this organization's scores, by request id and name."""
    rng = random.Random(5)
    rows: list[Row] = []
    newest: dict[str, dict[str, float]] = {}
    for index, request_id in enumerate(request_ids[:80]):
        accuracy = round(rng.random(), 3)
        named: dict[str, float] = {"accuracy": accuracy}
        if index % 3 == 0:
            # An older value, stored and not yet merged away: the newer one must win.
            rows += score_rows(_update(ORG, request_id, UPDATED_AT - 60, accuracy=1.0 - accuracy, latency_ok=1.0))
        if index % 2 == 0:
            update = _update(ORG, request_id, UPDATED_AT)
            update.feedback = index % 4 == 0
            rows += score_rows(update)
            named["feedback"] = 1.0 if update.feedback else 0.0
        if index % 3 == 0:
            named["latency_ok"] = 1.0
        rows += score_rows(_update(ORG, request_id, UPDATED_AT, accuracy=accuracy))
        newest[request_id] = named
    # Another organization scoring this organization's request ids: invisible to it.
    for request_id in request_ids[:100]:
        update = _update(OTHER_ORG, request_id, UPDATED_AT + 60, accuracy=99.0)
        update.feedback = True
        rows += score_rows(update)
    return rows, newest


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig.for_tests(tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE}))
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def runners(
    clickhouse: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    requests: list[Row],
    scores: tuple[list[Row], dict[str, dict[str, float]]],
) -> Iterator[dict[str, DriverRunner | ChdbRunner]]:
    """ClickHouse 18.16 and chDB, each holding the requests and scores."""
    driver = DriverRunner.of(clickhouse)
    insert_rows(driver.client, requests)
    driver.client.execute(scores_insert_statement(), scores[0])
    chdb = ChdbRunner(Path(tmp_path_factory.mktemp("chdb")))
    chdb.insert(requests)
    chdb.insert_scores(scores[0])
    yield {"clickhouse-18.16": driver, "chdb": chdb}
    chdb.close()
    driver.close()


@pytest.fixture(scope="module")
def stores(runners: dict[str, DriverRunner | ChdbRunner]) -> dict[str, RequestStore]:
    return {name: RequestStore(runner) for name, runner in runners.items()}


def _cond(field: str, operator: str, value: Any, key: str = "") -> pb.FilterCondition:
    wrapped = struct_pb2.Value(bool_value=value) if isinstance(value, bool) else struct_pb2.Value(number_value=value)
    return pb.FilterCondition(field=field, operator=operator, value=wrapped, property_key=key)


async def _matching(store: RequestStore, *conditions: pb.FilterCondition) -> set[str]:
    params = Params()
    violations = Violations()
    where = FilterCompiler(params, violations).compile(pb.RequestFilter(conditions=conditions))
    violations.raise_if_any()
    page = await store.page(ORG, where, params.values, "created_at", False, None, 10_000)
    return {row.record.request_id for row in page.rows}


async def test_a_page_reads_the_newest_value_of_each_score_of_its_own_organization(
    stores: dict[str, RequestStore],
    request_ids: list[str],
    scores: tuple[list[Row], dict[str, dict[str, float]]],
) -> None:
    newest = scores[1]
    for name, store in stores.items():
        got = await store.scores(ORG, request_ids)
        assert got == newest, name
        # Another organization sees only its own scores, never this one's.
        other = await store.scores(OTHER_ORG, request_ids[:3])
        assert all(named == {"accuracy": 99.0, "feedback": 1.0} for named in other.values()), name


@pytest.mark.parametrize(
    ("condition", "predicate"),
    [
        (_cond("score", "gte", 0.5, "accuracy"), lambda named: named.get("accuracy", -1) >= 0.5),
        (_cond("score", "lt", 0.5, "accuracy"), lambda named: "accuracy" in named and named["accuracy"] < 0.5),
        (_cond("score", "equals", True, "latency_ok"), lambda named: named.get("latency_ok") == 1.0),
        (_cond("feedback", "equals", True), lambda named: named.get("feedback") == 1.0),
        (_cond("feedback", "equals", False), lambda named: named.get("feedback") == 0.0),
        (_cond("feedback", "not_equals", True), lambda named: named.get("feedback") == 0.0),
    ],
    ids=["score-gte", "score-lt", "score-bool", "feedback-up", "feedback-down", "feedback-not-up"],
)
async def test_score_and_feedback_filters_match_the_newest_values(
    stores: dict[str, RequestStore],
    scores: tuple[list[Row], dict[str, dict[str, float]]],
    condition: pb.FilterCondition,
    predicate: Any,
) -> None:
    expected = {request_id for request_id, named in scores[1].items() if predicate(named)}
    assert 0 < len(expected) < len(scores[1]), "the case must separate rows to prove anything"
    for name, store in stores.items():
        assert await _matching(store, condition) == expected, name


async def test_score_averages_per_model_match_the_python_reference(
    stores: dict[str, RequestStore],
    requests: list[Row],
    scores: tuple[list[Row], dict[str, dict[str, float]]],
) -> None:
    model_of: dict[str, str] = {}
    version_of: dict[str, int] = {}
    for row in requests:
        values = dict(zip(REQUEST_COLUMNS, row, strict=True))
        request_id = str(values["request_id"])
        if values["version"] > version_of.get(request_id, -1):
            version_of[request_id], model_of[request_id] = values["version"], values["model"]
    sums: dict[tuple[str, str], list[float]] = {}
    for request_id, named in scores[1].items():
        for score, value in named.items():
            sums.setdefault((model_of[request_id], score), []).append(value)
    expected = {key: (sum(values) / len(values), len(values)) for key, values in sums.items()}
    for name, store in stores.items():
        params: dict[str, Any] = {}
        averages = await store.score_averages(ORG, "1", params, ["model"], 1000)
        got = {
            (str(keys[0]), score): (round(mean, 9), count)
            for keys, named in averages.items()
            for score, (mean, count) in named.items()
        }
        assert got == {key: (round(mean, 9), count) for key, (mean, count) in expected.items()}, name
        totals = await store.score_averages(ORG, "1", {}, [], 1000)
        feedback = [value["feedback"] for value in scores[1].values() if "feedback" in value]
        assert totals[()]["feedback"] == (sum(feedback) / len(feedback), len(feedback)), name


PROVEN_ORG = "88888888-8888-4888-8888-888888888888"
SPAN = (BASE_SECONDS * 1_000_000, (BASE_SECONDS + 11 * 86_400) * 1_000_000)
"""Every day the generated requests fall on (closed days: their proofs are recorded)."""

Averages = dict[tuple[str, str], tuple[float, int]]


@contextmanager
def _merges_stopped(runner: DriverRunner | ChdbRunner) -> Iterator[None]:
    """No background merge collapses the copies of a request while the test reads them."""
    run = runner.client.execute if isinstance(runner, DriverRunner) else runner.command
    run("SYSTEM STOP MERGES requests")
    try:
        yield
    finally:
        run("SYSTEM START MERGES requests")


async def _span_averages(store: RequestStore) -> Averages:
    """(mean, count) of each score per model over SPAN, as AggregateRequests asks the store for them."""
    params = Params()
    where = f"created_at_us >= {params.bind(SPAN[0])} AND created_at_us < {params.bind(SPAN[1])}"
    averages = await store.score_averages(PROVEN_ORG, where, params.values, ["model"], 1000, span=SPAN)
    return {
        (str(keys[0]), score): (round(mean, 9), count)
        for keys, named in averages.items()
        for score, (mean, count) in named.items()
    }


def _average_reads(runner: RecordingRunner) -> list[str]:
    """The statements that read the score averages themselves (as against the proofs' counts)."""
    return [sql for sql in runner.statements if "avg(score_value)" in sql]


async def test_score_averages_skip_final_only_over_days_proven_free_of_copies(
    runners: dict[str, DriverRunner | ChdbRunner],
) -> None:
    """As the metrics do: a span whose days hold one row per request is averaged without FINAL, and a
    request stored twice (a redelivery not merged yet, or one landing during the read) is averaged once."""
    generated = make_rows([PROVEN_ORG], 90, seed=23)
    originals = [row for row in generated if row[-1] == 2]
    stale = [row for row in generated if row[-1] == 1]  # older copies, with the model "stale-copy"
    rng = random.Random(29)
    score_values: list[Row] = []
    by_key: dict[tuple[str, str], list[float]] = {}
    scored: list[Row] = []
    for index, row in enumerate(originals):
        if index % 3 == 2:
            continue  # requests without a score are no part of its average
        values = dict(zip(REQUEST_COLUMNS, row, strict=True))
        accuracy = round(rng.random(), 3)
        score_values += score_rows(_update(PROVEN_ORG, str(values["request_id"]), UPDATED_AT, accuracy=accuracy))
        by_key.setdefault((str(values["model"]), "accuracy"), []).append(accuracy)
        scored.append(row)
    expected = {key: (round(sum(values) / len(values), 9), len(values)) for key, values in by_key.items()}
    request_id = REQUEST_COLUMNS.index("request_id")
    scored_ids = {row[request_id] for row in scored}
    # Some older copies are of scored requests, so averaging one of them (in a "stale-copy" group) shows.
    assert any(row[request_id] in scored_ids for row in stale)
    redelivered = [(*row[:-1], 3) for row in scored[:5]]
    for name, runner in runners.items():
        store_rows(runner, originals)
        if isinstance(runner, DriverRunner):
            runner.client.execute(scores_insert_statement(), score_values)
        else:
            runner.insert_scores(score_values)
        with _merges_stopped(runner):
            recording = RecordingRunner(runner)
            assert await _span_averages(RequestStore(recording)) == expected, name
            reads = _average_reads(recording)
            assert len(reads) == 1, (name, reads)
            assert "FINAL" not in reads[0], f"{name}: the proven days were read with FINAL"
            # A copy landing while the rows are read without FINAL is caught by the check after the read.
            racing = InsertsDuringReads(runner, redelivered, "avg(score_value)")
            assert await _span_averages(RequestStore(racing)) == expected, name
            assert not racing.copies, f"{name}: the rows were not read without FINAL"
            # The copies stay stored (merges stopped): those days are no longer proven, FINAL reads them.
            stored = await runner.fetch(
                "SELECT count() FROM requests WHERE organization_id = toUUID(%(o)s)", {"o": PROVEN_ORG}
            )
            assert int(stored[0][0]) == len(originals) + len(redelivered), name
            recording = RecordingRunner(runner)
            assert await _span_averages(RequestStore(recording)) == expected, name
            assert all("FINAL" in sql for sql in _average_reads(recording)), (name, _average_reads(recording))
            # Older copies of a redelivery (another model): still the newest version alone is averaged.
            store_rows(runner, stale)
            assert await _span_averages(RequestStore(runner)) == expected, name
