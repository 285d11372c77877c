"""How many workers a gRPC service runs (CANDELA_INGEST_WORKERS, CANDELA_QUERY_WORKERS)."""

from __future__ import annotations

import os

import pytest

from candela_runtime.workers import grpc_workers

pytestmark = pytest.mark.unit

VARIABLE = "CANDELA_QUERY_WORKERS"


def test_one_worker_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    assert grpc_workers(VARIABLE) == 1
    monkeypatch.setenv(VARIABLE, " 3 ")
    assert grpc_workers(VARIABLE) == 3
    monkeypatch.setenv(VARIABLE, "0")
    assert grpc_workers(VARIABLE) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_count_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(ValueError, match=VARIABLE):
        grpc_workers(VARIABLE)
