"""The query builder on ClickHouse 18.16 and on modern ClickHouse (chDB): same rows, same answers.

Each filter operator and field, the filter tree, keyset pagination, every aggregate and grouping, the
session and user views are run on both engines and checked against a Python computation over the same
rows (after removing the stale copies a redelivery leaves, which FINAL must hide).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from candela.query.v1 import query_service_pb2 as pb
from candela_ingest.writer.rows import REQUEST_COLUMNS, Row
from candela_query.aggregates import Metrics, exact_quantiles
from candela_query.cursor import Position
from candela_query.filters import PROPERTY_VALUE, FilterCompiler, Params
from candela_query.row_reads import SORT_COLUMNS
from candela_query.service import session_tree
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
PAGER_ORG = "33333333-3333-4333-8333-333333333333"
DAY_US = 86_400 * 1_000_000

Ref = dict[str, Any]


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return make_rows([ORG, OTHER_ORG], 700)


@pytest.fixture(scope="module")
def clickhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ClickHouse 18.16 server with the shipped migrations."""
    config = StackConfig.for_tests(tmp_path_factory.mktemp("ch"), components=frozenset({Component.CLICKHOUSE}))
    with Stack(config) as stack:
        yield stack


@pytest.fixture(scope="module")
def driver(clickhouse: Stack, rows: list[Row]) -> Iterator[DriverRunner]:
    runner = DriverRunner.of(clickhouse)
    insert_rows(runner.client, rows)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def chdb(tmp_path_factory: pytest.TempPathFactory, rows: list[Row]) -> Iterator[ChdbRunner]:
    runner = ChdbRunner(Path(tmp_path_factory.mktemp("chdb")))
    runner.insert(rows)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def stores(driver: DriverRunner, chdb: ChdbRunner) -> dict[str, RequestStore]:
    return {"clickhouse-18.16": RequestStore(driver), "chdb": RequestStore(chdb)}


@pytest.fixture(scope="module")
def reference(rows: list[Row]) -> list[Ref]:
    """The organization's rows as the API should see them: newest version of each request only."""
    latest: dict[str, Ref] = {}
    for row in rows:
        values = dict(zip(REQUEST_COLUMNS, row, strict=True))
        if values["organization_id"] != ORG:
            continue
        current = latest.get(values["request_id"])
        if current is None or values["version"] > current["version"]:
            latest[values["request_id"]] = values
    assert all(ref["model"] != "stale-copy" for ref in latest.values())
    return list(latest.values())


def _value(value: Any) -> struct_pb2.Value:
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, int | float):
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=value)


def cond(field: str, operator: str, value: Any, key: str = "") -> pb.FilterCondition:
    return pb.FilterCondition(field=field, operator=operator, value=_value(value), property_key=key)


def prop(ref: Ref, key: str) -> str:
    """The value of property `key`, named in any case (as the query API matches names)."""
    keys: list[str] = [name.lower() for name in ref["property_keys"]]
    return str(ref["property_values"][keys.index(key.lower())]) if key.lower() in keys else ""


def ttft(ref: Ref) -> int:
    return int(ref["time_to_first_token_ms"])


def matches_nothing(ref: Ref) -> bool:
    """The reference predicate of an injection attempt: no row."""
    return False


T5 = (BASE_SECONDS + 4 * 86_400) * 1_000_000

CASES: list[tuple[pb.FilterCondition, Callable[[Ref], bool]]] = [
    (cond("model", "equals", "gpt-4o"), lambda r: r["model"] == "gpt-4o"),
    (cond("model", "not_equals", "gpt-4o"), lambda r: r["model"] != "gpt-4o"),
    (cond("model", "contains", "4o"), lambda r: "4o" in r["model"]),
    (cond("model", "like", "gpt-%"), lambda r: r["model"].startswith("gpt-")),
    (cond("response_model", "ilike", "%CLAUDE%"), lambda r: "claude" in r["response_model"]),
    (cond("provider", "equals", "anthropic"), lambda r: r["provider"] == "anthropic"),
    (cond("path", "contains", "messages"), lambda r: "messages" in r["path"]),
    (cond("error", "ilike", "%context%"), lambda r: "context" in r["error"].lower()),
    (cond("finish_reason", "equals", "length"), lambda r: r["finish_reason"] == "length"),
    (
        cond("trace_id", "equals", "4bf92f3577b34da6a3ce929d0e0e4736"),
        lambda r: r["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736",
    ),
    (cond("user_id", "ilike", "élodie"), lambda r: r["user_id"] == "Élodie"),
    (cond("user_id", "equals", ""), lambda r: r["user_id"] == ""),
    (cond("api_key_id", "not_equals", "key-1"), lambda r: r["api_key_id"] != "key-1"),
    (cond("session_id", "equals", "session-3"), lambda r: r["session_id"] == "session-3"),
    (cond("session_path", "like", "/plan%"), lambda r: r["session_path"].startswith("/plan")),
    (cond("session_name", "contains", "run 1"), lambda r: "run 1" in r["session_name"]),
    (cond("prompt_id", "equals", "welcome"), lambda r: r["prompt_id"] == "welcome"),
    (cond("prompt_version", "not_equals", "1"), lambda r: r["prompt_version"] != "1"),
    (cond("status_code", "equals", 429), lambda r: r["status_code"] == 429),
    (cond("status_code", "not_equals", 200), lambda r: r["status_code"] != 200),
    (cond("status_code", "gte", 400), lambda r: r["status_code"] >= 400),
    (cond("latency_ms", "gt", 15_000), lambda r: r["latency_ms"] > 15_000),
    (cond("latency_ms", "lt", 1_000), lambda r: r["latency_ms"] < 1_000),
    (cond("latency_ms", "lte", 2_000), lambda r: r["latency_ms"] <= 2_000),
    (cond("time_to_first_token_ms", "lte", 1_000), lambda r: 0 <= ttft(r) <= 1_000),
    (cond("time_to_first_token_ms", "gt", 5_000), lambda r: ttft(r) > 5_000),
    (cond("prompt_tokens", "gt", 3_000), lambda r: r["prompt_tokens"] > 3_000),
    (cond("completion_tokens", "lt", 100), lambda r: r["completion_tokens"] < 100),
    (cond("total_tokens", "gte", "4000"), lambda r: r["total_tokens"] >= 4_000),
    (cond("cost_usd", "gte", "0.004"), lambda r: bool(r["priced"]) and r["cost_usd"] >= Decimal("0.004")),
    (cond("cost_usd", "lt", 0.001), lambda r: bool(r["priced"]) and r["cost_usd"] < Decimal("0.001")),
    (cond("created_at", "gte", "2026-01-05T00:00:00Z"), lambda r: r["created_at_us"] >= T5),
    (cond("created_at", "lt", "2026-01-05T00:00:00+00:00"), lambda r: r["created_at_us"] < T5),
    (cond("cache_hit", "equals", True), lambda r: r["cache_hit"] == 1),
    (cond("streamed", "not_equals", True), lambda r: r["streamed"] == 0),
    (cond("priced", "equals", False), lambda r: r["priced"] == 0),
    (cond("property", "equals", "search", "feature"), lambda r: prop(r, "feature") == "search"),
    (cond("property", "equals", "search", "FEATURE"), lambda r: prop(r, "feature") == "search"),
    (cond("property", "equals", "t-2", "tenant"), lambda r: prop(r, "tenant") == "t-2"),
    (cond("property", "not_equals", "prod", "env"), lambda r: prop(r, "env") != "prod"),
    (cond("property", "contains", "%", "feature"), lambda r: "%" in prop(r, "feature")),
    (cond("property", "like", "Summary\\_50\\%", "feature"), lambda r: prop(r, "feature") == "Summary_50%"),
    (cond("property", "ilike", "T-%", "tenant"), lambda r: prop(r, "tenant").startswith("t-")),
    # Injection attempts are plain values: they match nothing and change nothing.
    (cond("property", "equals", "' OR '1'='1", "x') OR 1=1 --"), matches_nothing),
    (cond("model", "equals", "gpt-4o' OR 1=1 --"), matches_nothing),
]


def compile_filter(request_filter: pb.RequestFilter) -> tuple[str, dict[str, Any]]:
    params = Params()
    violations = Violations()
    where = FilterCompiler(params, violations).compile(request_filter)
    violations.raise_if_any()
    return where, params.values


async def matching_ids(store: RequestStore, request_filter: pb.RequestFilter) -> set[str]:
    where, params = compile_filter(request_filter)
    page = await store.page(ORG, where, params, "created_at", False, None, 10_000)
    assert not page.has_more
    return {row.record.request_id for row in page.rows}


@pytest.mark.parametrize(("condition", "predicate"), CASES, ids=[f"{c.field}-{c.operator}" for c, _ in CASES])
async def test_every_operator_and_field_matches_the_python_reference(
    stores: dict[str, RequestStore],
    reference: list[Ref],
    condition: pb.FilterCondition,
    predicate: Callable[[Ref], bool],
) -> None:
    expected = {ref["request_id"] for ref in reference if predicate(ref)}
    if predicate is not matches_nothing:
        assert 0 < len(expected) < len(reference), "the case must separate rows to prove anything"
    for name, store in stores.items():
        assert await matching_ids(store, pb.RequestFilter(conditions=[condition])) == expected, name


async def test_a_filter_request_id_equals_finds_one(stores: dict[str, RequestStore], reference: list[Ref]) -> None:
    wanted = reference[5]["request_id"]
    for name, store in stores.items():
        ids = await matching_ids(store, pb.RequestFilter(conditions=[cond("request_id", "equals", wanted)]))
        assert ids == {wanted}, name


async def test_filter_tree_of_and_or_with_legacy_fields(stores: dict[str, RequestStore], reference: list[Ref]) -> None:
    tree = pb.RequestFilter(
        user_id="alice",
        any=[
            pb.RequestFilter(conditions=[cond("model", "equals", "gpt-4o")]),
            pb.RequestFilter(
                all=[
                    pb.RequestFilter(conditions=[cond("provider", "equals", "anthropic")]),
                    pb.RequestFilter(conditions=[cond("latency_ms", "gt", 5_000)]),
                ]
            ),
        ],
    )
    expected = {
        r["request_id"]
        for r in reference
        if r["user_id"] == "alice"
        and (r["model"] == "gpt-4o" or (r["provider"] == "anthropic" and r["latency_ms"] > 5_000))
    }
    assert expected
    for name, store in stores.items():
        assert await matching_ids(store, tree) == expected, name


def _sort_key(sort_field: str) -> Callable[[Ref], tuple[Any, str]]:
    column = SORT_COLUMNS[sort_field]
    return lambda r: (r[column], r["request_id"])


@pytest.mark.parametrize(
    ("sort_field", "ascending"),
    [("created_at", False), ("created_at", True), ("latency_ms", True), ("cost_usd", False), ("total_tokens", False)],
)
async def test_keyset_pages_cover_every_row_once_in_order(
    stores: dict[str, RequestStore], reference: list[Ref], sort_field: str, ascending: bool
) -> None:
    where, params = compile_filter(pb.RequestFilter(conditions=[cond("status_code", "equals", 200)]))
    expected = sorted(
        (r for r in reference if r["status_code"] == 200), key=_sort_key(sort_field), reverse=not ascending
    )
    for name, store in stores.items():
        seen: list[str] = []
        after: Position | None = None
        while True:
            page = await store.page(ORG, where, dict(params), sort_field, ascending, after, 37)
            seen.extend(row.record.request_id for row in page.rows)
            if not page.has_more:
                break
            last = page.rows[-1]
            after = Position(last.sort_keys[SORT_COLUMNS[sort_field]], last.record.request_id)
        assert seen == [r["request_id"] for r in expected], name


async def test_pages_stay_stable_while_rows_arrive(driver: DriverRunner) -> None:
    store = RequestStore(driver)
    first_batch = make_rows([PAGER_ORG], 300, seed=11)
    insert_rows(driver.client, first_batch)
    seen: list[tuple[int, str]] = []
    after: Position | None = None
    arrived = False
    while True:
        page = await store.page(PAGER_ORG, "1", {}, "created_at", False, after, 50)
        seen.extend((int(row.sort_keys["created_at_us"]), row.record.request_id) for row in page.rows)
        if not arrived:
            # New logs land (newer and older than the cursor) between the first and second page.
            insert_rows(driver.client, make_rows([PAGER_ORG], 100, seed=12))
            arrived = True
        if not page.has_more:
            break
        last = page.rows[-1]
        after = Position(last.sort_keys["created_at_us"], last.record.request_id)
    ids = [request_id for _, request_id in seen]
    assert len(ids) == len(set(ids)), "a row was returned twice"
    assert seen == sorted(seen, reverse=True)
    originals = {str(row[1]) for row in first_batch}
    assert originals <= set(ids), "a row present before paging started was skipped"


def reference_metrics(refs: list[Ref]) -> Metrics:
    latencies = sorted(int(r["latency_ms"]) for r in refs)
    ttfts = sorted(ttft(r) for r in refs if ttft(r) >= 0)
    return Metrics(
        request_count=len(refs),
        cost_usd=sum((r["cost_usd"] for r in refs if r["priced"]), Decimal(0)),
        unpriced_count=sum(1 for r in refs if not r["priced"]),
        prompt_tokens=sum(r["prompt_tokens"] for r in refs),
        completion_tokens=sum(r["completion_tokens"] for r in refs),
        total_tokens=sum(r["total_tokens"] for r in refs),
        latency_ms=exact_quantiles(latencies),
        ttft_ms=exact_quantiles(ttfts),
        error_count=sum(1 for r in refs if r["status_code"] >= 400 or r["error"]),
    )


def _python_quantile(values: list[int], level: float) -> float:
    """quantileExact's definition written out independently: the element at floor(level * n)."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(level * len(ordered)))]) if ordered else 0.0


START_US = (BASE_SECONDS + 86_400) * 1_000_000
END_US = (BASE_SECONDS + 8 * 86_400) * 1_000_000
GROUPINGS: dict[str, tuple[list[str], Callable[[Ref], tuple[Any, ...]]]] = {
    "total": ([], lambda r: ()),
    "model": (["model"], lambda r: (r["model"],)),
    "provider": (["provider"], lambda r: (r["provider"],)),
    "user": (["user_id"], lambda r: (r["user_id"],)),
    "property": ([PROPERTY_VALUE.format(key="%(group_key)s")], lambda r: (prop(r, "feature"),)),
    "day": (["intDiv(toUInt32(created_at), 86400) * 86400"], lambda r: (r["created_at"] // 86_400 * 86_400,)),
    "model-hour": (
        ["model", "intDiv(toUInt32(created_at), 3600) * 3600"],
        lambda r: (r["model"], r["created_at"] // 3_600 * 3_600),
    ),
}


@pytest.mark.parametrize("grouping", list(GROUPINGS))
async def test_each_aggregate_matches_the_python_reference(
    stores: dict[str, RequestStore], reference: list[Ref], grouping: str
) -> None:
    expressions, key_of = GROUPINGS[grouping]
    in_range = [r for r in reference if START_US <= r["created_at_us"] < END_US and r["status_code"] != 500]
    groups: dict[tuple[Any, ...], list[Ref]] = {}
    for ref in in_range:
        groups.setdefault(key_of(ref), []).append(ref)
    expected = {key: reference_metrics(refs) for key, refs in groups.items()}
    # The reference quantile is ClickHouse's definition; check it against an independent spelling.
    for refs in groups.values():
        metrics = reference_metrics(refs)
        assert metrics.latency_ms[1] == _python_quantile([r["latency_ms"] for r in refs], 0.95)
    for name, store in stores.items():
        params = Params()
        where = (
            f"created_at_us >= {params.bind(START_US)} AND created_at_us < {params.bind(END_US)}"
            f" AND status_code != {params.bind(500)}"
        )
        values = {**params.values, "group_key": "feature"}
        result = await store.metrics(ORG, where, values, expressions, 10_000)
        got = {tuple(_plain(key) for key in row.keys): row.metrics for row in result}
        assert got == expected, name


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, int) else str(value)


async def test_sessions_and_users_match_the_reference(stores: dict[str, RequestStore], reference: list[Ref]) -> None:
    by_session: dict[str, list[Ref]] = {}
    for ref in reference:
        if ref["session_id"]:
            by_session.setdefault(ref["session_id"], []).append(ref)
    expected_order = sorted(by_session, key=lambda s: (max(r["created_at_us"] for r in by_session[s]), s), reverse=True)
    by_user: dict[str, list[Ref]] = {}
    for ref in reference:
        by_user.setdefault(ref["user_id"], []).append(ref)
    for name, store in stores.items():
        sessions = await store.metrics(
            ORG, "session_id != ''", {}, ["session_id"], 100, order="last", label="max(session_name)"
        )
        assert [row.keys[0] for row in sessions] == expected_order, name
        for row in sessions:
            refs = by_session[row.keys[0]]
            assert row.metrics == reference_metrics(refs)
            assert row.label == max(r["session_name"] for r in refs)
            assert row.last_at_us == max(r["created_at_us"] for r in refs)
        users = await store.metrics(ORG, "1", {}, ["user_id"], 100, order="count")
        assert {row.keys[0]: row.metrics for row in users} == {u: reference_metrics(r) for u, r in by_user.items()}
        counts = [row.metrics.request_count for row in users]
        assert counts == sorted(counts, reverse=True), name


async def test_session_tree_is_built_by_path_with_totals(stores: dict[str, RequestStore], reference: list[Ref]) -> None:
    refs = [r for r in reference if r["session_id"] == "session-4"]
    trees = {}
    for name, store in stores.items():
        rows = await store.session_requests(ORG, "session-4", 10_000)
        trees[name] = session_tree([row.record for row in rows])
        params = Params()
        scanned = await store.rows(ORG, f"session_id = {params.bind('session-4')}", params.values, 10_000)
        assert [row.record for row in scanned] == [row.record for row in rows], "the session index missed rows"
    assert trees["chdb"] == trees["clickhouse-18.16"]
    root = trees["chdb"]
    assert root.metrics.request_count == len(refs)

    def walk(node: pb.SessionNode) -> Iterator[pb.SessionNode]:
        yield node
        for child in node.children:
            yield from walk(child)

    nodes = {node.path: node for node in walk(root)}
    for ref in refs:
        path = "/" + "/".join(part for part in ref["session_path"].split("/") if part)
        assert ref["request_id"] in {r.request_id for r in nodes[path].requests}
    plan = nodes["/plan"]
    under_plan = [r for r in refs if r["session_path"].startswith("/plan")]
    assert plan.metrics.request_count == len(under_plan)
    assert Decimal(plan.metrics.cost_usd) == sum((r["cost_usd"] for r in under_plan if r["priced"]), Decimal(0))
    assert [child.name for child in plan.children] == ["search"]


async def test_no_query_reaches_another_organization(stores: dict[str, RequestStore]) -> None:
    nobody = str(uuid.UUID(int=5))
    for name, store in stores.items():
        page = await store.page(nobody, "1", {}, "created_at", False, None, 100)
        assert page.rows == [], name
        assert await store.metrics(nobody, "1", {}, ["model"], 100) == [], name
        other = await store.page(OTHER_ORG, "1", {}, "created_at", False, None, 5)
        assert {row.record.organization_id for row in other.rows} == {OTHER_ORG}


async def test_only_the_newest_version_of_a_redelivered_log_is_visible(
    stores: dict[str, RequestStore], reference: list[Ref], rows: list[Row]
) -> None:
    duplicated = [str(row[1]) for row in rows if row[-1] == 1 and row[0] == ORG]
    assert duplicated
    for name, store in stores.items():
        page = await store.page(ORG, "1", {}, "created_at", False, None, 10_000)
        assert len(page.rows) == len(reference), name
        assert all(row.record.model != "stale-copy" for row in page.rows), name
        for request_id in duplicated[:5]:
            found = await store.get(ORG, uuid.UUID(request_id))
            assert found is not None, name
            assert found.record.model != "stale-copy", name


async def test_a_filter_matching_only_a_stale_copy_finds_nothing(
    stores: dict[str, RequestStore], reference: list[Ref], rows: list[Row]
) -> None:
    """Pages read every stored version without FINAL: the newest version alone must decide a match."""
    duplicated = {str(row[1]) for row in rows if row[-1] == 1 and row[0] == ORG}
    newest = next(ref for ref in reference if ref["request_id"] in duplicated)
    for name, store in stores.items():
        assert await matching_ids(store, pb.RequestFilter(conditions=[cond("model", "equals", "stale-copy")])) == set()
        same_time = pb.RequestFilter(
            conditions=[
                cond("model", "equals", newest["model"]),
                cond("request_id", "equals", newest["request_id"]),
            ]
        )
        assert await matching_ids(store, same_time) == {newest["request_id"]}, name


DEDUP_ORG = "44444444-4444-4444-8444-444444444444"
SPAN = (BASE_SECONDS * 1_000_000, (BASE_SECONDS + 11 * 86_400) * 1_000_000)


def _by_model(values: list[Ref]) -> dict[tuple[Any, ...], Metrics]:
    groups: dict[tuple[Any, ...], list[Ref]] = {}
    for ref in values:
        groups.setdefault((ref["model"],), []).append(ref)
    return {key: reference_metrics(refs) for key, refs in groups.items()}


async def _model_metrics(
    store: RequestStore, organization_id: str = DEDUP_ORG, span: tuple[int, int] = SPAN
) -> dict[tuple[Any, ...], Metrics]:
    params = Params()
    where = f"created_at_us >= {params.bind(span[0])} AND created_at_us < {params.bind(span[1])}"
    result = await store.metrics(organization_id, where, params.values, ["model"], 10_000, span=span)
    return {tuple(_plain(key) for key in row.keys): row.metrics for row in result}


def _versions(organization_id: str, seed: int) -> tuple[list[Row], list[Row], list[Ref]]:
    """Generated rows of one organization: the newest versions, the stale copies, and the newest as refs."""
    generated = make_rows([organization_id], 300, seed=seed)
    originals = [row for row in generated if row[-1] == 2]
    stale = [row for row in generated if row[-1] == 1]
    return originals, stale, [dict(zip(REQUEST_COLUMNS, row, strict=True)) for row in originals]


async def test_aggregates_skip_final_only_over_days_proven_free_of_copies(
    driver: DriverRunner, chdb: ChdbRunner
) -> None:
    originals, stale, refs = _versions(DEDUP_ORG, seed=21)
    for name, runner in (("clickhouse-18.16", driver), ("chdb", chdb)):
        store = RequestStore(runner)
        store_rows(runner, originals)
        assert await _model_metrics(store) == _by_model(refs), name
        proofs = await runner.fetch(
            "SELECT count() FROM request_dedup_checks WHERE organization_id = toUUID(%(o)s)", {"o": DEDUP_ORG}
        )
        assert int(proofs[0][0]) >= 10, f"{name}: the days were not proven free of copies"
        # A copy landing while the rows are read without FINAL is caught by the check after the read.
        redelivered = [(*row[:-1], 3) for row in originals[:5]]
        racing = InsertsDuringReads(runner, redelivered, "quantilesExact")
        assert await _model_metrics(RequestStore(racing)) == _by_model(refs), name
        assert not racing.copies, f"{name}: the rows were not read without FINAL"
        # A redelivery leaves older copies (another model here): the proofs no longer match those days,
        # which now hold copies, so they are read with FINAL and nothing is counted twice.
        store_rows(runner, stale)
        assert await _model_metrics(store) == _by_model(refs), name


async def test_ranked_groups_cut_by_the_limit_keep_the_top_ones(
    stores: dict[str, RequestStore], reference: list[Ref]
) -> None:
    """Ranked groups are chosen before their aggregates are computed: the kept ones must be the top ones."""
    by_user: dict[str, list[Ref]] = {}
    by_session: dict[str, list[Ref]] = {}
    for ref in reference:
        by_user.setdefault(ref["user_id"], []).append(ref)
        if ref["session_id"]:
            by_session.setdefault(ref["session_id"], []).append(ref)
    top_users = sorted(by_user, key=lambda user: (-len(by_user[user]), user))[:2]
    latest = sorted(by_session, key=lambda s: (-max(r["created_at_us"] for r in by_session[s]), s))[:3]
    for name, store in stores.items():
        users = await store.metrics(ORG, "1", {}, ["user_id"], 2, order="count")
        assert [row.keys[0] for row in users] == top_users, name
        assert [row.metrics for row in users] == [reference_metrics(by_user[user]) for user in top_users], name
        sessions = await store.metrics(ORG, "session_id != ''", {}, ["session_id"], 3, order="last")
        assert [row.keys[0] for row in sessions] == latest, name
        assert [row.metrics for row in sessions] == [reference_metrics(by_session[s]) for s in latest], name


async def test_distinct_requests_of_the_same_microsecond_are_not_taken_for_copies(
    driver: DriverRunner, chdb: ChdbRunner
) -> None:
    """Busy days hold same-microsecond pairs of distinct requests: their days must still be proven."""
    twins_org = "55555555-5555-4555-8555-555555555555"
    rows = [row for row in make_rows([twins_org], 40, seed=31) if row[-1] == 2]
    first = dict(zip(REQUEST_COLUMNS, rows[0], strict=True))
    twin = dict(zip(REQUEST_COLUMNS, rows[1], strict=True)) | {
        "created_at": first["created_at"],
        "created_at_us": first["created_at_us"],
    }
    rows[1] = tuple(twin[column] for column in REQUEST_COLUMNS)
    day = int(first["created_at"]) // 86_400
    for name, runner in (("clickhouse-18.16", driver), ("chdb", chdb)):
        store_rows(runner, rows)
        params = Params()
        where = f"created_at_us >= {params.bind(SPAN[0])} AND created_at_us < {params.bind(SPAN[1])}"
        result = await RequestStore(runner).metrics(twins_org, where, params.values, [], 1, span=SPAN)
        assert result[0].metrics.request_count == len(rows), name
        proofs = await runner.fetch(
            "SELECT count() FROM request_dedup_checks WHERE organization_id = toUUID(%(o)s) AND day = %(d)s",
            {"o": twins_org, "d": day},
        )
        assert int(proofs[0][0]) == 1, f"{name}: the day of two same-microsecond requests was not proven"


def _in_span(refs: list[Ref], span: tuple[int, int]) -> list[Ref]:
    return [ref for ref in refs if span[0] <= ref["created_at_us"] < span[1]]


async def test_remembered_part_fingerprints_spare_rereading_and_never_hide_new_copies(
    driver: DriverRunner, chdb: ChdbRunner
) -> None:
    """Once the days are proven, a repeated aggregate reads no row for the proof (the parts' fingerprints
    are remembered); a redelivery stored after that lands in a new part, which is read, so it is not missed."""
    organization_id = "66666666-6666-4666-8666-666666666666"
    originals, stale, refs = _versions(organization_id, seed=41)
    for name, runner in (("clickhouse-18.16", driver), ("chdb", chdb)):
        recording = RecordingRunner(runner)
        store = RequestStore(recording)
        store_rows(runner, originals)
        assert await _model_metrics(store, organization_id) == _by_model(refs), name
        # A background merge makes a new part, read once; the parts settle within a few calls.
        for _ in range(10):
            recording.statements.clear()
            assert await _model_metrics(store, organization_id) == _by_model(refs), name
            reads = [sql for sql in recording.statements if "FROM requests" in sql]
            if len(reads) == 1:
                break
        assert len(reads) == 1, (name, reads)
        assert "quantilesExact" in reads[0], name
        assert "FINAL" not in reads[0], name
        store_rows(runner, stale)
        assert await _model_metrics(store, organization_id) == _by_model(refs), name


async def test_part_fingerprints_remembered_for_some_days_are_read_again_for_others(
    driver: DriverRunner, chdb: ChdbRunner
) -> None:
    """A part read for the first days of a span says nothing of its later days: copies there still count."""
    organization_id = "77777777-7777-4777-8777-777777777777"
    originals, stale, refs = _versions(organization_id, seed=43)
    late_start = (BASE_SECONDS + 6 * 86_400) * 1_000_000
    late_stale = [row for row in stale if dict(zip(REQUEST_COLUMNS, row, strict=True))["created_at_us"] >= late_start]
    assert late_stale
    early = (SPAN[0], SPAN[0] + 5 * DAY_US)
    for name, runner in (("clickhouse-18.16", driver), ("chdb", chdb)):
        store = RequestStore(runner)
        store_rows(runner, originals)
        store_rows(runner, late_stale)
        assert await _model_metrics(store, organization_id, early) == _by_model(_in_span(refs, early)), name
        assert await _model_metrics(store, organization_id) == _by_model(refs), name
