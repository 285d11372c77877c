"""How many workers a service runs (CANDELA_INGEST_WORKERS, CANDELA_QUERY_WORKERS, CANDELA_PROXY_WORKERS)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from candela_runtime.workers import cpu_limit_cores, grpc_workers, worker_count

pytestmark = pytest.mark.unit

VARIABLE = "CANDELA_QUERY_WORKERS"


def test_one_worker_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    assert grpc_workers(VARIABLE) == 1
    monkeypatch.setenv(VARIABLE, " 3 ")
    assert grpc_workers(VARIABLE) == 3
    monkeypatch.setenv(VARIABLE, "0")
    assert grpc_workers(VARIABLE) == worker_count(0)  # one per core: test_one_per_core_is_capped_by_...


def test_a_service_sets_its_own_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest defaults to one per core (CANDELA_INGEST_WORKERS unset), query to one; the variable wins."""
    monkeypatch.delenv(VARIABLE, raising=False)
    assert grpc_workers(VARIABLE, default=0) == worker_count(0)
    monkeypatch.setenv(VARIABLE, "1")
    assert grpc_workers(VARIABLE, default=0) == 1


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_count_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(ValueError, match=VARIABLE):
        grpc_workers(VARIABLE)


@pytest.mark.parametrize(
    ("files", "cores"),
    [
        ({"cpu.max": "100000 100000\n"}, 1),  # a Kubernetes limit of 1 CPU (cgroup v2)
        ({"cpu.max": "150000 100000\n"}, 2),  # 1500m: a second worker uses the half core left
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no control group to read
    ],
)
def test_a_containers_cpu_limit_in_cores(tmp_path: Path, files: dict[str, str], cores: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit_cores(tmp_path) == cores


def test_one_per_core_is_capped_by_the_containers_cpu_limit(tmp_path: Path) -> None:
    """0 (one per core) in a pod limited to 1 CPU on a bigger node runs one worker, not one per node core."""
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert worker_count(0, tmp_path) == 1
    assert worker_count(4, tmp_path) == 4, "an explicit count is taken as given"
    (tmp_path / "cpu.max").write_text("6400000 100000\n")
    assert worker_count(0, tmp_path) == len(os.sched_getaffinity(0)), "the cores it may run on still cap it"
