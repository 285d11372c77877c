"""Several proxy workers on one port (CANDELA_PROXY_WORKERS=2): both serve, one SIGKILLed under load is
restarted while the other keeps serving, and neither a kill nor an ordered shutdown loses a logged answer.

A proxy (a supervisor and its two workers) first runs with ingest away, so that its logs go to each
worker's spool, then again with ingest there:

1. both workers accept connections and do work under load, their logs spooled;
2. worker 1 is SIGKILLed mid-load: worker 0 goes on serving, clients see no error beyond the killed
   worker's in-flight requests, and the supervisor starts slot 1 again, which finds the spool and the
   write-ahead log its predecessor left;
3. SIGTERM to the supervisor, ingest still away: every worker stops in order and the supervisor exits 0;
4. the proxy starts again, ingest there: every log a client was answered for is in the query API, once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from candela.query.v1 import query_service_pb2_grpc
from candela_stack.stack import Component, Stack
from tests.e2e.proxy_support import Service, free_port, metric_value, services, wait_until
from tests.e2e.test_proxy_durability import Load, Organization, _logged, organization

pytestmark = pytest.mark.e2e

__all__ = ["organization"]  # the fixture, shared with the durability tests

CLIENTS = 6


def _workers(supervisor: int) -> dict[int, int]:
    """Slot -> PID of the supervisor's live worker processes."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            if parent != supervisor:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        for variable in environ:
            if variable.startswith(b"CANDELA_PROXY_WORKER_SLOT="):
                found[int(variable.partition(b"=")[2])] = int(entry.name)
    return found


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _slots_answering_health(url: str) -> set[int]:
    """The worker slots that answered /healthz, each call on a new connection."""
    seen: set[int] = set()
    for _ in range(20):
        try:
            answer = httpx.get(f"{url}/healthz", timeout=5)
        except httpx.HTTPError:
            return seen  # not accepting yet
        if answer.status_code == 200:
            seen.add(answer.json()["worker"])
    return seen


def _two_worker_proxy(stack: Stack, tmp_path: Path, port: int, ingest_addr: str) -> Service:
    env = {
        **stack.service_env(Component.PROXY),
        "CANDELA_HTTP_PORT": str(port),
        "CANDELA_SPOOL_DIR": str(tmp_path / "spool"),
        "CANDELA_SHUTDOWN_GRACE_S": "5",
        "CANDELA_PROXY_WORKERS": "2",
        "CANDELA_INGEST_ADDR": ingest_addr,
        "CANDELA_INGEST_TIMEOUT_S": "0.5",
        # Logs wait up to 2 s in memory: a kill under load always finds some there, which only the
        # write-ahead log keeps.
        "CANDELA_LOG_FLUSH_INTERVAL_S": "2",
        "CANDELA_LOG_BATCH_SIZE": "5000",
    }
    proxy = Service([sys.executable, "-m", "candela_proxy"], env, tmp_path / f"proxy-{port}.log")
    url = f"http://127.0.0.1:{port}"
    # Three Python processes start on a shared machine: more time than start_proxy gives one.
    wait_until(
        lambda: proxy.process.poll() is not None or _slots_answering_health(url) == {0, 1},
        timeout_s=90,
        what="both workers accepting",
    )
    assert proxy.process.poll() is None, proxy.output()
    return proxy


@pytest.mark.timeout(300)  # ~40 s on a quiet machine; each Python start takes ~20 s on a loaded one
def test_two_workers_share_the_port_survive_a_kill_and_stop_in_order_losing_no_log(
    stack: Stack,
    organization: Organization,
    query_stub: query_service_pb2_grpc.QueryServiceStub,
    tmp_path: Path,
) -> None:
    port = free_port()
    load = Load("", organization.key, f"workers-{uuid.uuid4().hex[:8]}")
    threads = [threading.Thread(target=load.run, args=(index,)) for index in range(CLIENTS)]
    with services() as started:
        # Ingest is away (nothing listens where the proxy looks for it): every log goes to a spool.
        proxy = _two_worker_proxy(stack, tmp_path, port, f"127.0.0.1:{free_port()}")
        started.append(proxy)
        load.url = f"http://127.0.0.1:{port}"
        workers = _workers(proxy.process.pid)
        cpu_before = {slot: _cpu_seconds(pid) for slot, pid in workers.items()}
        for thread in threads:
            thread.start()
        try:
            # 1. Both workers do the work.
            wait_until(lambda: load.count() >= 60, what="answers")
            busy = {slot: _cpu_seconds(pid) - cpu_before[slot] for slot, pid in workers.items()}
            assert min(busy.values()) > 0.1, f"each worker served part of the load (CPU seconds: {busy})"

            # Worker 1's own spool holds logs, and /metrics sums the spools of both.
            wait_until(lambda: any((tmp_path / "spool" / "worker-1").glob("*.seg")), what="worker 1 spooling")
            wait_until(
                lambda: (
                    metric_value(httpx.get(f"{load.url}/metrics", timeout=10).text, "candela_proxy_spool_bytes") > 0
                ),
                what="the spools' bytes on /metrics",
            )

            # 2. SIGKILL worker 1 mid-load: worker 0 serves on; slot 1 starts again, on the spool and the
            # write-ahead log its predecessor left.
            os.kill(workers[1], signal.SIGKILL)
            killed_at = load.count()
            wait_until(lambda: load.count() >= killed_at + 60, what="answers after the kill")
            assert load.failures <= CLIENTS, f"{load.failures} client errors: more than the killed worker's calls"
            assert _workers(proxy.process.pid)[0] == workers[0], "worker 0 was left alone"
            wait_until(
                lambda: "log spool holds" in proxy.output() and "resending them" in proxy.output(),
                timeout_s=60,
                what="the restarted worker finding its spool and write-ahead log",
            )
            restarted = _workers(proxy.process.pid)[1]
            assert restarted != workers[1]
            wait_until(lambda: 1 in _slots_answering_health(load.url), timeout_s=60, what="slot 1 serving again")
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=30)

        # Counters of every worker, the killed ones included, are summed on /metrics.
        metrics = httpx.get(f"{load.url}/metrics", timeout=10).text
        assert metric_value(metrics, "candela_proxy_requests_total") >= load.count()

        # 3. Ordered shutdown with ingest still away: every worker puts its queue in its spool; the supervisor exits 0.
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=40) == 0, proxy.output()[-3000:]
        assert not _workers(proxy.process.pid)

        # 4. The proxy again, ingest there: the spools are replayed; every answered log is there, once.
        started.append(_two_worker_proxy(stack, tmp_path, port, stack.ingest_addr))
        answered = dict(load.answered)
        deadline = time.monotonic() + 60
        while True:
            ids = [row.request_id for row in _logged(query_stub, organization.key, load.user_id)]
            missing = set(answered) - set(ids)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, f"{len(missing)} of {len(answered)} logs a client was answered for are lost"
        assert len(ids) == len(set(ids)), "no log is doubled"
        # Beyond the answered ones, only calls a kill interrupted may have been logged.
        assert len(ids) <= len(answered) + load.failures
