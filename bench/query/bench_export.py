"""Export benchmark: ExportRequests of 200,000 rows against a 20,000-row baseline in the same run.

Starts a private stack (Postgres, ClickHouse 18.16, SeaweedFS, AuthService, QueryService as its own
process), generates realistic rows with the query benchmark's generator (bench/query/run.py; the measured
organization holds ~20% of them), then exports the organization's newest rows through the real gRPC API
(with auth), CSV and JSONL, capped at the baseline and at the large size. For each export: rows/s, MB/s,
time to the first chunk, and the query process's peak RSS during that export (VmHWM, reset before each
export through /proc/<pid>/clear_refs; also sampled every 20 ms). An export streamed page by page keeps
the peak flat: the large/baseline ratio should be close to 1, not 10.

    uv run python bench/query/bench_export.py [--rows 1100000] [--baseline 20000] [--large 200000]

The figures go to bench/results/query-export-<UTC time>.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from clickhouse_driver import Client

from candela.query.v1 import query_service_pb2 as pb
from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Component, Stack, StackConfig

REPO = Path(__file__).resolve().parents[2]
FORMATS = {"CSV": pb.EXPORT_FORMAT_CSV, "JSONL": pb.EXPORT_FORMAT_JSONL}
SIZES = ("baseline", "large")


def _query_bench() -> Any:
    """bench/query/run.py as a module (its row generator)."""
    spec = importlib.util.spec_from_file_location("candela_bench_query", REPO / "bench" / "query" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


class RssWatch:
    """The peak resident memory of a process over a stretch of time: the kernel's high-water mark reset at
    the start (clear_refs 5), cross-checked by sampling VmRSS every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.hwm_reset = True

    def __enter__(self) -> RssWatch:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self.hwm_reset = False
        self.start_kib = _status_kib(self.pid, "VmRSS")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak_kib = max(self.sampled_peak_kib, _status_kib(self.pid, "VmRSS"))
            self._stop.wait(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = _status_kib(self.pid, "VmHWM") if self.hwm_reset else self.sampled_peak_kib


@dataclass(frozen=True)
class Measured:
    """One export's figures."""

    label: str
    format: str
    rows: int
    size: int
    seconds: float
    first_chunk_s: float
    start_rss_kib: int
    peak_kib: int
    sampled_peak_kib: int


async def export_once(stub: Any, key: str, label: str, format_name: str, max_rows: int, pid: int) -> Measured:
    request = pb.ExportRequestsRequest(format=FORMATS[format_name], max_rows=max_rows)
    lines = size = 0
    first = 0.0
    with RssWatch(pid) as watch:
        began = time.perf_counter()
        async for chunk in stub.ExportRequests(request, metadata=(("authorization", f"Bearer {key}"),)):
            if not first:
                first = time.perf_counter() - began
            size += len(chunk.data)
            # Line ends outside quotes are rows; no generated value holds a line break.
            lines += chunk.data.count(b"\n")
        seconds = time.perf_counter() - began
    rows = lines - 1 if format_name == "CSV" else lines
    if rows != max_rows:
        raise RuntimeError(f"{label} {format_name}: exported {rows:,} rows, expected {max_rows:,}")
    return Measured(
        label, format_name, rows, size, seconds, first, watch.start_kib, watch.peak_kib, watch.sampled_peak_kib
    )


async def measure(stack: Stack, key: str, pid: int, baseline: int, large: int) -> list[Measured]:
    results = []
    async with grpc.aio.insecure_channel(stack.query_addr) as channel:
        stub = query_service_pb2_grpc.QueryServiceStub(channel)
        # Warm-up: the first export pays for imports and connections, not for its size.
        await export_once(stub, key, "warm-up", "CSV", 2_000, pid)
        for format_name in FORMATS:
            for label, rows in (("baseline", baseline), ("large", large)):
                result = await export_once(stub, key, label, format_name, rows, pid)
                print(
                    f"  {format_name:5} {label:8} {result.rows:>8,} rows {result.seconds:6.1f} s"
                    f" {result.rows / result.seconds:>8,.0f} rows/s  peak RSS {result.peak_kib / 1024:6.1f} MiB",
                    flush=True,
                )
                results.append(result)
    return results


def write_report(args: argparse.Namespace, setup: list[str], results: list[Measured], load: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "bench" / "results" / f"query-export-{stamp}.md"
    table = [
        "| format | export | rows | seconds | rows/s | MB/s | first chunk (ms) | query RSS before (MiB) |"
        " peak RSS during (MiB, VmHWM) | peak RSS sampled (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        table.append(
            f"| {result.format} | {result.label} | {result.rows:,} | {result.seconds:.1f} |"
            f" {result.rows / result.seconds:,.0f} | {result.size / result.seconds / 1e6:.2f} |"
            f" {result.first_chunk_s * 1000:.0f} | {result.start_rss_kib / 1024:.1f} | {result.peak_kib / 1024:.1f} |"
            f" {result.sampled_peak_kib / 1024:.1f} |"
        )
    ratios = []
    for format_name in FORMATS:
        base, big = (next(r for r in results if (r.format, r.label) == (format_name, label)) for label in SIZES)
        ratios.append(
            f"- {format_name}: peak RSS {big.peak_kib / 1024:.1f} / {base.peak_kib / 1024:.1f} MiB ="
            f" **{big.peak_kib / base.peak_kib:.2f}x** for {big.rows / base.rows:.0f}x the rows;"
            f" throughput {big.rows / big.seconds:,.0f} vs {base.rows / base.seconds:,.0f} rows/s"
        )
    text = [
        f"# Export of {args.large:,} rows against {args.baseline:,} (ClickHouse 18.16, bench/query/bench_export.py)",
        "",
        f"`uv run python bench/query/bench_export.py --rows {args.rows} --baseline {args.baseline}"
        f" --large {args.large}`, {time.ctime()} UTC, {os.cpu_count()} cores shared with other work;"
        f" 1-minute load average {load} before measuring.",
        "",
        *[f"- {line}" for line in setup],
        "",
        *table,
        "",
        "Through the real QueryService over gRPC with auth, the organization's newest rows (created_at"
        " descending), one export after another in one query process (default CANDELA_EXPORT_PAGE_SIZE, 1,000"
        " rows a page and a chunk). Peak RSS is the query process's high-water mark during that export alone"
        " (reset before it); the client only counts bytes and lines.",
        "",
        "## Memory: large over baseline",
        "",
        *ratios,
        "",
    ]
    path.write_text("\n".join(text))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_100_000, help="rows generated (~20%% in the organization)")
    parser.add_argument("--baseline", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    args = parser.parse_args()
    query_bench = _query_bench()
    with tempfile.TemporaryDirectory(prefix="candela-bench-export-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp),
            components=frozenset(
                {Component.POSTGRES, Component.CLICKHOUSE, Component.S3, Component.AUTH, Component.QUERY}
            ),
        )
        with Stack(config) as stack:
            admin = stack.bootstrap()
            end = int(time.time()) // 3600 * 3600
            client = Client(
                host=stack.clickhouse_host,
                port=stack.clickhouse_port,
                database=stack.clickhouse_database,
                user=stack.clickhouse_user,
                password=stack.clickhouse_password,
                send_receive_timeout=600,
            )
            print(f"generating {args.rows:,} rows ...")
            seconds = query_bench.generate(
                client, admin.organization_id, args.rows, end - query_bench.SPAN_DAYS * 86_400
            )
            while client.execute("SELECT count() FROM system.merges WHERE table = 'requests'")[0][0]:
                time.sleep(2)
            total, mine = client.execute(
                "SELECT count(), countIf(organization_id = toUUID(%(org)s)) FROM requests",
                {"org": admin.organization_id},
            )[0]
            client.disconnect()
            if mine < args.large:
                raise SystemExit(f"the organization has {mine:,} rows, fewer than --large {args.large:,}: raise --rows")
            pid = stack.process_of(Component.QUERY).popen.pid
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            setup = [
                f"{total:,} rows ({mine:,} in the exported organization), generated in {seconds:.0f} s",
                f"query process (pid {pid}): `{command}`",
            ]
            print(setup[0])
            load = query_bench.load_text()
            results = asyncio.run(measure(stack, admin.api_key, pid, args.baseline, args.large))
            print(f"report: {write_report(args, setup, results, load)}")


if __name__ == "__main__":
    main()
