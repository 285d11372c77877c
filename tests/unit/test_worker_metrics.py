"""A worker's metric values (candela_runtime.worker_metrics): the same files, read the same way, as
prometheus_client's own multiprocess values, and kept when the worker is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

pytestmark = pytest.mark.unit

# A worker's updates, then a SIGKILL: nothing is flushed or closed on the way out.
_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from candela_runtime import worker_metrics
    if sys.argv[1] == "ours":
        assert worker_metrics.install()
    from prometheus_client import Counter, Gauge, Histogram
    requests = Counter("requests", "Requests.", ["status"])
    duration = Histogram("duration_seconds", "Duration.", buckets=(0.01, 0.1, 1))
    depth = Gauge("depth", "Queue depth.", multiprocess_mode="livesum")
    worst = Gauge("worst", "At risk.", multiprocess_mode="livemax")
    for index in range(1000):
        requests.labels("2xx" if index % 10 else "5xx").inc()
        duration.observe(index / 2000)
    requests.labels("4xx").inc(2.5)
    depth.set(7)
    depth.inc(3)
    worst.set(1)
    # Series added after the file grew past its first page still land in it.
    for index in range(300):
        Counter(f"extra_{index}", "Extra.").inc(index)
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def _run_worker(directory: Path, values: str) -> int:
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", _WORKER, values], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return int(done.stdout)


def _exposition(directory: Path) -> list[str]:
    """The summed metrics of ``directory``, line by line (the order of the series is the files' own)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return sorted(generate_latest(registry).decode().splitlines())


def test_a_killed_workers_metrics_read_back_as_prometheus_clients_own(tmp_path: Path) -> None:
    ours_pid = _run_worker(tmp_path / "ours", "ours")
    theirs_pid = _run_worker(tmp_path / "theirs", "library")
    ours, theirs = _exposition(tmp_path / "ours"), _exposition(tmp_path / "theirs")
    assert ours == theirs
    text = "\n".join(ours)
    assert 'requests_total{status="2xx"} 900.0' in text
    assert 'requests_total{status="4xx"} 2.5' in text
    assert "duration_seconds_count 1000.0" in text
    assert 'duration_seconds_bucket{le="0.1"} 201.0' in text
    assert "depth 10.0" in text
    assert "extra_299_total 299.0" in text

    # A dead worker's live gauges leave the sums, its counters stay.
    multiprocess.mark_process_dead(ours_pid, str(tmp_path / "ours"))  # type: ignore[no-untyped-call]
    multiprocess.mark_process_dead(theirs_pid, str(tmp_path / "theirs"))  # type: ignore[no-untyped-call]
    ours, theirs = _exposition(tmp_path / "ours"), _exposition(tmp_path / "theirs")
    assert ours == theirs
    assert "depth 10.0" not in ours
    assert 'requests_total{status="2xx"} 900.0' in ours


def test_a_single_process_keeps_prometheus_clients_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from candela_runtime import worker_metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert not worker_metrics.install()


def test_a_proxy_worker_creates_every_metric_with_the_worker_class(tmp_path: Path) -> None:
    # The worker's start as candela_proxy/__main__ does it: nothing it imports before install() may create
    # a metric (that value would write the same file through a second mapping).
    script = textwrap.dedent(
        """
        from candela_proxy import supervisor
        from candela_runtime import worker_metrics
        assert worker_metrics.install()
        from candela_proxy import app, metrics
        from candela_runtime import metrics as runtime_metrics
        from candela_runtime.worker_metrics import WorkerValue
        values = [
            metrics.OVERHEAD._sum, metrics.LOGS_SENT._value, metrics.LOG_QUEUE_DEPTH._value,
            metrics.REQUESTS.labels("openai", "/v1/chat/completions", "2xx")._value,
            runtime_metrics.GRPC_HANDLED.labels("m", "OK")._value,
        ]
        assert all(isinstance(value, WorkerValue) for value in values), [type(value) for value in values]
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
