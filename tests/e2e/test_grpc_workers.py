"""CANDELA_QUERY_WORKERS=2 and CANDELA_INGEST_WORKERS=2: two processes of the service on one port with
SO_REUSEPORT, both taking calls, one SIGKILLed and restarted while the other serves, their metrics summed,
and an ordered stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.mmap_dict import MmapedDict

from candela_stack.stack import Component, Stack
from tests.e2e.proxy_support import Service, free_port, metric_value, services, wait_until

pytestmark = pytest.mark.e2e


def _workers(supervisor: int) -> dict[int, Path]:
    """PID -> metrics directory of each live worker of the supervisor."""
    found: dict[int, Path] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if parent == supervisor else []
        except (OSError, IndexError, ValueError):
            continue
        for variable in environ:
            if variable.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                found[int(entry.name)] = Path(variable.partition(b"=")[2].decode())
    return found


def _calls_handled(directory: Path, pid: int) -> float:
    """The gRPC calls one worker has handled, from its own multiprocess metrics file (the file alone proves
    nothing: a service whose module declares a counter without labels creates it at import, before serving)."""
    path = directory / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    return sum(
        value
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        if json.loads(key)[0] == "candela_grpc_server_handled"
    )


def _health(address: str) -> int | None:
    """One health check on a connection of its own (so the kernel picks a worker for it); None: no answer."""
    try:
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)
    except grpc.RpcError:
        return None


def _serving(address: str) -> bool:
    return bool(_health(address) == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.timeout(240)  # three Python processes start (~20 s each on a loaded 2-core machine)
@pytest.mark.parametrize(
    ("component", "module", "variable"),
    [
        (Component.QUERY, "candela_query", "CANDELA_QUERY_WORKERS"),
        (Component.INGEST, "candela_ingest", "CANDELA_INGEST_WORKERS"),
    ],
)
def test_two_workers_share_the_port_and_restart_and_stop_in_order(
    stack: Stack, tmp_path: Path, component: Component, module: str, variable: str
) -> None:
    port, metrics_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **stack.service_env(component),
        "CANDELA_GRPC_PORT": str(port),
        "CANDELA_METRICS_PORT": str(metrics_port),
        variable: "2",
        "CANDELA_SHUTDOWN_GRACE_S": "5",
    }
    with services() as started:
        service = Service([sys.executable, "-m", module], env, tmp_path / f"{module}.log")
        started.append(service)
        wait_until(lambda: len(_workers(service.process.pid)) == 2, timeout_s=90, what="two workers")
        wait_until(lambda: _serving(address), timeout_s=90, what=f"{module} serving")
        workers = _workers(service.process.pid)

        def served_by_each() -> bool:
            _serving(address)
            return all(_calls_handled(directory, pid) > 0 for pid, directory in workers.items())

        wait_until(served_by_each, timeout_s=60, what="calls reaching both workers")

        first, second = sorted(workers)
        os.kill(second, signal.SIGKILL)
        # Once the killed worker is gone (its socket leaves the port's SO_REUSEPORT group), every new
        # connection reaches the live one.
        wait_until(lambda: not Path(f"/proc/{second}").exists(), what="the killed worker reaped")
        answers = [_health(address) for _ in range(10)]
        assert answers == [health_pb2.HealthCheckResponse.SERVING] * 10, "the other worker answers every call"
        wait_until(lambda: len(set(_workers(service.process.pid)) - {first}) == 1, timeout_s=60, what="a restart")
        assert first in _workers(service.process.pid)

        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert metric_value(scraped, "candela_grpc_server_handled_total") >= 12, "counts of all workers, summed"

        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=60) == 0, service.output()[-3000:]
        assert not _workers(service.process.pid)
