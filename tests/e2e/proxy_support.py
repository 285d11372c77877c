"""Helpers for the proxy's end-to-end tests: own proxy/ingest processes, the fake's request log, polling."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from candela_stack.stack import Component, Stack


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Polls ``condition`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Service:
    """One service process started by a test (stopped by its PID)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) and wait."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        """What the process logged so far."""
        return self.log.read_text(errors="replace")


def start_proxy(stack: Stack, workdir: Path, port: int | None = None, **overrides: str) -> tuple[Service, str]:
    """A proxy of its own on the test stack, with environment overrides; returns it and its URL."""
    port = port or free_port()
    env = {
        **stack.service_env(Component.PROXY),
        "CANDELA_HTTP_PORT": str(port),
        "CANDELA_SPOOL_DIR": str(workdir / "spool"),
        "CANDELA_SHUTDOWN_GRACE_S": "5",
        **overrides,
    }
    service = Service([sys.executable, "-m", "candela_proxy"], env, workdir / f"proxy-{port}.log")
    url = f"http://127.0.0.1:{port}"
    _started(service, lambda: _answers(f"{url}/healthz"), "proxy start")
    return service, url


def _started(service: Service, ready: Callable[[], bool], what: str) -> None:
    """Waits until ``service`` is ready; one that exits or never gets there is stopped, not left running."""
    try:
        wait_until(lambda: ready() or service.process.poll() is not None, what=what)
        assert service.process.poll() is None, service.output()
    except BaseException:
        service.stop(kill=True)
        raise


def start_ingest(stack: Stack, workdir: Path, port: int) -> Service:
    """An ingest process of its own, writing to the test stack's S3 and Kafka."""
    env = {**stack.service_env(Component.INGEST), "CANDELA_GRPC_PORT": str(port), "CANDELA_SHUTDOWN_GRACE_S": "5"}
    service = Service([sys.executable, "-m", "candela_ingest"], env, workdir / f"ingest-{port}.log")

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    _started(service, listening, "ingest start")
    return service


@contextmanager
def services() -> Iterator[list[Service]]:
    """Stops every service a test registers, whatever happens."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.stop(kill=True)


def fake_requests(stack: Stack, **header_filter: str) -> list[dict[str, Any]]:
    """What the fake provider received, optionally only requests carrying the given header values."""
    assert stack.fake_provider_url is not None
    # Filtered by the fake itself: the unfiltered list holds every large body the other tests sent.
    received: list[dict[str, Any]] = httpx.get(
        f"{stack.fake_provider_url}/_fake/requests",
        params=[("header", f"{name.replace('_', '-')}:{value}") for name, value in header_filter.items()],
        timeout=10,
    ).json()
    return received


def metric_value(metrics_text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples (all label sets)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            sample, _, value = line.rpartition(" ")
            if sample == name or sample.startswith(name + "{"):
                total += float(value)
    return total
