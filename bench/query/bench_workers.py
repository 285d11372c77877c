"""Query workers: req/s and p50/p99 of the five query shapes with CANDELA_QUERY_WORKERS=1 and =2, in one run.

Starts a private stack (Postgres database, ClickHouse 18.16, SeaweedFS, AuthService), generates ``--rows``
rows with the query benchmark's generator (bench/query/run.py: the measured organization holds ~20% of
them, plus 200 requests whose bodies are in S3), and starts one query service per worker count, each on a
port of its own. Then, for each shape and each round, it drives each service in turn (1, 2, then 2, 1, ...:
a change in the machine's load lands on both) with ``--concurrency`` closed-loop callers for ``--seconds``:
each caller has a channel (an HTTP/2 connection) of its own, as Envoy's threads and the proxy's workers do,
because the kernel spreads connections, not calls, across the workers.

Reported for each shape and count: req/s, p50 and p99 (milliseconds), median over rounds with min and max,
the 2-worker/1-worker ratio of req/s (per round pair), CPU per request of the query processes (supervisor
and workers), of ClickHouse and of the whole machine, and how many cores the query processes kept busy (one
process saturated reads ~1.0).

    uv run python bench/query/bench_workers.py [--rows 1000000] [--workers 1,2] [--concurrency 16]
        [--seconds 10] [--rounds 3]

The figures go to bench/results/query-workers-<UTC time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
from clickhouse_driver import Client
from grpc_health.v1 import health_pb2, health_pb2_grpc

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Component, Stack, StackConfig

REPO = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")
SHAPES = ("page", "cost by model by day", "session tree", "user metrics", "detail with bodies")


def _query_bench() -> Any:
    """bench/query/run.py as a module (its row generator and its five queries)."""
    spec = importlib.util.spec_from_file_location("candela_bench_query", REPO / "bench" / "query" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _load() -> str:
    """The 1, 5 and 15-minute load averages (other work shares these cores)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by one process; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle so far (/proc/stat), interrupts included."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICKS


@dataclass
class QueryService:
    """A query service with CANDELA_QUERY_WORKERS=``workers``: its supervisor (or only process), its address."""

    workers: int
    address: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    calls: int = 0
    """QueryService calls the bench made to it (for the check against its /metrics)."""

    def handled(self) -> float:
        """QueryService calls its /metrics counts (with several workers: the supervisor's sum of them all)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("candela_grpc_server_handled_total{") and "QueryService" in line:
                total += float(line.rpartition(" ")[2])
        return total

    def pids(self) -> list[int]:
        return [self.process.pid, *_children(self.process.pid)]

    def worker_pids(self) -> list[int]:
        return sorted(_children(self.process.pid)) if self.workers > 1 else [self.process.pid]


def start_query(stack: Stack, workers: int, log: Path) -> QueryService:
    port, metrics_port = _free_port(), _free_port()
    env = {
        **stack.service_env(Component.QUERY),
        "CANDELA_GRPC_PORT": str(port),
        "CANDELA_METRICS_PORT": str(metrics_port),
        "CANDELA_QUERY_WORKERS": str(workers),
        "CANDELA_LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "candela_query"], stdout=output, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    return QueryService(workers, f"127.0.0.1:{port}", process, metrics_port)


async def wait_serving(service: QueryService, timeout_s: float = 180.0) -> None:
    """Until every worker has started and the port answers health checks as SERVING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"query x{service.workers} exited with {service.process.returncode}")
        if service.workers == 1 or len(_children(service.process.pid)) >= service.workers:
            try:
                async with grpc.aio.insecure_channel(service.address) as channel:
                    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"query x{service.workers} did not serve within {timeout_s:.0f}s")


@dataclass
class Cell:
    """One shape against one service for ``--seconds``."""

    per_s: float
    p50_ms: float
    p99_ms: float
    query_cpu_ms: float
    """CPU milliseconds of the query processes per request."""
    clickhouse_cpu_ms: float
    machine_cpu_ms: float
    query_cores: float
    """Cores the query processes kept busy."""
    split: str
    """Each worker's share of the query processes' CPU."""
    load: str


def _calls(queries: Any, shape: str) -> Callable[[], Awaitable[None]]:
    return cast(
        Callable[[], Awaitable[None]],
        {
            "page": queries.page_grpc,
            "cost by model by day": queries.cost_by_model_by_day_grpc,
            "session tree": queries.session_grpc,
            "user metrics": queries.users_grpc,
            "detail with bodies": queries.detail_grpc,
        }[shape],
    )


async def drive(
    bench: Any,
    service: QueryService,
    shape: str,
    stack: Stack,
    context: dict[str, Any],
    concurrency: int,
    seconds: float,
) -> Cell:
    """``concurrency`` closed-loop callers, a connection each, calling ``shape`` for ``seconds``."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(service.address, options=options) for _ in range(concurrency)]
    for channel in channels:
        await channel.channel_ready()
    callers = []
    for index, channel in enumerate(channels):
        queries = bench.Queries(
            query_service_pb2_grpc.QueryServiceStub(channel),
            context["key"],
            None,
            context["org"],
            context["end"],
            context["session_ids"],
            context["detail_ids"],
        )
        queries.rng = random.Random(index)
        callers.append(_calls(queries, shape))
    for call in callers:  # warm-up: each connection's first call, and the service's caches
        await call()
    samples: list[float] = []
    clickhouse = stack.process_of(Component.CLICKHOUSE).pid
    pids = service.pids()
    workers = service.worker_pids()
    query_before = sum(_process_cpu(pid) for pid in pids)
    workers_before = [_process_cpu(pid) for pid in workers]
    clickhouse_before = _process_cpu(clickhouse)
    busy_before = _machine_busy_seconds()
    began = time.monotonic()
    stop_at = began + seconds

    async def caller(call: Callable[[], Awaitable[None]]) -> None:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(caller(call) for call in callers))
    elapsed = time.monotonic() - began
    service.calls += len(callers) + len(samples)
    query_s = sum(_process_cpu(pid) for pid in pids) - query_before
    worker_s = [_process_cpu(pid) - before for pid, before in zip(workers, workers_before, strict=True)]
    clickhouse_s = _process_cpu(clickhouse) - clickhouse_before
    busy = _machine_busy_seconds() - busy_before
    for channel in channels:
        await channel.close(None)
    samples.sort()
    count = len(samples)
    return Cell(
        per_s=count / elapsed,
        p50_ms=statistics.median(samples),
        p99_ms=samples[min(count - 1, int(0.99 * count))],
        query_cpu_ms=query_s / count * 1000,
        clickhouse_cpu_ms=clickhouse_s / count * 1000,
        machine_cpu_ms=busy / count * 1000,
        query_cores=query_s / elapsed,
        split="/".join(f"{part / (sum(worker_s) or 1):.0%}" for part in worker_s),
        load=_load(),
    )


def _spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


async def measure(
    bench: Any, stack: Stack, args: argparse.Namespace, context: dict[str, Any], log_dir: Path
) -> list[str]:
    counts = [int(count) for count in args.workers.split(",")]
    services = {count: start_query(stack, count, log_dir / f"query-x{count}.log") for count in counts}
    cells: dict[tuple[str, int], list[Cell]] = {}
    lines_metrics: list[str] = []
    try:
        for service in services.values():
            await wait_serving(service)
        for round_index in range(args.rounds):
            for shape in SHAPES:
                for count in counts if round_index % 2 == 0 else list(reversed(counts)):
                    cell = await drive(bench, services[count], shape, stack, context, args.concurrency, args.seconds)
                    cells.setdefault((shape, count), []).append(cell)
                    print(
                        f"round {round_index + 1} {shape:<22} x{count}: {cell.per_s:7.1f} req/s p50 {cell.p50_ms:6.1f}"
                        f" p99 {cell.p99_ms:6.1f} ms; CPU ms/req query {cell.query_cpu_ms:.2f} clickhouse"
                        f" {cell.clickhouse_cpu_ms:.2f} machine {cell.machine_cpu_ms:.2f}; query cores"
                        f" {cell.query_cores:.2f} split {cell.split}; load {cell.load}",
                        flush=True,
                    )
        for count, service in services.items():
            handled = service.handled()
            lines_metrics.append(f"x{count}: the bench made {service.calls:,} calls, /metrics counts {handled:,.0f}")
        print("metrics check: " + "; ".join(lines_metrics))
    finally:
        for service in services.values():
            service.process.terminate()
        for service in services.values():
            try:
                service.process.wait(60)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
    base = counts[0]
    lines = [
        "| shape | workers | req/s | ratio to x1 (per round) | p50 ms | p99 ms | query CPU ms/req | ClickHouse CPU "
        "ms/req | machine CPU ms/req | query cores busy | CPU split | load at the end (1/5/15 min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in SHAPES:
        for count in counts:
            runs = cells[(shape, count)]
            ratios = [mine.per_s / theirs.per_s for mine, theirs in zip(runs, cells[(shape, base)], strict=True)]
            lines.append(
                f"| {shape} | {count} | {_spread([c.per_s for c in runs], 1)} "
                f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"| {_spread([c.p50_ms for c in runs], 1)} | {_spread([c.p99_ms for c in runs], 1)} "
                f"| {statistics.median(c.query_cpu_ms for c in runs):.2f} "
                f"| {statistics.median(c.clickhouse_cpu_ms for c in runs):.2f} "
                f"| {statistics.median(c.machine_cpu_ms for c in runs):.2f} "
                f"| {statistics.median(c.query_cores for c in runs):.2f} | {runs[-1].split} | {runs[-1].load} |"
            )
    lines += ["", "/metrics against the calls made (QueryService methods of candela_grpc_server_handled_total): "
              + "; ".join(lines_metrics) + "."]  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="CANDELA_QUERY_WORKERS counts compared; the first is the base")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop callers, a connection each")
    parser.add_argument("--seconds", type=float, default=10.0, help="per shape, per worker count, per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bench = _query_bench()
    with tempfile.TemporaryDirectory(prefix="candela-bench-query-workers-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp),
            components=frozenset({Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH}),
            env={"CANDELA_LOG_LEVEL": "WARNING"},
        )
        with Stack(config) as stack:
            admin = stack.bootstrap()
            org = admin.organization_id
            end = int(time.time()) // 3600 * 3600
            start = end - bench.SPAN_DAYS * bench.DAY
            client = Client(
                host=stack.clickhouse_host,
                port=stack.clickhouse_port,
                database=stack.clickhouse_database,
                user=stack.clickhouse_user,
                password=stack.clickhouse_password,
                send_receive_timeout=600,
            )
            print(f"generating {args.rows:,} rows ...", flush=True)
            bench.generate(client, org, args.rows, start)
            detail_ids = bench.detail_sample(stack, client, org, start)
            settle_began = time.monotonic()
            while (
                time.monotonic() - settle_began < 300
                and client.execute("SELECT count() FROM system.merges WHERE table = 'requests'")[0][0]
            ):
                time.sleep(2)
            session_ids = [
                str(row[0])
                for row in client.execute(
                    "SELECT session_id FROM request_sessions WHERE organization_id = toUUID(%(org)s)"
                    " GROUP BY session_id ORDER BY cityHash64(session_id) LIMIT 500",
                    {"org": org},
                )
            ]
            client.disconnect()
            context = {
                "key": admin.api_key,
                "org": org,
                "end": end,
                "session_ids": session_ids,
                "detail_ids": detail_ids,
            }
            load_before = _load()
            began = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
            table = asyncio.run(measure(bench, stack, args, context, Path(tmp)))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "bench" / "results" / f"query-workers-{stamp}.md"
    command = (
        f"uv run python bench/query/bench_workers.py --rows {args.rows} --workers {args.workers}"
        f" --concurrency {args.concurrency} --seconds {args.seconds:g} --rounds {args.rounds}"
    )
    path.write_text(
        "\n".join(
            [
                f"# Query service with CANDELA_QUERY_WORKERS={args.workers.replace(',', ' and ')} in one run",
                "",
                f"`{command}`, {began} UTC to {time.strftime('%H:%M:%S', time.gmtime())}, {os.cpu_count()} cores"
                f" shared with other work; load average (1/5/15 min) before measuring: {load_before}.",
                "",
                *table,
                "",
                f"{args.rows:,} generated rows (bench/query/run.py's generator), ClickHouse 18.16 on the same"
                f" machine. Each cell: {args.concurrency} closed-loop callers, a connection each, for"
                f" {args.seconds:g} s, median over {args.rounds} rounds (min-max); the worker counts alternate"
                " in order round by round. CPU per request from /proc: the query processes (supervisor and"
                " workers), ClickHouse, and every core of the machine (other work included).",
                "",
            ]
        )
    )
    print("\n".join(table))
    print(f"report: {path}")


if __name__ == "__main__":
    main()
