"""bench/ingest: logs/s from the Ingest RPC to rows visible in ClickHouse, S3 PUTs per log, p99 freshness.

Starts a test stack (infrastructure + ingest + writer; CANDELA_TEST_KAFKA_ENGINE=s3 for the durable
broker), then:
1. throughput: sends ``--logs`` logs (2 KiB of bodies each) in batches of ``--batch`` over ``--concurrency``
   calls and measures the time until every row is visible in ClickHouse;
2. freshness: sends at ``--rate`` logs/s for ``--seconds`` and polls ClickHouse for each sampled request id,
   reporting p50/p99 of (visible - sent).
Each run repeats ``--runs`` times; medians and spreads are printed. PUTs = packed objects written.
The default 400,000 logs keep the pipeline busy for ~15-20 s: a sustained rate. A short run is mostly its
ends (the stack warming up, the last batch's wait in the writers: ~1 s of a 5 s run of 100,000 logs).

Bodies (``--bodies``): ``json`` (default) is what an LLM call logs: a 1 KiB chat request and a 1 KiB chat
completion, JSON whose text differs from every other log's (slices of one long random stream of common
English words); ``random`` is incompressible bytes (the worst case for compression); ``repeated`` is the
same 1 KiB of one byte for every body, the load of the earlier result files (it compresses ~100x: no longer
a fair load once bodies are stored compressed).

CPU is accounted for every process on the machine (/proc), not only the stack's: Postgres (shared, started
before the session) and the kernel's workers (disk writeback, network) are part of what one log costs.

The stack's data lives under ``--data-dir`` (default ``<repo>/.candela-bench``, next to the dev stack's
``.candela``), not in the system temp dir: on these machines /tmp's ext4 block groups are crowded with
recently deleted inodes (every test run makes and removes its stack there) and creating a file in /tmp
cost 0.6-0.9 ms of kernel CPU, against ~0.05 ms under the repo; ClickHouse creates ~130 files per insert,
so a run in /tmp measured the directory more than Candela.

    uv run python bench/ingest/bench_ingest.py --runs 3

``--cluster`` runs it on the local 2x2 ClickHouse cluster (ZooKeeper, 2 shards x 2 replicas); ``--compare``
runs one server, then the cluster, in one run and writes both side by side to
bench/results/ingest-cluster-<UTC time>.md.

Workers (``--workers 1,2``): ingest with CANDELA_INGEST_WORKERS=1 and =2 side by side in one run. The bench
starts one ingest service per count on its own port (the stack's writers, Kafka, S3 and ClickHouse are
shared), then alternates them run by run (1, 2, then 2, 1, ...) so that a change in the machine's load
lands on both. Each of the ``--concurrency`` callers has a channel (an HTTP/2 connection) of its own, as
each proxy worker has: the kernel spreads connections, not calls, across the workers. Reported per count:
logs/s acknowledged by ingest (what its workers change), logs/s visible in ClickHouse, and CPU us per log
of the ingest processes (supervisor and workers) and of the machine; the freshness pass is skipped.

    uv run python bench/ingest/bench_ingest.py --workers 1,2 --runs 5

With ``--no-writers`` (workers mode) the stack runs no writer and no ClickHouse: the logs stop in Kafka,
only acknowledged logs/s are measured, and the cores are left to ingest and its stores (S3, Kafka), the
way ingest pods have nodes of their own in a deployment. On a 2-core machine that also runs the writers,
ClickHouse and the load generator, ingest never gets a core to itself, whatever its worker count.

    uv run python bench/ingest/bench_ingest.py --workers 1,2 --no-writers --concurrency 16 --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import httpx
from clickhouse_driver import Client

from candela.ingest.v1 import ingest_service_pb2 as pb
from candela.ingest.v1 import ingest_service_pb2_grpc
from candela.logs.v1 import log_record_pb2
from candela_runtime.security import service_metadata
from candela_stack import seaweed
from candela_stack.stack import Component, Stack, StackConfig

BODY_BYTES = 1024
"""Each of a log's two bodies (request and response): 2 KiB per log."""
REPO = Path(__file__).resolve().parents[2]
_VOCABULARY = (
    "the of and to a in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up other "
    "about out many then them these so some her would make like him into time has look two more write go see "
    "number no way could people my than first water been call who oil its now find long down day did get come "
    "made may part model token answer user system assistant content role prompt cost latency request response "
    "summary question context example reason result please explain code function data table query value list"
)


_REQUEST = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"TEXT"}],"temperature":0.7}'
_RESPONSE = (
    '{"id":"chatcmpl-ID","object":"chat.completion","created":1764720000,"model":"gpt-4o-mini-2024-07-18",'
    '"choices":[{"index":0,"message":{"role":"assistant","content":"TEXT"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":230,"completion_tokens":210,"total_tokens":440}}'
)


class Bodies:
    """Request and response bodies of ``BODY_BYTES`` each, of one kind (see the module docstring)."""

    def __init__(self, kind: str, seed: int = 7) -> None:
        self._random = random.Random(seed)
        self.kind = kind
        if kind == "json":
            # One long stream of words; each body's text is a slice at a random offset, so no two logs share
            # their text (as no two LLM calls do) while the text compresses like English prose.
            self._stream = " ".join(self._random.choices(_VOCABULARY.split(), k=2_000_000))
        elif kind not in ("random", "repeated"):
            raise ValueError(f"unknown body kind {kind!r}")

    def _text(self, length: int) -> str:
        start = self._random.randrange(len(self._stream) - length)
        return self._stream[start : start + length]

    def pair(self) -> tuple[bytes, bytes]:
        """A (request, response) pair, ``BODY_BYTES`` each."""
        if self.kind == "repeated":
            return b"x" * BODY_BYTES, b"x" * BODY_BYTES
        if self.kind == "random":
            return self._random.randbytes(BODY_BYTES), self._random.randbytes(BODY_BYTES)
        return self._json(_REQUEST), self._json(_RESPONSE.replace("ID", uuid.uuid4().hex[:24]))

    def _json(self, template: str) -> bytes:
        return template.replace("TEXT", self._text(BODY_BYTES - len(template) + len("TEXT"))).encode()


_API_KEY_ID = str(uuid.uuid4())
_TARGET_URL = "https://api.openai.com/v1/chat/completions"


def _batch(organization_id: str, size: int, bodies: Bodies) -> tuple[pb.IngestRequest, list[str]]:
    records = []
    ids = []
    now = datetime.now(UTC)
    for index in range(size):
        # What the proxy logs for a plain chat completion (candela_proxy.handler): ids, route, usage, cost,
        # the upstream attempt, a user and one custom property.
        record = log_record_pb2.LogRecord(
            request_id=str(uuid.uuid4()), organization_id=organization_id, api_key_id=_API_KEY_ID, provider="openai",
            model="gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", path="/v1/chat/completions",
            status_code=200, latency_ms=850 + index % 400,
            usage=log_record_pb2.TokenUsage(prompt_tokens=230, completion_tokens=210, total_tokens=440),
            cost_usd="0.0001605", user_id=f"user-{index % 500}", properties={"environment": "production"},
            finish_reason="stop", target_url=_TARGET_URL,
            attempts=[log_record_pb2.UpstreamAttempt(target_url=_TARGET_URL, status_code=200, latency_ms=840)],
        )  # fmt: skip
        record.created_at.FromDatetime(now)
        ids.append(record.request_id)
        request_body, response_body = bodies.pair()
        records.append(pb.IngestRecord(record=record, request_body=request_body, response_body=response_body))
    return pb.IngestRequest(records=records), ids


_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The PIDs of a process's children (a supervisor's workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_seconds(stack: Stack, extra: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process on the machine, from /proc, grouped: the
    stack's processes by name, ``extra`` (PID -> group), Postgres, the kernel's threads, this benchmark,
    and everything else."""
    names = {process.pid: process.name for process in stack.processes()}
    names.update(extra or {})
    names[os.getpid()] = "bench client"
    used: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        pid, parent = int(entry.name), int(fields[1])
        if pid in names:
            group = names[pid]
        elif command.startswith("postgres"):
            group = "postgres"
        elif parent == 2 or pid == 2:
            group = "kernel threads"
        else:
            group = "other"
        used[group] = used.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / _TICKS
    return used


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle so far (/proc/stat), interrupts included."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


async def _organization(stack: Stack) -> str:
    """A new organization (ingest refuses logs of organizations that do not exist)."""
    organization_id = str(uuid.uuid4())
    connection = await asyncpg.connect(stack.postgres_dsn)
    try:
        await connection.execute(
            "INSERT INTO organizations (id, name) VALUES ($1, 'bench')", uuid.UUID(organization_id)
        )
    finally:
        await connection.close()
    return organization_id


def _count(client: Client, organization_id: str) -> int:
    rows: Any = client.execute(
        "SELECT count() FROM requests WHERE organization_id = %(o)s", {"o": uuid.UUID(organization_id)}
    )
    return int(rows[0][0])


def _serialized_ingest(channel: grpc.aio.Channel) -> Any:
    """IngestService.Ingest taking an IngestRequest already serialized (bytes)."""
    return channel.unary_unary(
        "/candela.ingest.v1.IngestService/Ingest",
        request_serializer=None,
        response_deserializer=pb.IngestResponse.FromString,
    )


async def _settle(max_wait_s: float = 60.0) -> None:
    """Waits until the machine is quiet (below a tenth of one core busy over a second), at most
    ``max_wait_s``: the kernel discards and writes back what an earlier run deleted or wrote for many
    seconds (seen here: its threads took more CPU per log than a writer), which would be billed to this run."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        before = _machine_busy_seconds()
        await asyncio.sleep(1.0)
        if _machine_busy_seconds() - before < 0.1:
            return
    print(f"  (the machine did not settle within {max_wait_s:.0f}s)")


@dataclass
class Throughput:
    """One throughput run."""

    visible_per_s: float
    """Logs/s from the first call to the last row visible in ClickHouse."""
    acknowledged_per_s: float
    """Logs/s from the first call to the last acknowledgement (ingest alone)."""
    puts_per_log: float
    cpu_us_per_log: dict[str, float] = field(default_factory=dict)
    """CPU microseconds per log by process group, and "machine" (all cores, interrupts included)."""
    load: str = ""
    """`uptime`'s load averages when the run ended."""


@dataclass
class IngestService:
    """An ingest service the workers mode started: its supervisor (or only process) and its address."""

    workers: int
    address: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    logs_sent: int = 0

    def accepted(self) -> float:
        """candela_ingest_records_accepted_total on its /metrics (several workers: the supervisor's sum)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        return sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith("candela_ingest_records_accepted_total ")
        )

    @property
    def group(self) -> str:
        return f"ingest x{self.workers}"

    def pids(self) -> dict[int, str]:
        """PID -> CPU group of the supervisor and its workers."""
        return {pid: self.group for pid in (self.process.pid, *_children(self.process.pid))}

    def worker_cpu(self) -> list[float]:
        """CPU seconds used so far by each worker (the only process when there is one)."""
        pids = _children(self.process.pid) if self.workers > 1 else [self.process.pid]
        return [_process_cpu(pid) for pid in sorted(pids)]


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by one process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _load() -> str:
    """The 1, 5 and 15-minute load averages (other work shares these cores)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


async def throughput(
    stack: Stack,
    logs: int,
    batch: int,
    concurrency: int,
    bodies: Bodies,
    address: str | None = None,
    channel_per_caller: bool = False,
    extra_pids: dict[int, str] | None = None,
    settle_s: float = 60.0,
    wait_visible: bool = True,
) -> Throughput:
    """One run: ``logs`` logs to ingest at ``address`` (the stack's by default) over ``concurrency`` calls,
    on one shared channel or (``channel_per_caller``) one connection per caller."""
    address = address or stack.ingest_addr
    organization_id = await _organization(stack)
    metadata = service_metadata(stack.service_token)
    # Serialized beforehand: the load generator shares the 2 cores, and protobuf serialization of 2 MiB calls
    # cost it ~4 us per log (what the benchmark measures is Candela's cost, not the client's).
    requests = [_batch(organization_id, batch, bodies)[0].SerializeToString() for _ in range(logs // batch)]
    # A connection of its own per channel (gRPC otherwise shares one among channels to the same target).
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(address, options=options) for _ in range(concurrency if channel_per_caller else 1)
    ]
    for channel in channels:
        await channel.channel_ready()
    await _settle(settle_s)
    cpu_before = _cpu_seconds(stack, extra_pids)
    busy_before = _machine_busy_seconds()
    began = time.monotonic()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    retried = 0

    async def sender(channel: grpc.aio.Channel) -> None:
        nonlocal retried
        ingest = _serialized_ingest(channel)
        while not queue.empty():
            request = queue.get_nowait()
            try:
                await ingest(request, metadata=metadata, timeout=60)
            except grpc.aio.AioRpcError as err:
                if err.code() is not grpc.StatusCode.UNAVAILABLE:
                    raise
                retried += 1  # as the proxy does: a batch ingest could not store is sent again
                queue.put_nowait(request)

    await asyncio.gather(*(sender(channels[index % len(channels)]) for index in range(concurrency)))
    acknowledged_s = time.monotonic() - began
    for channel in channels:
        await channel.close(None)
    total = batch * len(requests)
    if wait_visible:
        client = Client(
            host=stack.clickhouse_host,
            port=stack.clickhouse_port,
            database=stack.clickhouse_database,
            user=stack.clickhouse_user,
            password=stack.clickhouse_password,
        )
        while await asyncio.to_thread(_count, client, organization_id) < total:  # noqa: ASYNC110 - polls another process
            await asyncio.sleep(0.05)
        client.disconnect()
    elapsed = time.monotonic() - began
    busy = _machine_busy_seconds() - busy_before
    cpu_after = _cpu_seconds(stack, extra_pids)
    shares = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    writers = [seconds for name, seconds in shares.items() if name.startswith("writer")]
    if len(writers) > 1:
        shares["writers together"] = sum(writers)
    profile = ", ".join(
        f"{name} {seconds / total * 1e6:.0f}"
        for name, seconds in sorted(shares.items(), key=lambda x: -x[1])
        if seconds / total * 1e6 >= 0.5
    )
    cores = os.cpu_count() or 1
    print(f"  CPU us per log: {profile}")
    print(f"  machine: {busy / total * 1e6:.0f} us of CPU per log, cores {busy / elapsed / cores:.0%} busy")
    s3 = seaweed.client(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    listing = s3.list_objects_v2(Bucket=stack.s3_bucket, Prefix=f"bodies/{organization_id}/")
    print(
        f"  ingest acknowledged {total:,} logs in {acknowledged_s:.2f}s ({total / acknowledged_s:,.0f} logs/s)"
        + (f"; {retried} calls answered UNAVAILABLE and sent again" if retried else "")
    )
    cpu_us = {name: seconds / total * 1e6 for name, seconds in shares.items()}
    cpu_us["machine"] = busy / total * 1e6
    return Throughput(total / elapsed, total / acknowledged_s, listing.get("KeyCount", 0) / total, cpu_us, _load())


async def freshness(stack: Stack, rate: int, seconds: float, bodies: Bodies) -> tuple[float, float, float]:
    """(p50 s, p99 s, achieved logs/s) from a batch sent to its rows visible, at ``rate`` logs/s (10 batches/s)."""
    organization_id = await _organization(stack)
    metadata = service_metadata(stack.service_token)
    per_batch = max(rate // 10, 1)
    client = Client(
        host=stack.clickhouse_host,
        port=stack.clickhouse_port,
        database=stack.clickhouse_database,
        user=stack.clickhouse_user,
        password=stack.clickhouse_password,
    )
    sent: list[tuple[float, int]] = []
    delays: list[float] = []
    # Built beforehand, so the sender keeps its pace; calls overlap (the rate does not wait on acks).
    batches = [_batch(organization_id, per_batch, bodies)[0] for _ in range(int(seconds * 10))]
    async with grpc.aio.insecure_channel(stack.ingest_addr) as channel:
        stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        calls: list[asyncio.Task[pb.IngestResponse]] = []

        async def call(request: pb.IngestRequest) -> pb.IngestResponse:
            response: pb.IngestResponse = await stub.Ingest(request, metadata=metadata, timeout=60)
            return response

        began = time.monotonic()
        total = 0
        for request in batches:
            tick = time.monotonic()
            calls.append(asyncio.create_task(call(request)))
            total += per_batch
            sent.append((tick, total))
            visible = await asyncio.to_thread(_count, client, organization_id)
            now = time.monotonic()
            while sent and sent[0][1] <= visible:
                delays.append(now - sent.pop(0)[0])
            await asyncio.sleep(max(0.0, tick + 0.1 - time.monotonic()))
        achieved = total / (time.monotonic() - began)
        await asyncio.gather(*calls)
        while sent:
            visible = await asyncio.to_thread(_count, client, organization_id)
            now = time.monotonic()
            while sent and sent[0][1] <= visible:
                delays.append(now - sent.pop(0)[0])
            await asyncio.sleep(0.02)
    client.disconnect()
    delays.sort()
    return delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))], achieved


@dataclass(frozen=True)
class ModeFigures:
    """One ClickHouse mode's runs: logs/s, PUTs per log, freshness p99 (s), and the load before it ran."""

    label: str
    rates: list[float]
    puts: list[float]
    p99s: list[float]
    load_before: float


async def run_mode(args: argparse.Namespace, cluster: bool, bodies: Bodies) -> ModeFigures:
    """``args.runs`` runs of throughput and freshness on a stack with one ClickHouse server or the cluster."""
    overrides: dict[str, Any] = {} if args.writers is None else {"writers": args.writers}
    if cluster:
        overrides["clickhouse_cluster"] = "candela"
    components = frozenset({Component.INGEST, Component.WRITER, Component.CLICKHOUSE, Component.S3, Component.KAFKA})
    label = "2x2 cluster" if cluster else "one server"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as data_dir:
        config = StackConfig.for_tests(
            Path(data_dir),
            components=components,
            env={"CANDELA_LOG_LEVEL": "WARNING", "CANDELA_DLQ_RETRY_DELAY_S": "1"},
            **overrides,
        )
        with Stack(config) as stack:
            print(
                f"broker engine: {config.kafka_engine}; writer processes: {config.writers}; bodies: {args.bodies}; "
                f"ClickHouse: {label}; data in {data_dir}"
            )
            figures = ModeFigures(label, [], [], [], os.getloadavg()[0])
            for run in range(args.runs):
                result = await throughput(stack, args.logs, args.batch, args.concurrency, bodies)
                rate, put = result.visible_per_s, result.puts_per_log
                p50, p99, achieved = await freshness(stack, args.rate, args.seconds, bodies)
                print(
                    f"run {run + 1}: {rate:,.0f} logs/s, {put:.4f} PUTs/log, freshness at {achieved:,.0f} logs/s "
                    f"p50 {p50:.2f}s p99 {p99:.2f}s"
                )
                figures.rates.append(rate)
                figures.puts.append(put)
                figures.p99s.append(p99)
            print(
                f"[{label}] median {statistics.median(figures.rates):,.0f} logs/s (min {min(figures.rates):,.0f}, "
                f"max {max(figures.rates):,.0f}); {statistics.median(figures.puts):.4f} PUTs/log; freshness at "
                f"{args.rate}/s p99 median {statistics.median(figures.p99s):.2f}s (min {min(figures.p99s):.2f}, "
                f"max {max(figures.p99s):.2f})"
            )
            return figures


async def run_workers(args: argparse.Namespace, counts: list[int], bodies: Bodies) -> None:
    """Workers mode: ingest services with each of ``counts`` workers, side by side on one stack's stores."""
    overrides: dict[str, Any] = {} if args.writers is None else {"writers": args.writers}
    if args.cluster:
        overrides["clickhouse_cluster"] = "candela"
    # The bench starts one ingest service per worker count itself, on the stack's stores.
    components = frozenset({Component.WRITER, Component.CLICKHOUSE, Component.S3, Component.KAFKA, Component.POSTGRES})
    if args.no_writers:
        components -= {Component.WRITER, Component.CLICKHOUSE}
    args.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as data_dir:
        config = StackConfig.for_tests(
            Path(data_dir),
            components=components,
            env={"CANDELA_LOG_LEVEL": "WARNING", "CANDELA_DLQ_RETRY_DELAY_S": "1"},
            **overrides,
        )
        with Stack(config) as stack:
            await compare_workers(stack, args, counts, bodies, Path(data_dir))


def write_report(command: str, args: argparse.Namespace, modes: list[ModeFigures]) -> Path:
    """bench/results/ingest-cluster-<UTC time>.md: the modes side by side, the first one as the baseline."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "bench" / "results" / f"ingest-cluster-{stamp}.md"
    baseline = statistics.median(modes[0].rates)
    lines = [
        "# Ingest throughput: one ClickHouse server and the local 2x2 cluster, one run (bench/ingest)",
        "",
        f"`{command}`, {time.ctime()} UTC, {os.cpu_count()} cores shared with other work.",
        "",
        f"| ClickHouse | logs/s (median of {args.runs}) | min / max | vs {modes[0].label} | PUTs per log"
        f" | freshness p99 at {args.rate:,} logs/s | load (1 min) before |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in modes:
        median = statistics.median(mode.rates)
        lines.append(
            f"| {mode.label} | {median:,.0f} | {min(mode.rates):,.0f} / {max(mode.rates):,.0f}"
            f" | {median / baseline:.2f}x | {statistics.median(mode.puts):.4f}"
            f" | {statistics.median(mode.p99s):.2f} s | {mode.load_before:.2f} |"
        )
    lines += [
        "",
        f"logs/s: {args.logs:,} logs of 2 KiB of bodies ({args.bodies}) sent in batches of {args.batch} over"
        f" {args.concurrency} concurrent calls, timed until every row is visible in ClickHouse (through the"
        " Distributed table on the cluster). Freshness: a log acknowledged by ingest until a query counts it,"
        f" at {args.rate:,} logs/s for {args.seconds:.0f} s. The cluster is ZooKeeper and four clickhouse-server"
        " processes on the same cores: it prices the Distributed/replicated path, not more hardware.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


async def main() -> None:
    """Runs the benchmark and prints medians and spreads."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--logs", type=int, default=400_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--writers", type=int, default=None, help="writer processes (default: the stack's, CANDELA_STACK_WRITERS)"
    )
    parser.add_argument("--bodies", choices=("json", "random", "repeated"), default="json")
    parser.add_argument(
        "--no-writers",
        action="store_true",
        help="workers mode: no writers, no ClickHouse; measure acknowledged logs/s only (see the module docstring)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="compare CANDELA_INGEST_WORKERS counts side by side, e.g. 1,2 (see the module docstring)",
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / ".candela-bench")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument(
        "--cluster",
        action="store_true",
        help="ClickHouse as a local 2x2 cluster (ZooKeeper, 2 shards x 2 replicas) instead of one server",
    )
    modes.add_argument(
        "--compare",
        action="store_true",
        help="one server, then the 2x2 cluster, in one run; writes bench/results/ingest-cluster-<time>.md",
    )
    args = parser.parse_args()
    counts = [int(count) for count in args.workers.split(",") if count.strip()]
    if args.no_writers and not counts:
        parser.error("--no-writers is a workers-mode option (--workers 1,2)")
    bodies = Bodies(args.bodies)
    if counts:
        await run_workers(args, counts, bodies)
        return
    clusters = [False, True] if args.compare else [args.cluster]
    figures = [await run_mode(args, cluster, bodies) for cluster in clusters]
    if args.compare:
        command = (
            f"uv run python bench/ingest/bench_ingest.py --logs {args.logs} --runs {args.runs} --rate {args.rate}"
            f" --seconds {args.seconds:g} --bodies {args.bodies} --compare"
        )
        print(f"report: {write_report(command, args, figures)}")


def _start_ingest(stack: Stack, workers: int, log: Path) -> IngestService:
    """An ingest service with CANDELA_INGEST_WORKERS=``workers`` on a free port, serving once it returns."""
    port, metrics_port = _free_port(), _free_port()
    env = {
        **stack.service_env(Component.INGEST),
        "CANDELA_GRPC_PORT": str(port),
        "CANDELA_METRICS_PORT": str(metrics_port),
        "CANDELA_INGEST_WORKERS": str(workers),
        "CANDELA_LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "candela_ingest"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return IngestService(workers, f"127.0.0.1:{port}", process, metrics_port)


async def _wait_serving(service: IngestService, timeout_s: float = 180.0) -> None:
    """Until every worker has started and the port answers health checks as SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.group} exited with {service.process.returncode}")
        started = service.workers == 1 or len(_children(service.process.pid)) >= service.workers
        if started:
            try:
                async with grpc.aio.insecure_channel(service.address) as channel:
                    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{service.group} did not serve within {timeout_s:.0f}s")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


async def compare_workers(
    stack: Stack, args: argparse.Namespace, counts: list[int], bodies: Bodies, log_dir: Path
) -> None:
    """Ingest with each worker count in ``counts``, alternating run by run (see the module docstring)."""
    services = {count: _start_ingest(stack, count, log_dir / f"ingest-x{count}.log") for count in counts}
    try:
        for service in services.values():
            await _wait_serving(service)
        print(
            f"workers {counts}; broker engine: {stack.config.kafka_engine};"
            f" writer processes: {0 if args.no_writers else stack.config.writers};"
            f" bodies: {args.bodies}; {args.logs:,} logs a run in batches of {args.batch} over {args.concurrency}"
            f" callers, a connection each; load before: {_load()}"
        )
        results: dict[int, list[Throughput]] = {count: [] for count in counts}
        for run in range(args.runs):
            for count in counts if run % 2 == 0 else list(reversed(counts)):
                extra: dict[int, str] = {}
                for service in services.values():
                    extra.update(service.pids())
                split_before = services[count].worker_cpu()
                result = await throughput(
                    stack,
                    args.logs,
                    args.batch,
                    args.concurrency,
                    bodies,
                    address=services[count].address,
                    channel_per_caller=True,
                    extra_pids=extra,
                    # Others share these cores: the machine may never settle; the alternating order (not a
                    # quiet machine) is what keeps the comparison fair.
                    settle_s=15.0,
                    wait_visible=not args.no_writers,
                )
                results[count].append(result)
                services[count].logs_sent += args.logs // args.batch * args.batch
                split = [
                    after - before for before, after in zip(split_before, services[count].worker_cpu(), strict=False)
                ]
                shares = "/".join(f"{part / (sum(split) or 1):.0%}" for part in split)
                visible = "" if args.no_writers else f" {result.visible_per_s:,.0f} logs/s visible;"
                print(
                    f"run {run + 1}, {count} ingest worker(s): {result.acknowledged_per_s:,.0f} logs/s acknowledged,"
                    f"{visible} ingest CPU"
                    f" {result.cpu_us_per_log.get(services[count].group, 0.0):.1f} us/log, machine"
                    f" {result.cpu_us_per_log['machine']:.1f} us/log; CPU split across workers {shares};"
                    f" load {result.load}",
                    flush=True,
                )
        base = counts[0]
        print("\n| ingest workers | acknowledged logs/s | visible logs/s | ingest CPU us/log | ingest cores busy"
              " | machine CPU us/log | acknowledged, ratio to 1st (per run pair) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for count in counts:
            runs = results[count]
            ratios = [
                mine.acknowledged_per_s / theirs.acknowledged_per_s
                for mine, theirs in zip(runs, results[base], strict=True)
            ]
            ingest_us = [r.cpu_us_per_log.get(services[count].group, 0.0) for r in runs]
            # Ingest works while it acknowledges: its CPU over that stretch, in cores.
            busy = [us * r.acknowledged_per_s / 1e6 for us, r in zip(ingest_us, runs, strict=True)]
            print(
                f"| {count} | {_spread([r.acknowledged_per_s for r in runs])} "
                f"| {'-' if args.no_writers else _spread([r.visible_per_s for r in runs])} "
                f"| {statistics.median(ingest_us):.1f} | {statistics.median(busy):.2f} "
                f"| {statistics.median(r.cpu_us_per_log['machine'] for r in runs):.1f} "
                f"| {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}) |"
            )
        print(f"load after: {_load()}")
        print(
            "/metrics against the logs sent: "
            + "; ".join(
                f"x{count}: {service.logs_sent:,} sent, candela_ingest_records_accepted_total {service.accepted():,.0f}"
                for count, service in services.items()
            )
        )
    finally:
        for service in services.values():
            service.process.terminate()
        for service in services.values():
            try:
                service.process.wait(60)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


if __name__ == "__main__":
    asyncio.run(main())
