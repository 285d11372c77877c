"""Query benchmark: 10 million realistic logged requests in ClickHouse 18.16, queried through QueryService.

Starts a private stack (Postgres database, ClickHouse 18.16, SeaweedFS, AuthService, QueryService) in a
temporary directory, generates the rows inside ClickHouse (INSERT ... SELECT over numbers(), hashed into
realistic values: 50 organizations, one with ~20% of the traffic, 12 models from 6 providers, 2,000
users per organization, properties, prompts, sessions of ~20 requests, 90 days), puts a few packed body
objects in S3 for the detail query, then times each query through the real gRPC API (with auth) and the
same store call in-process (no gRPC, no auth) to show where the time goes.

    uv run python bench/query/run.py [--rows 10000000] [--runs 100] [--rounds 3] [--chdb] [--cluster | --compare]

With --chdb the same store queries also run on modern ClickHouse in-process (chDB), same generated data.
With --cluster ClickHouse is the local 2x2 cluster (ZooKeeper, 2 shards x 2 replicas; the rows generated
through the Distributed table); --compare runs one server, then the cluster, in one run, and reports them
side by side.

Data lives in a temp dir removed at the end; the figures go to bench/results/query-<UTC time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import boto3
import grpc
from botocore.config import Config
from clickhouse_driver import Client
from clickhouse_driver.util.escape import escape_param
from google.protobuf import struct_pb2

from candela.logs.v1 import log_record_pb2
from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_ingest.writer.rows import clickhouse_row, insert_statement
from candela_query.clickhouse import ClickHouseReader, cluster_members
from candela_query.filters import FilterCompiler, Params, time_bound
from candela_query.store import RequestStore
from candela_runtime.errors import Violations
from candela_schema import migrator
from candela_schema.migrator import LOCAL_SUFFIX
from candela_stack.stack import BODIES_BUCKET, Component, Stack, StackConfig

DAY = 86_400
CLUSTER = "candela"
"""The local cluster's name with --cluster."""

SPAN_DAYS = 90
CHUNK = 1_000_000
MODELS = (
    ("openai", "gpt-4o-mini", 150, 600),
    ("openai", "gpt-4o-mini", 150, 600),
    ("openai", "gpt-4o-mini", 150, 600),
    ("openai", "gpt-4o", 2500, 10000),
    ("openai", "gpt-4o", 2500, 10000),
    ("openai", "o3-mini", 1100, 4400),
    ("anthropic", "claude-3-5-sonnet", 3000, 15000),
    ("anthropic", "claude-3-5-haiku", 800, 4000),
    ("google", "gemini-1.5-flash", 75, 300),
    ("mistral", "mistral-large", 2000, 6000),
    ("groq", "llama-3.1-70b", 0, 0),
    ("deepseek", "deepseek-chat", 270, 1100),
)
FEATURES = ("chat", "search", "summarise", "onboarding", "agent", "extract")
SESSION_SIZE = 64  # consecutive numbers per session slot; ~35% of them are in the session (~22 requests)


def _array(values: list[str]) -> str:
    return "[" + ", ".join(f"'{value}'" for value in values) + "]"


def generation_sql(main_org: str, offset: int, count: int, start: int) -> str:
    """One INSERT ... SELECT of ``count`` rows (numbers offset..offset+count) computed by the server."""
    providers = _array([m[0] for m in MODELS])
    models = _array([m[1] for m in MODELS])
    price_in = "[" + ", ".join(str(m[2]) for m in MODELS) + "]"
    price_out = "[" + ", ".join(str(m[3]) for m in MODELS) + "]"
    width = len(MODELS)
    columns = (
        "organization_id, request_id, created_at, created_at_us, api_key_id, provider, model, response_model,"
        " path, status_code, error, streamed, latency_ms, time_to_first_token_ms, prompt_tokens,"
        " completion_tokens, total_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,"
        " audio_prompt_tokens, audio_completion_tokens, cost_usd, priced, user_id, session_id, session_path,"
        " session_name, property_keys, property_values, prompt_id, prompt_version, cache_hit, finish_reason,"
        " request_body_omitted, response_body_omitted, request_body_key, request_body_offset,"
        " request_body_length, response_body_key, response_body_offset, response_body_length, version"
    )
    # Rows of one session share the organization, user and a start time; the rest are independent.
    return f"""
INSERT INTO requests ({columns})
SELECT
    if(cityHash64(key, 1) % 100 < 20, toUUID('{main_org}'),
       toUUID(concat('00000000-0000-4000-8000-0000000000', toString(10 + cityHash64(key, 1) % 49)))) AS org,
    toUUID(UUIDNumToString(toFixedString(concat(reinterpretAsString(cityHash64(n, 2)),
        reinterpretAsString(cityHash64(n, 3))), 16))),
    toDateTime({start} + cityHash64(key, 4) % ({SPAN_DAYS * DAY} - 3600) + if(in_session, (n % {SESSION_SIZE}) * 20, 0))
        AS created,
    toUInt64(toUInt32(created)) * 1000000 + cityHash64(n, 5) % 1000000,
    concat('key-', toString(cityHash64(key, 1) % 7)),
    {providers}[model_index],
    {models}[model_index],
    concat({models}[model_index], '-2025'),
    if({providers}[model_index] = 'anthropic', '/v1/messages', '/v1/chat/completions'),
    status,
    if(status >= 400, 'upstream error', ''),
    streamed,
    latency,
    if(streamed = 1 AND status = 200, toInt32(latency * (5 + cityHash64(n, 10) % 30) / 100), -1),
    prompt_tokens,
    completion_tokens,
    prompt_tokens + completion_tokens,
    if(cityHash64(n, 13) % 10 = 0, intDiv(prompt_tokens, 2), 0),
    0, 0, 0, 0,
    toDecimal64((prompt_tokens * {price_in}[model_index] + completion_tokens * {price_out}[model_index])
        / 1000000000, 12),
    if({price_in}[model_index] > 0, 1, 0),
    concat('user-', toString(cityHash64(key, 14) % 2000)),
    if(in_session, concat('sess-', toString(key)), ''),
    if(in_session, ['/', '/plan', '/plan/search', '/plan/search/fetch', '/answer'][1 + cityHash64(n, 16) % 5], ''),
    if(in_session, concat('Run ', toString(key % 1000)), ''),
    ['env', 'feature', 'tenant'],
    [['prod', 'prod', 'prod', 'staging', 'dev'][1 + cityHash64(n, 17) % 5],
     {_array(list(FEATURES))}[1 + cityHash64(n, 18) % {len(FEATURES)}],
     concat('t-', toString(cityHash64(key, 19) % 200))],
    if(cityHash64(n, 20) % 3 = 0, ['welcome', 'summarise', 'classify'][1 + cityHash64(n, 21) % 3], ''),
    if(cityHash64(n, 20) % 3 = 0, toString(1 + cityHash64(n, 22) % 4), ''),
    if(cityHash64(n, 23) % 20 = 0, 1, 0),
    ['stop', 'stop', 'stop', 'length', 'tool_calls'][1 + cityHash64(n, 24) % 5],
    0, 0,
    concat('bodies/', toString(org), '/pack-', toString(intDiv(n, 500))), (n % 500) * 4096, 1800,
    concat('bodies/', toString(org), '/pack-', toString(intDiv(n, 500))), (n % 500) * 4096 + 2048, 1500,
    1
FROM (
    SELECT
        n, key, in_session,
        1 + cityHash64(n, 6) % {width} AS model_index,
        multiIf(cityHash64(n, 7) % 1000 < 15, 500, cityHash64(n, 7) % 1000 < 40, 429,
                cityHash64(n, 7) % 1000 < 50, 400, 200) AS status,
        toUInt8(cityHash64(n, 8) % 2) AS streamed,
        toUInt32(150 + cityHash64(n, 9) % 4000 + if(cityHash64(n, 9) % 97 = 0, 25000, 0)) AS latency,
        toUInt32(20 + cityHash64(n, 11) % 3000) AS prompt_tokens,
        toUInt32(cityHash64(n, 12) % 800) AS completion_tokens
    FROM (
        SELECT
            number + {offset} AS n,
            cityHash64(n, 15) % 100 < 35 AS in_session,
            if(in_session, intDiv(n, {SESSION_SIZE}), n + 1000000000000) AS key
        FROM numbers({count})
    )
)
"""


def generate(client: Client, main_org: str, rows: int, start: int) -> float:
    """Fills the requests table; returns seconds taken."""
    began = time.perf_counter()
    for offset in range(0, rows, CHUNK):
        client.execute(generation_sql(main_org, offset, min(CHUNK, rows - offset), start))
        print(f"  {offset + min(CHUNK, rows - offset):>10,} rows  {time.perf_counter() - began:6.1f} s", flush=True)
    return time.perf_counter() - began


def detail_sample(stack: Stack, client: Client, org: str, start: int, count: int = 200) -> list[str]:
    """``count`` requests whose bodies really are in S3 (two packed objects, ranged reads)."""
    s3: Any = boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        aws_access_key_id=stack.config.s3_access_key,
        aws_secret_access_key=stack.config.s3_secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    rng = random.Random(5)
    rows = []
    ids = []
    for pack in range(2):
        key = f"bodies/{org}/bench-pack-{pack}"
        blob = bytearray()
        for index in range(count // 2):
            request_body = ('{"model":"gpt-4o","messages":[{"role":"user","content":"' + "x" * 1500 + '"}]}').encode()
            response_body = ('{"choices":[{"message":{"content":"' + "y" * 1200 + '"}}]}').encode()
            record = log_record_pb2.LogRecord(
                request_id=str(uuid.uuid4()),
                organization_id=org,
                provider="openai",
                model="gpt-4o",
                status_code=200,
                latency_ms=rng.randint(200, 3000),
                user_id=f"user-{index}",
            )
            record.created_at.FromSeconds(start + rng.randint(0, SPAN_DAYS * DAY - 1))
            message = log_record_pb2.LogMessage(record=record)
            message.request_body.object_key = key
            message.request_body.offset = len(blob)
            message.request_body.length = len(request_body)
            blob += request_body
            message.response_body.object_key = key
            message.response_body.offset = len(blob)
            message.response_body.length = len(response_body)
            blob += response_body
            rows.append(clickhouse_row(message, version=1))
            ids.append(record.request_id)
        s3.put_object(Bucket=BODIES_BUCKET, Key=key, Body=bytes(blob))
    client.execute(insert_statement(), rows)
    return ids


def _value(text: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=text)


class Queries:
    """The five queries of the issue, each as a gRPC call and as the same in-process store call."""

    def __init__(
        self,
        stub: query_service_pb2_grpc.QueryServiceAsyncStub,
        key: str,
        store: RequestStore,
        org: str,
        end: int,
        session_ids: list[str],
        detail_ids: list[str],
    ) -> None:
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.store = store
        self.org = org
        self.end = end
        self.session_ids = session_ids
        self.detail_ids = detail_ids
        self.rng = random.Random(1)

    def _page_request(self) -> pb.QueryRequestsRequest:
        _, model, _, _ = self.rng.choice(MODELS)
        days_back = self.rng.randint(0, 60)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.end - (days_back + 7) * DAY))
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.end - days_back * DAY))
        return pb.QueryRequestsRequest(
            limit=50,
            filter=pb.RequestFilter(
                conditions=[
                    pb.FilterCondition(field="created_at", operator="gte", value=_value(since)),
                    pb.FilterCondition(field="created_at", operator="lt", value=_value(until)),
                    pb.FilterCondition(field="model", operator="equals", value=_value(model)),
                    pb.FilterCondition(
                        field="property",
                        property_key="feature",
                        operator="equals",
                        value=_value(self.rng.choice(FEATURES)),
                    ),
                ]
            ),
        )

    async def page_grpc(self) -> None:
        await self.stub.QueryRequests(self._page_request(), metadata=self.metadata)

    async def page_store(self, store: RequestStore | None = None) -> None:
        request = self._page_request()
        params = Params()
        where = FilterCompiler(params, Violations()).compile(request.filter)
        await (store or self.store).page(self.org, where, params.values, "created_at", False, None, 50)

    def _range(self, days: int) -> tuple[int, int]:
        shift = self.rng.randint(0, 50) * DAY
        return self.end - shift - days * DAY, self.end - shift

    async def cost_by_model_by_day_grpc(self) -> None:
        start, end = self._range(30)
        request = pb.AggregateRequestsRequest(
            group_by=[pb.GROUP_BY_MODEL, pb.GROUP_BY_TIME], time_bucket=pb.TIME_BUCKET_DAY
        )
        request.start.FromSeconds(start)
        request.end.FromSeconds(end)
        await self.stub.AggregateRequests(request, metadata=self.metadata)

    async def cost_by_model_by_day_store(self, store: RequestStore | None = None) -> None:
        start, end = self._range(30)
        params = Params()
        where = f"{time_bound('>=', start * 1_000_000, params)} AND {time_bound('<', end * 1_000_000, params)}"
        groups = ["model", "intDiv(toUInt32(created_at), 86400) * 86400"]
        span = (start * 1_000_000, end * 1_000_000)
        await (store or self.store).metrics(self.org, where, params.values, groups, 10_000, span=span)

    async def session_grpc(self) -> None:
        session_id = self.rng.choice(self.session_ids)
        await self.stub.GetSession(pb.GetSessionRequest(session_id=session_id), metadata=self.metadata)

    async def session_store(self, store: RequestStore | None = None) -> None:
        await (store or self.store).session_requests(self.org, self.rng.choice(self.session_ids), 10_000)

    async def users_grpc(self) -> None:
        start, end = self._range(30)
        request = pb.QueryUserMetricsRequest(limit=100)
        request.start.FromSeconds(start)
        request.end.FromSeconds(end)
        await self.stub.QueryUserMetrics(request, metadata=self.metadata)

    async def users_store(self, store: RequestStore | None = None) -> None:
        start, end = self._range(30)
        params = Params()
        where = f"{time_bound('>=', start * 1_000_000, params)} AND {time_bound('<', end * 1_000_000, params)}"
        span = (start * 1_000_000, end * 1_000_000)
        await (store or self.store).metrics(self.org, where, params.values, ["user_id"], 100, order="count", span=span)

    async def detail_grpc(self) -> None:
        request_id = self.rng.choice(self.detail_ids)
        response = await self.stub.GetRequest(pb.GetRequestRequest(request_id=request_id), metadata=self.metadata)
        assert len(response.request_body) > 1000, "the body was not read back"

    async def detail_store(self, store: RequestStore | None = None) -> None:
        await (store or self.store).get(self.org, uuid.UUID(self.rng.choice(self.detail_ids)))


async def timed(call: Callable[[], Awaitable[None]], runs: int, warmup: int = 3) -> tuple[float, float]:
    """(p50, p99) in milliseconds over ``runs`` sequential calls."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


def load_text() -> str:
    """The machine's 1-minute load average (others share these 2 cores: say how busy it was)."""
    return f"{os.getloadavg()[0]:.2f}"


Summary = dict[str, tuple[float, float]]
"""gRPC p50 (median of rounds) and p99 (median round's) in ms, by query."""


async def measure(
    stack: Stack, key: str, org: str, end: int, detail_ids: list[str], runs: int, rounds: int, cluster: str = ""
) -> tuple[list[str], Summary]:
    """Each query ``rounds`` times (``runs`` calls each): the median and the best round's p50, and the
    median round's p99, through gRPC; the store alone; the store with no duplicate handling at all
    (neither FINAL nor proofs: what the duplicate handling costs). Returns the report's table lines and
    the gRPC figures by query."""
    reader = ClickHouseReader(
        stack.clickhouse_host,
        stack.clickhouse_port,
        stack.clickhouse_database,
        2,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
        cluster=cluster,
    )
    session_rows = await reader.fetch(
        "SELECT session_id FROM request_sessions WHERE organization_id = toUUID(%(org)s)"
        " GROUP BY session_id ORDER BY cityHash64(session_id) LIMIT 500",
        {"org": org},
    )
    lines = [
        "| query | target p50 | gRPC p50 (median of rounds) | gRPC p50 (best round) | gRPC p99 | store p50 "
        "| FINAL always p50 | no dedup p50 | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    members = (
        await cluster_members(
            reader,
            cluster,
            stack.clickhouse_database,
            connections=2,
            user=stack.clickhouse_user,
            password=stack.clickhouse_password,
        )
        if cluster
        else None
    )
    summary: Summary = {}
    async with grpc.aio.insecure_channel(stack.query_addr) as channel:
        queries = Queries(
            query_service_pb2_grpc.QueryServiceStub(channel),
            key,
            RequestStore(reader, cluster_members=members),  # as the query service runs it
            org,
            end,
            [str(row[0]) for row in session_rows],
            detail_ids,
        )
        no_dedup = RequestStore(reader, final=False)
        final_always = RequestStore(reader, copy_free_proofs=False)
        cases: list[tuple[str, str, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]], Any]] = [
            (
                "filtered page (org + 7 days + model + property)",
                "<= 50",
                queries.page_grpc,
                queries.page_store,
                queries.page_store,
            ),
            (
                "cost by model by day, 30 days",
                "<= 100",
                queries.cost_by_model_by_day_grpc,
                queries.cost_by_model_by_day_store,
                queries.cost_by_model_by_day_store,
            ),
            ("session tree", "<= 25", queries.session_grpc, queries.session_store, queries.session_store),
            (
                "user metrics, 30 days (top 100 users)",
                "<= 100",
                queries.users_grpc,
                queries.users_store,
                queries.users_store,
            ),
            (
                "request detail with bodies (S3 ranged GETs)",
                "<= 20",
                queries.detail_grpc,
                queries.detail_store,
                queries.detail_store,
            ),
        ]
        print()
        print(lines[0])
        for name, target, through_grpc, in_process, store_call in cases:
            grpc_rounds = [await timed(through_grpc, runs) for _ in range(rounds)]
            store_p50, _ = await timed(in_process, runs)
            plain_p50, _ = await timed(functools.partial(store_call, no_dedup), max(10, runs // 4))
            final_p50, _ = await timed(functools.partial(store_call, final_always), max(10, runs // 4))
            p50s = sorted(p50 for p50, _ in grpc_rounds)
            p99 = statistics.median(p99 for _, p99 in grpc_rounds)
            line = (
                f"| {name} | {target} | {statistics.median(p50s):.1f} | {p50s[0]:.1f} | {p99:.1f} | {store_p50:.1f}"
                f" | {final_p50:.1f} | {plain_p50:.1f} | {load_text()} |"
            )
            lines.append(line)
            summary[name] = (statistics.median(p50s), p99)
            print(line, flush=True)
    for member in members or []:
        member.reader.close()
    reader.close()
    return lines, summary


MODES = {"": "one server", CLUSTER: "2x2 cluster"}
"""The ClickHouse of each mode, by cluster name ("" for one server)."""


@dataclass(frozen=True)
class ModeResult:
    """One mode's run: its setup lines, its full table, and its gRPC figures."""

    cluster: str
    setup: list[str]
    table: list[str]
    summary: Summary
    load_before: str


def write_report(rows: int, runs: int, rounds: int, command: str, results: list[ModeResult]) -> Path:
    """bench/results/query-<UTC time>.md with each mode's setup and table, and both side by side."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = "query-cluster" if len(results) > 1 else "query"
    path = Path(__file__).resolve().parents[1] / "results" / f"{name}-{stamp}.md"
    text = [
        f"# Query latency on {rows:,} rows (ClickHouse 18.16, bench/query/run.py)",
        "",
        f"`{command}`, {time.ctime()} UTC, {os.cpu_count()} cores shared with other work.",
        "",
    ]
    if len(results) > 1:
        baseline, *others = results
        header = "| query | " + " | ".join(f"{MODES[r.cluster]} gRPC p50 / p99" for r in results)
        header += "".join(f" | p50 {MODES[r.cluster]} / {MODES[baseline.cluster]}" for r in others) + " |"
        text += [
            "## Side by side (gRPC, ms)",
            "",
            header,
            "|---" * (1 + len(results) + len(others)) + "|",
        ]
        for query in baseline.summary:
            cells = [f"{r.summary[query][0]:.1f} / {r.summary[query][1]:.1f}" for r in results]
            ratios = [f"{r.summary[query][0] / baseline.summary[query][0]:.2f}x" for r in others]
            text.append(f"| {query} | " + " | ".join(cells + ratios) + " |")
        text.append("")
    for result in results:
        text += [
            f"## {MODES[result.cluster]}" if len(results) > 1 else "",
            "",
            f"1-minute load average {result.load_before} before measuring.",
            "",
            *[f"- {line}" for line in result.setup],
            "",
            *result.table,
            "",
        ]
    text += [
        "Milliseconds. gRPC = through the real QueryService with auth (detail includes the two S3 ranged GETs);"
        f" each round is {runs} sequential calls after 3 warm-up calls; p50 is given as the median and the best"
        " of the rounds, p99 as the median round's. store = the same query in-process (no gRPC, no auth, no"
        " bodies). FINAL always = the store with no copy-free proofs (every aggregate read with FINAL, as the"
        " cluster mode did before the proofs covered it; the same as store for the row reads). no dedup = the"
        " store with neither FINAL nor copy proofs: not exact under redelivered copies, shown only to price"
        " the duplicate handling.",
        "",
    ]
    path.write_text("\n".join(text))
    return path


class ChdbStore:
    """Modern ClickHouse in-process (chDB) with the shipped migrations, for the same store queries."""

    def __init__(self, data_dir: Path) -> None:
        from chdb import session  # only with --chdb: a large optional test dependency

        session_class: Any = session.Session
        self._session: Any = session_class(str(data_dir))
        version = self._rows("SELECT version()")[0][0]
        self._session.query("CREATE DATABASE IF NOT EXISTS candela")
        self._session.query("USE candela")
        for migration in migrator.load(migrator.CLICKHOUSE):
            for statement in migrator.render_clickhouse(migration, migrator.clickhouse_gates(version, "candela")):
                self._session.query(statement)
        self.version = str(version)

    def _rows(self, sql: str) -> list[list[Any]]:
        text = self._session.query(sql + " SETTINGS output_format_json_quote_64bit_integers = 0", "JSONCompact")
        data: list[list[Any]] = json.loads(text.bytes())["data"] if text.bytes() else []
        return data

    def execute(self, sql: str) -> None:
        """Runs a statement (no result)."""
        self._session.query(sql)

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` with ``params`` escaped exactly as clickhouse-driver escapes them."""
        escaped = {key: escape_param(value, None) for key, value in params.items()}
        return [tuple(row) for row in self._rows(sql % escaped)]

    def close(self) -> None:
        """Ends the session."""
        self._session.close()


async def measure_chdb(rows: int, runs: int, end: int, data_dir: Path) -> None:
    """The same store queries on modern ClickHouse (chDB 26.x, in-process: no server, no gRPC)."""
    org = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
    chdb = ChdbStore(data_dir)
    began = time.perf_counter()
    for offset in range(0, rows, CHUNK):
        chdb.execute(generation_sql(org, offset, min(CHUNK, rows - offset), end - SPAN_DAYS * DAY))
    print(f"\nchDB {chdb.version}: {rows:,} rows generated in {time.perf_counter() - began:.0f} s")
    sessions = await chdb.fetch(
        "SELECT session_id FROM request_sessions WHERE organization_id = toUUID(%(org)s)"
        " GROUP BY session_id ORDER BY cityHash64(session_id) LIMIT 500",
        {"org": org},
    )
    ids = await chdb.fetch(
        "SELECT toString(request_id) FROM request_times WHERE organization_id = toUUID(%(org)s) LIMIT 500", {"org": org}
    )
    queries = Queries(
        cast(Any, None), "", RequestStore(chdb), org, end, [str(r[0]) for r in sessions], [str(r[0]) for r in ids]
    )
    no_final = RequestStore(chdb, final=False)
    print(f"{'query (chDB, in-process store)':<48} {'p50':>8} {'p99':>8} {'no FINAL p50':>13}")
    for name, call in (
        ("filtered page", queries.page_store),
        ("cost by model by day, 30 days", queries.cost_by_model_by_day_store),
        ("session tree (rows)", queries.session_store),
        ("user metrics, 30 days", queries.users_store),
        ("request detail (row, no bodies)", queries.detail_store),
    ):
        p50, p99 = await timed(call, runs)
        plain, _ = await timed(functools.partial(call, no_final), max(10, runs // 4))
        print(f"{name:<48} {p50:>8.1f} {p99:>8.1f} {plain:>13.1f}", flush=True)
    chdb.close()


def settle(stack: Stack, cluster: str, local_table: str) -> float:
    """Waits (at most 300 s) until no background merge runs and, on a cluster, every replica fetched every
    part, on every ClickHouse server; returns seconds waited."""
    layout = stack.clickhouse_cluster_layout
    ports = [member.tcp_port for member in layout.members] if cluster and layout else [stack.clickhouse_port]
    clients = [
        Client(
            host=stack.clickhouse_host,
            port=port,
            database=stack.clickhouse_database,
            user=stack.clickhouse_user,
            password=stack.clickhouse_password,
        )
        for port in ports
    ]
    pending = f"SELECT count() FROM system.merges WHERE table = '{local_table}'"
    if cluster:
        pending = f"SELECT ({pending}) + (SELECT count() FROM system.replication_queue WHERE table = '{local_table}')"
    began = time.perf_counter()
    while time.perf_counter() - began < 300 and any(client.execute(pending)[0][0] for client in clients):
        time.sleep(2)
    for client in clients:
        client.disconnect()
    return time.perf_counter() - began


def run_mode(rows: int, runs: int, rounds: int, cluster: str) -> ModeResult:
    """Starts a stack (one ClickHouse server, or the 2x2 cluster), generates ``rows`` and measures."""
    # The table whose parts and merges are on each server: in cluster mode `requests` is a Distributed table.
    local_table = f"requests{LOCAL_SUFFIX}" if cluster else "requests"
    with tempfile.TemporaryDirectory(prefix="candela-bench-query-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp),
            components=frozenset(
                {Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH, Component.QUERY}
            ),
            clickhouse_cluster=cluster,
        )
        with Stack(config) as stack:
            admin = stack.bootstrap()
            org = admin.organization_id
            end = int(time.time()) // 3600 * 3600
            start = end - SPAN_DAYS * DAY
            client = Client(
                host=stack.clickhouse_host,
                port=stack.clickhouse_port,
                database=stack.clickhouse_database,
                user=stack.clickhouse_user,
                password=stack.clickhouse_password,
                send_receive_timeout=600,
                # Rows generated through the Distributed table land on the shards before the measurement.
                settings={"insert_distributed_sync": 1} if cluster else None,
            )
            print(
                f"[{MODES[cluster]}] generating {rows:,} rows into ClickHouse"
                f" {client.execute('SELECT version()')[0][0]} ..."
            )
            seconds = generate(client, org, rows, start)
            detail_ids = detail_sample(stack, client, org, start)
            # Measure the steady state, not the minutes right after a bulk load: let the background merges
            # of the freshly inserted parts (and, on a cluster, the replicas' fetches) finish first, bounded,
            # as they would on a live server.
            settled = settle(stack, cluster, local_table)
            parts = client.execute(f"SELECT count() FROM system.parts WHERE active AND table = '{local_table}'")[0][0]
            where = "on the first server" if cluster else ""
            print(f"background merges settled in {settled:.0f} s ({parts} active parts{where and ' ' + where})")
            total, main_rows = client.execute(
                "SELECT count(), countIf(organization_id = toUUID(%(org)s)) FROM requests", {"org": org}
            )[0]
            parts_sql = f"FROM system.parts WHERE active AND table = '{local_table}'"
            size = client.execute(f"SELECT sum(bytes_on_disk) {parts_sql}")[0][0]
            setup = [
                f"{total:,} rows ({main_rows:,} in the measured organization), {size / 2**30:.2f} GiB on disk"
                f"{' ' + where if where else ''}, generated in {seconds:.0f} s ({total / seconds:,.0f} rows/s)",
                f"{parts} active parts{' ' + where if where else ''} after background merges settled ({settled:.0f} s)",
                "ClickHouse: "
                + (
                    "a local 2x2 cluster (ZooKeeper, 2 shards x 2 replicas, all on this machine), rows generated"
                    " through the Distributed table"
                    if cluster
                    else "one server"
                ),
            ]
            print(setup[0])
            client.disconnect()
            load_before = load_text()
            table, summary = asyncio.run(measure(stack, admin.api_key, org, end, detail_ids, runs, rounds, cluster))
            return ModeResult(cluster, setup, table, summary, load_before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --runs calls per query (median and best)")
    parser.add_argument("--chdb", action="store_true", help="also run the store queries on chDB (modern ClickHouse)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--cluster",
        action="store_true",
        help=f"ClickHouse as a local 2x2 cluster ({CLUSTER!r}: ZooKeeper, 2 shards x 2 replicas) instead of one server",
    )
    modes.add_argument(
        "--compare", action="store_true", help="one server, then the 2x2 cluster, in one run: side by side"
    )
    args = parser.parse_args()
    clusters = ["", CLUSTER] if args.compare else [CLUSTER if args.cluster else ""]
    flags = " --compare" if args.compare else " --cluster" if args.cluster else ""
    command = f"uv run python bench/query/run.py --rows {args.rows} --runs {args.runs} --rounds {args.rounds}{flags}"
    results = [run_mode(args.rows, args.runs, args.rounds, cluster) for cluster in clusters]
    print(f"report: {write_report(args.rows, args.runs, args.rounds, command, results)}")
    if args.chdb:
        with tempfile.TemporaryDirectory(prefix="candela-bench-chdb-") as tmp:
            asyncio.run(measure_chdb(args.rows, args.runs, int(time.time()) // 3600 * 3600, Path(tmp) / "chdb"))


if __name__ == "__main__":
    main()
