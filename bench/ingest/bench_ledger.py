"""The writers' Postgres ledger per log: the day-partitioned ledger (migration 0007) against the single table
before it, side by side in one run.

    uv run python -m bench.ingest.bench_ledger [--rounds 10] [--batch 20000] [--baseline-commit f1dce73]

Two scratch databases on the machine's Postgres: one migrated up to 0006 and counted by the ledger code of
``--baseline-commit`` (read with ``git show``, so this needs the repository's history), one migrated fully
and counted by this checkout's :class:`~candela_ingest.writer.postgres.PostgresUsageLedger`. Each round
counts, in each database in turn, one batch of ``--batch`` new logs of one organization (the steady state:
every log newly counted) and then a copy of the batch (a redelivery: every log counted before). The cost is
the Postgres backend's CPU (``/proc/<pid>/stat``, one connection per ledger) and the wall time of each
counting, per log; medians over the rounds and their spread (max - min), and the ratio new / baseline.

What it does not show: the tables stay small (in memory), so the extra index reads of the new ledger (the
day before and after each batch's day) cost CPU here, not the disk reads they cost at a billion rows a day.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg

from candela.logs.v1 import log_record_pb2
from candela_ingest.writer import postgres as current_postgres
from candela_ingest.writer.daily_usage import BatchRequests
from candela_ingest.writer.rows import request_columns
from candela_schema import migrator

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
_LEDGER_MODULE = "services/ingest/src/candela_ingest/writer/postgres.py"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _baseline_module(commit: str) -> ModuleType:
    """The ledger module as it was at ``commit`` (its imports resolve to this checkout's modules)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:{_LEDGER_MODULE}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader("candela_ingest_baseline_postgres", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    exec(compile(source, f"{commit}:{_LEDGER_MODULE}", "exec"), module.__dict__)
    return module


def _backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)


def _batch(organization_id: str, size: int) -> BatchRequests:
    now = datetime.now(UTC)
    messages = []
    for _ in range(size):
        record = log_record_pb2.LogRecord(
            request_id=str(uuid.uuid4()),
            organization_id=organization_id,
            provider="openai",
            model="gpt-4o-mini",
            status_code=200,
            cost_usd="0.000150",
            usage=log_record_pb2.TokenUsage(prompt_tokens=100, completion_tokens=20, total_tokens=120),
        )
        record.created_at.FromDatetime(now)
        messages.append(log_record_pb2.LogMessage(record=record))
    return BatchRequests.of(request_columns(messages, 1))


@dataclass
class _Ledger:
    name: str
    dsn: str
    make: Callable[[asyncpg.Pool], Any]
    pool: asyncpg.Pool | None = None
    pid: int = 0

    async def start(self) -> None:
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=1)
        self.pid = int(await self.pool.fetchval("SELECT pg_backend_pid()"))
        self.ledger = self.make(self.pool)

    async def count(self, batch: BatchRequests) -> tuple[float, float, int]:
        """(backend CPU s, wall s, newly counted) of one counting."""
        cpu, wall = _backend_cpu_s(self.pid), time.perf_counter()
        async with self.ledger.counting(batch) as outcome:
            newly = int(outcome.newly_counted)
        return _backend_cpu_s(self.pid) - cpu, time.perf_counter() - wall, newly


async def _database(admin: asyncpg.Connection, admin_dsn: str, before: str | None) -> str:
    name = f"candela_bench_ledger_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    shipped = migrator.load(migrator.POSTGRES)
    await migrator._apply_postgres(dsn, [m for m in shipped if before is None or m.name < before])
    return dsn


async def run(admin_dsn: str, rounds: int, batch_size: int, baseline_commit: str) -> dict[str, dict[str, list[float]]]:
    baseline = _baseline_module(baseline_commit)
    admin = await asyncpg.connect(admin_dsn)
    ledgers = [
        _Ledger(f"baseline ({baseline_commit}, one table)", await _database(admin, admin_dsn, "0007"),
                baseline.PostgresUsageLedger),
        _Ledger("by day (0007)", await _database(admin, admin_dsn, None), current_postgres.PostgresUsageLedger),
    ]  # fmt: skip
    samples: dict[str, dict[str, list[float]]] = {
        ledger.name: {"new cpu": [], "new wall": [], "copy cpu": [], "copy wall": []} for ledger in ledgers
    }
    try:
        for ledger in ledgers:
            await ledger.start()
            await ledger.count(_batch(str(uuid.uuid4()), batch_size))  # warm-up: plans, caches
        for _ in range(rounds):
            organization_id = str(uuid.uuid4())
            batch = _batch(organization_id, batch_size)
            for ledger in ledgers:
                cpu, wall, newly = await ledger.count(batch)
                assert newly == batch_size, (ledger.name, newly)
                samples[ledger.name]["new cpu"].append(cpu / batch_size * 1e6)
                samples[ledger.name]["new wall"].append(wall / batch_size * 1e6)
                cpu, wall, newly = await ledger.count(batch)
                assert newly == 0, (ledger.name, newly)
                samples[ledger.name]["copy cpu"].append(cpu / batch_size * 1e6)
                samples[ledger.name]["copy wall"].append(wall / batch_size * 1e6)
    finally:
        for ledger in ledgers:
            if ledger.pool is not None:
                await ledger.pool.close()
            await admin.execute(f'DROP DATABASE IF EXISTS "{ledger.dsn.rsplit("/", 1)[1]}"')
        await admin.close()
    return samples


def main() -> None:
    """Measures and writes bench/results/ledger-<time>.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--baseline-commit", default="f1dce73")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    load_before = os.getloadavg()
    samples = asyncio.run(run(args.postgres_dsn, args.rounds, args.batch, args.baseline_commit))
    load_after = os.getloadavg()
    names = list(samples)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    command = " ".join(["uv run python -m bench.ingest.bench_ledger", *sys.argv[1:]])
    lines = [
        f"# Postgres ledger per log: by day against one table ({args.rounds} rounds of {args.batch:,} logs)",
        "",
        f"`{command}`, {stamp}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after (2 cores).",
        "",
        "| us per log (median, spread max-min) | " + " | ".join(names) + " | ratio |",
        "|---|---|---|---|",
    ]
    for measure in ("new cpu", "new wall", "copy cpu", "copy wall"):
        medians = [statistics.median(samples[name][measure]) for name in names]
        cells = [
            f"{median:.2f} ({max(samples[name][measure]) - min(samples[name][measure]):.2f})"
            for name, median in zip(names, medians, strict=True)
        ]
        label = {"new": "new logs", "copy": "copies (redelivery)"}[measure.split()[0]]
        kind = "Postgres backend CPU" if measure.endswith("cpu") else "wall time of the counting"
        lines.append(f"| {label}: {kind} | " + " | ".join(cells) + f" | {medians[1] / medians[0]:.2f}x |")
    lines += [
        "",
        "Small tables (all in memory): the by-day ledger's extra index reads (the day before and after each",
        "batch's day) cost CPU here, not the disk reads they cost at a billion rows a day.",
    ]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ledger-{stamp}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


if __name__ == "__main__":
    main()
