"""Several processes of one service (each a core's worth of Python): the generic supervision.

:class:`Supervisor` keeps one process per slot running, starts a slot again when its process exits (backing
off when it keeps failing at start, giving up after :attr:`RestartPolicy.give_up_after` failures in a row),
and on stop sends every process SIGTERM and waits for its ordered shutdown, SIGKILLing one that overruns.
The proxy builds on it (candela_proxy.supervisor: one inherited listening socket, per-slot spools); the
gRPC services use :func:`run_grpc_workers` (``CANDELA_INGEST_WORKERS``, ``CANDELA_QUERY_WORKERS``): each
worker binds the service's port itself with SO_REUSEPORT (``grpc.so_reuseport``: gRPC binds in its core
and takes no inherited socket), the kernel spreads connections across them, and the supervisor serves the
workers' metrics, summed, on the service's metrics port (Prometheus multiprocess mode). Callers keep
long-lived HTTP/2 connections, so load spreads by connection: one caller with one channel reaches one
worker, several callers (proxy workers, Envoy's threads) reach all of them. The price of SO_REUSEPORT: the
connections still queued at a worker that is killed are reset, and their callers reconnect (a gRPC
channel does so by itself; the proxy resends a batch ingest did not acknowledge).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

logger = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's own variable: where each worker writes its metrics."""
GRPC_WORKER_ENV = "CANDELA_GRPC_WORKER_SLOT"
"""Set by :func:`run_grpc_workers` in each worker: its slot; the worker binds with SO_REUSEPORT."""
GRPC_SUPERVISOR_ENV = "CANDELA_GRPC_SUPERVISOR_PID"
"""Set by :func:`run_grpc_workers` in each worker: the supervisor's PID (see :func:`follow_parent`)."""
_PR_SET_PDEATHSIG = 1


CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where a container sees its own control group (cgroup namespaces): its CPU limit is there."""


def cpu_limit_cores(cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """The cores the control group's CPU quota allows, rounded up (a Kubernetes CPU limit of 1500m: 2);
    None when there is no quota or none can be read. cgroup v2 (``cpu.max``), else v1 (``cpu.cfs_*``)."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup_root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    if quota_us <= 0 or period_us <= 0:  # v1 says -1 for no quota
        return None
    return max(1, -(-quota_us // period_us))


def worker_count(configured: int, cgroup_root: Path = CGROUP_ROOT) -> int:
    """Workers to run: ``configured``, or (0) one per core this process may use: the cores it may run on,
    capped by its container's CPU limit (a pod limited to 1 CPU on a 64-core node gets 1, not 64)."""
    if configured > 0:
        return configured
    cores = len(os.sched_getaffinity(0)) or 1
    limit = cpu_limit_cores(cgroup_root)
    return cores if limit is None else min(cores, limit)


@dataclass
class RestartPolicy:
    """When a worker that exited on its own is started again."""

    min_uptime_s: float = 5.0
    """A worker that ran at least this long before exiting is restarted at once."""
    first_delay_s: float = 0.5
    """The wait after a second quick failure in a row (the first restarts at once); it doubles with each further one."""
    max_delay_s: float = 10.0
    give_up_after: int = 5
    """Quick failures in a row (in one slot) after which the supervisor stops."""

    def delay(self, quick_failures: int) -> float | None:
        """Seconds before the next start after ``quick_failures`` quick failures in a row; None: give up."""
        if quick_failures >= self.give_up_after:
            return None
        if quick_failures <= 1:  # one early death (killed under load, say) is not yet a pattern
            return 0.0
        return min(self.first_delay_s * 2.0 ** (quick_failures - 2), self.max_delay_s)


class WorkerProcess(Protocol):
    """What the supervisor needs of a started worker (an asyncio subprocess)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Spawn = Callable[[int], Awaitable[WorkerProcess]]


@dataclass
class _Slot:
    index: int
    process: WorkerProcess | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    starts: int = 0


@dataclass
class Supervisor:
    """Keeps ``workers`` processes running, one per slot, until told to stop; then stops them in order."""

    workers: int
    spawn: Spawn
    """Starts the worker of a slot."""
    stop_grace_s: float
    """How long workers get to exit after SIGTERM before they are killed."""
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    exited: Callable[[int], None] = lambda pid: None
    """Called with the PID of each worker that exited (to clear its live metrics)."""
    clock: Callable[[], float] = time.monotonic
    _slots: list[_Slot] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    gave_up: bool = False
    """True when a slot kept failing and the supervisor stopped because of it."""
    restarts: int = 0
    """Workers started again after exiting on their own."""

    def pids(self) -> list[int]:
        """The PIDs of the running workers, by slot."""
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    def stop(self) -> None:
        """Starts the ordered shutdown (idempotent)."""
        self._stopping.set()

    async def run(self) -> int:
        """Runs until :meth:`stop`; returns the exit status: 0 when every worker exited cleanly."""
        self._slots = [_Slot(index) for index in range(self.workers)]
        keepers = [asyncio.create_task(self._keep(slot), name=f"worker-slot-{slot.index}") for slot in self._slots]
        try:
            await self._stopping.wait()
            statuses = await self._stop_all()
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        # Ended by our SIGTERM's default action: a worker still starting, which had not yet installed its
        # handler, so served nothing (a serving worker handles SIGTERM and exits 0 once drained).
        clean = all(status in (0, -signal.SIGTERM) for status in statuses)
        return 1 if self.gave_up or not clean else 0

    async def _keep(self, slot: _Slot) -> None:
        """Starts the slot's worker and starts it again whenever it exits, until the supervisor stops."""
        while not self._stopping.is_set():
            try:
                slot.process = await self.spawn(slot.index)
            except OSError:
                logger.exception("cannot start worker %d; stopping the proxy", slot.index)
                self.gave_up = True
                self.stop()
                return
            slot.started_at = self.clock()
            slot.starts += 1
            if slot.starts > 1:
                self.restarts += 1
            status = await slot.process.wait()
            self.exited(slot.process.pid)
            if self._stopping.is_set():
                return
            uptime = self.clock() - slot.started_at
            slot.quick_failures = 0 if uptime >= self.policy.min_uptime_s else slot.quick_failures + 1
            delay = self.policy.delay(slot.quick_failures)
            if delay is None:
                logger.error(
                    "worker %d exited %d times in a row within %.0fs of starting; stopping the proxy",
                    slot.index,
                    slot.quick_failures,
                    self.policy.min_uptime_s,
                )
                self.gave_up = True
                self.stop()
                return
            logger.error(
                "worker %d (pid %d) exited with status %d after %.1fs; starting it again%s",
                slot.index,
                slot.process.pid,
                status,
                uptime,
                f" in {delay:.1f}s" if delay else "",
            )
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def _stop_all(self) -> list[int]:
        """SIGTERM to every live worker, then their exit statuses; SIGKILL to any past the grace."""
        live = [slot.process for slot in self._slots if slot.process is not None and slot.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        statuses: list[int] = []
        for process in live:
            try:
                statuses.append(await asyncio.wait_for(asyncio.shield(process.wait()), self.stop_grace_s))
            except TimeoutError:
                logger.error("worker pid %d did not stop within %.1fs; killing it", process.pid, self.stop_grace_s)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                statuses.append(await process.wait())
        return statuses


def follow_parent(parent_pid: int) -> None:
    """Makes this process get SIGTERM (its ordered shutdown) when ``parent_pid`` (its supervisor) dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("cannot ask for SIGTERM when the supervisor dies (prctl errno %d)", ctypes.get_errno())
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def is_grpc_worker() -> bool:
    """True in a worker started by :func:`run_grpc_workers` (it must bind its port with SO_REUSEPORT)."""
    return GRPC_WORKER_ENV in os.environ


def grpc_workers(variable: str, default: int = 1) -> int:
    """The worker count ``variable`` (e.g. CANDELA_INGEST_WORKERS) asks for, ``default`` when unset; 0 is one
    per core (see :func:`worker_count`)."""
    raw = os.environ.get(variable, "").strip() or str(default)
    try:
        count = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be an integer, got {raw!r}") from None
    if count < 0:
        raise ValueError(f"{variable} must be 0 (one per core) or more, got {count}")
    return worker_count(count)


async def run_grpc_workers(module: str, workers: int, stop_grace_s: float, metrics: tuple[str, int]) -> None:
    """Runs ``workers`` processes of ``python -m module`` on one port until SIGTERM/SIGINT; exits 1 if one
    keeps failing. ``metrics`` is (host, port) of the summed metrics endpoint (port 0: none)."""
    from candela_runtime.lifecycle import wait_for_shutdown_signal  # lifecycle runs this module's supervisors

    metrics_dir = Path(tempfile.mkdtemp(prefix=f"{module}-metrics-"))
    base_env = {**os.environ, METRICS_DIR_ENV: str(metrics_dir), "CANDELA_METRICS_PORT": "0"}
    if metrics[1]:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        try:
            start_http_server(metrics[1], addr=metrics[0], registry=registry)
        except OSError as err:
            logger.error("no metrics endpoint: cannot bind %s:%d: %s", metrics[0], metrics[1], err)
    parent = str(os.getpid())

    async def spawn(slot: int) -> WorkerProcess:
        env = {**base_env, GRPC_WORKER_ENV: str(slot), GRPC_SUPERVISOR_ENV: parent}
        return await asyncio.create_subprocess_exec(sys.executable, "-m", module, env=env, start_new_session=True)

    def exited(pid: int) -> None:
        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]

    supervisor = Supervisor(workers, spawn, stop_grace_s=stop_grace_s, exited=exited)
    runner = asyncio.create_task(supervisor.run(), name=f"{module}-supervisor")
    signalled = asyncio.create_task(wait_for_shutdown_signal(), name=f"{module}-supervisor-signal")
    logger.info("%s: supervising %d workers", module, workers)
    try:
        await asyncio.wait({runner, signalled}, return_when=asyncio.FIRST_COMPLETED)
        supervisor.stop()
        status = await runner
    finally:
        signalled.cancel()
        await asyncio.gather(signalled, return_exceptions=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        raise SystemExit(status)
