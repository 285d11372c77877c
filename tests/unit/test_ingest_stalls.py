"""StallWatch: a call past its deadline marks its store stalled (metric, health callback) until one succeeds."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from candela_ingest.stalls import StallWatch, StoreStalled
from candela_runtime.errors import Unavailable

pytestmark = pytest.mark.unit


def _stalled(store: str) -> float | None:
    return REGISTRY.get_sample_value("candela_store_stalled", {"store": store})


def _timeouts(store: str, operation: str) -> float:
    return REGISTRY.get_sample_value("candela_store_timeouts_total", {"store": store, "operation": operation}) or 0.0


async def test_a_call_past_its_deadline_stalls_its_store_until_a_probe_succeeds() -> None:
    changes: list[bool] = []

    async def record(stalled: bool) -> None:
        changes.append(stalled)

    watch = StallWatch(record)
    assert _stalled("s3") == 0
    before = _timeouts("s3", "put")
    never = asyncio.Event()
    with pytest.raises(StoreStalled, match=r"s3 put took over 0\.1s"):
        await watch.call("s3", "put", 0.1, never.wait())
    assert (changes, _stalled("s3"), _timeouts("s3", "put") - before) == ([True], 1, 1)
    assert "s3" in watch.stalled

    async def still_down() -> None:
        raise Unavailable("S3 PUT probe failed")

    async def hangs() -> None:
        await asyncio.Event().wait()

    await watch.probe({"s3": still_down}, timeout_s=0.1)
    await watch.probe({"s3": hangs}, timeout_s=0.1)
    assert (changes, _stalled("s3")) == ([True], 1), "a failed or hung probe leaves the store stalled"

    async def answers() -> None:
        return None

    await watch.probe({"s3": answers}, timeout_s=0.1)
    assert (changes, _stalled("s3"), watch.stalled) == ([True, False], 0, {})


async def test_health_turns_back_only_when_every_stalled_store_answers() -> None:
    changes: list[bool] = []

    async def record(stalled: bool) -> None:
        changes.append(stalled)

    watch = StallWatch(record)
    await watch.timed_out("s3", "put", "PUT timed out")
    await watch.timed_out("kafka", "produce", "no acknowledgement")
    await watch.answered("s3")
    assert changes == [True], "Kafka is still stalled"
    assert (_stalled("s3"), _stalled("kafka")) == (0, 1)
    assert await watch.call("kafka", "commit", 1.0, asyncio.sleep(0, result="done")) == "done"
    assert changes == [True, False]
    assert _stalled("kafka") == 0


async def test_a_probe_past_its_deadline_shows_a_stall_without_traffic() -> None:
    changes: list[bool] = []

    async def record(stalled: bool) -> None:
        changes.append(stalled)

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def refused() -> None:
        raise ConnectionRefusedError("nothing listens")

    watch = StallWatch(record)
    await watch.probe({"s3": refused}, timeout_s=0.1)
    assert changes == [], "a store that refuses is down, not stalled: calls say so"
    await watch.probe({"s3": hangs}, timeout_s=0.1)
    assert (changes, _stalled("s3")) == ([True], 1)


def _worker_reports_stalled(metrics_dir: Path, store: str) -> int:
    """Runs a process like an ingest worker (PROMETHEUS_MULTIPROC_DIR set) that marks ``store`` stalled and
    exits; returns its PID."""
    script = (
        "import os\n"
        "from candela_ingest.stalls import STORE_STALLED\n"
        f"STORE_STALLED.labels(store={store!r}).set(1)\n"
        "print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_with_several_workers_a_stall_is_reported_once_and_not_after_its_worker_died(tmp_path: Path) -> None:
    """CANDELA_INGEST_WORKERS > 1: the supervisor's /metrics merges the workers' files. A stalled store reads
    1 (not one series per worker), and a worker that died stalled (and was restarted) stops reporting it."""
    first, second = (_worker_reports_stalled(tmp_path, "s3") for _ in range(2))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("candela_store_stalled", {"store": "s3"}) == 1.0
    multiprocess.mark_process_dead(first, str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("candela_store_stalled", {"store": "s3"}) == 1.0, "the other still stalls"
    multiprocess.mark_process_dead(second, str(tmp_path))  # type: ignore[no-untyped-call]
    assert registry.get_sample_value("candela_store_stalled", {"store": "s3"}) is None
