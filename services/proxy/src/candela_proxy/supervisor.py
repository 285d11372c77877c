"""Several proxy processes on one port (``CANDELA_PROXY_WORKERS``): the supervisor, and what a worker takes from it.

One Python process serves about one core, so ``python -m candela_proxy`` with more than one worker runs a
supervisor that starts N worker processes (``python -m candela_proxy`` again, told their slot) and does no
request work itself. Decisions, and why:

- **One listening socket, bound by the supervisor and passed down** (an inherited file descriptor), rather
  than SO_REUSEPORT sockets bound by each worker. With SO_REUSEPORT every worker has its own accept queue,
  and the kernel resets the connections waiting in the queue of a worker that is killed: clients would
  fail beyond the killed worker's in-flight requests. With one shared queue a connection waits until any
  live worker accepts it, a restarting slot never has connections hashed to it, the port is bound (and a
  port conflict reported) once, and no other process of the same user can join the port and take a share
  of its traffic. Measured here (aiohttp on uvloop, 2 workers, wrk at 64 connections, two runs each) the
  shared queue split the requests 57/43 and 47/53, SO_REUSEPORT's hashing 51/49 and 47/53. Its cost, every
  idle worker woken by each new connection, is small for N of a few cores and keep-alive clients (Envoy
  pools its connections to the proxy).
- **Stable per-slot directories.** Worker ``slot`` keeps its log spool and write-ahead log in
  :func:`slot_dir` (slot 0 uses the configured directory itself, so one worker and one process share a
  layout; slot k uses ``worker-k`` inside it), guarded by an exclusive lock (:class:`SlotLock`). A worker
  that dies is restarted in the same slot, takes the lock once its predecessor is gone, and replays what
  that one left (spool and write-ahead log); two processes never write one directory. Slots beyond the
  worker count (the count went down) are moved into the live slots at start (:func:`adopt_orphaned_slots`).
- **Metrics through Prometheus' multiprocess mode.** Each worker writes its metrics to files in a directory
  the supervisor creates; ``GET /metrics`` on any worker sums them (counters keep the counts of workers
  that died; gauges count the live workers). A worker writes its values through
  :mod:`candela_runtime.worker_metrics`: the library's own files, at a fraction of its cost an update.
  ``/healthz`` is answered by the worker that accepts it and says which slot that is: the state it reports
  (logs at risk, logs pending) is that worker's, the one that would serve a request on the same connection.
- **Ordered shutdown.** SIGTERM (or SIGINT) to the supervisor is passed to every worker, which stops
  accepting, finishes its in-flight requests and flushes its log queue to ingest (or to its spool) within
  the grace period, as a single process does; the supervisor waits for all of them and SIGKILLs only one
  that overruns (its write-ahead log still holds what it answered). Workers run in their own sessions, so a
  terminal's Ctrl-C reaches the supervisor only, and each dies with SIGTERM if the supervisor dies.
- **Restarts** (:class:`candela_runtime.workers.Supervisor`). A worker that exits while the supervisor is
  not stopping is started again in its slot at once; one that keeps failing within seconds of its start
  waits longer each time, and after ``RestartPolicy.give_up_after`` such failures in a row the supervisor
  stops everything and exits 1 (a configuration error, an orchestrator's problem to surface, not a loop to
  spin).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import prometheus_client
from prometheus_client import multiprocess

from candela_proxy.config import ProxyConfig
from candela_runtime.config import load_config
from candela_runtime.lifecycle import wait_for_shutdown_signal
from candela_runtime.logs import configure_logging
from candela_runtime.workers import (
    METRICS_DIR_ENV,
    Supervisor,
    WorkerProcess,
    follow_parent,
    worker_count,
)

logger = logging.getLogger(__name__)

SLOT_ENV = "CANDELA_PROXY_WORKER_SLOT"
"""Set by the supervisor: the worker's slot (0..N-1). Internal wiring, not a setting."""
LISTEN_FD_ENV = "CANDELA_PROXY_LISTEN_FD"
"""Set by the supervisor: the inherited listening socket's file descriptor."""
SUPERVISOR_PID_ENV = "CANDELA_PROXY_SUPERVISOR_PID"
"""Set by the supervisor: its PID (a worker that finds another parent exits)."""
LOCK_NAME = ".candela-slot.lock"


def slot_dir(root: Path, slot: int) -> Path:
    """The directory of ``slot`` under a spool (or write-ahead log) root: slot 0 is the root itself."""
    return root if slot == 0 else root / f"worker-{slot}"


def slot_config(config: ProxyConfig, slot: int) -> dict[str, str]:
    """The environment that points worker ``slot`` at its own spool and write-ahead log directories."""
    env = {"CANDELA_SPOOL_DIR": str(slot_dir(config.spool_dir, slot))}
    if config.wal_dir:
        env["CANDELA_WAL_DIR"] = str(slot_dir(Path(config.wal_dir), slot))
    return env


# --- the worker's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process was told by its supervisor."""

    slot: int
    listen_fd: int
    supervisor_pid: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> WorkerRole | None:
        """The role of this process; None when it is not a supervised worker."""
        env = os.environ if environ is None else environ
        if SLOT_ENV not in env:
            return None
        return cls(int(env[SLOT_ENV]), int(env[LISTEN_FD_ENV]), int(env[SUPERVISOR_PID_ENV]))

    def listening_socket(self) -> socket.socket:
        """The supervisor's listening socket (already bound and listening)."""
        sock = socket.socket(fileno=self.listen_fd)
        sock.setblocking(False)
        return sock

    def follow_supervisor(self) -> None:
        """Makes this process get SIGTERM (an ordered shutdown) when the supervisor dies, even by SIGKILL."""
        follow_parent(self.supervisor_pid)


class SlotLock:
    """An exclusive lock on a slot directory, held for a worker's lifetime (released by the kernel at exit)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file: int | None = None

    def try_acquire(self) -> bool:
        """Takes the lock if nobody holds it; False (not held) otherwise."""
        return self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB)

    def acquire(self) -> None:
        """Takes the lock, waiting (blocking: call from a thread) while a predecessor still holds it."""
        if not self.try_acquire():
            logger.warning("slot directory %s is held by another process; waiting for it to exit", self.directory)
            self._lock(fcntl.LOCK_EX)

    def release(self) -> None:
        """Lets the next holder in."""
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def _lock(self, operation: int) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, operation)
        except BlockingIOError:
            os.close(descriptor)
            return False
        self._file = descriptor
        return True


def metrics_exposition() -> bytes:
    """The Prometheus text of this process, or of every worker when they share a metrics directory."""
    directory = os.environ.get(METRICS_DIR_ENV)
    if not directory:
        return prometheus_client.generate_latest()
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return prometheus_client.generate_latest(registry)


# --- moving slots that no worker owns any more ---------------------------------------------------


def adopt_orphaned_slots(spool_root: Path, wal_root: Path | None, workers: int) -> list[Path]:
    """Moves what slots >= ``workers`` hold (spool segments, write-ahead log segments) into live slots.

    Slot k goes to slot ``k % workers``; its files are renamed after the target's own (sequence numbers
    above the target's largest), so each keeps its order. A slot still locked by a process (a worker of a
    supervisor that was killed, still draining) is left for a later start. Returns the slots emptied.
    """
    moved: list[Path] = []
    if not spool_root.is_dir():
        return moved
    for orphan_spool in sorted(spool_root.glob("worker-*")):
        suffix = orphan_spool.name.removeprefix("worker-")
        if not suffix.isdigit() or int(suffix) < workers:
            continue
        slot = int(suffix)
        target = slot % workers
        lock, target_lock = SlotLock(orphan_spool), SlotLock(slot_dir(spool_root, target))
        if not lock.try_acquire():
            logger.warning("slot %d is still held by a process; its logs are taken at a later start", slot)
            continue
        try:
            if not target_lock.try_acquire():
                logger.warning("slot %d is busy; slot %d's logs are taken at a later start", target, slot)
                continue
            try:
                count = _append_segments(orphan_spool, slot_dir(spool_root, target), ".seg")
                count += _append_segments(
                    _slot_wal(spool_root, wal_root, slot), _slot_wal(spool_root, wal_root, target), ".wal"
                )
            finally:
                target_lock.release()
        finally:
            lock.release()
        if count:
            logger.warning("worker slot %d is gone: moved its %d log segments to slot %d", slot, count, target)
        moved.append(orphan_spool)
    return moved


def _slot_wal(spool_root: Path, wal_root: Path | None, slot: int) -> Path:
    """The write-ahead log directory of ``slot`` (ProxyConfig.wal_path, per slot)."""
    return slot_dir(wal_root, slot) if wal_root is not None else slot_dir(spool_root, slot) / "wal"


def _append_segments(source: Path, target: Path, suffix: str) -> int:
    """Renames ``source``'s segments into ``target``, numbered after ``target``'s; returns how many."""
    segments = sorted(source.glob(f"*{suffix}")) if source.is_dir() else []
    if not segments:
        return 0
    target.mkdir(parents=True, exist_ok=True)
    existing = sorted(target.glob(f"*{suffix}"))
    next_seq = int(existing[-1].stem) + 1 if existing else 1
    for segment in segments:
        segment.rename(target / f"{next_seq:016d}{suffix}")
        next_seq += 1
    directory = os.open(target, os.O_RDONLY)
    try:
        os.fsync(directory)  # the new names survive a power loss
    finally:
        os.close(directory)
    return len(segments)


# --- the supervisor ------------------------------------------------------------------------------


def bind_listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The socket every worker accepts on, inheritable by them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


async def supervise(config: ProxyConfig, workers: int) -> None:
    """Runs ``workers`` proxy processes on the configured port until SIGTERM/SIGINT, then stops them in order."""
    await asyncio.to_thread(
        adopt_orphaned_slots, config.spool_dir, Path(config.wal_dir) if config.wal_dir else None, workers
    )
    listener = bind_listening_socket(config.http_host, config.http_port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="candela-proxy-metrics-"))
    base_env = {
        **os.environ,
        LISTEN_FD_ENV: str(listener.fileno()),
        SUPERVISOR_PID_ENV: str(os.getpid()),
        METRICS_DIR_ENV: str(metrics_dir),
        "CANDELA_METRICS_PORT": "0",  # the workers' metrics are on the proxy port's /metrics, summed
    }

    async def spawn(slot: int) -> WorkerProcess:
        env = {**base_env, SLOT_ENV: str(slot), **slot_config(config, slot)}
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "candela_proxy",
            env=env,
            pass_fds=(listener.fileno(),),
            start_new_session=True,
        )

    def exited(pid: int) -> None:
        multiprocess.mark_process_dead(pid, str(metrics_dir))  # type: ignore[no-untyped-call]

    # Each worker gets its drain (grace) and its log flush (grace) and a margin, as stack.py gives one proxy.
    supervisor = Supervisor(workers, spawn, stop_grace_s=2 * config.shutdown_grace_s + 5, exited=exited)
    runner = asyncio.create_task(supervisor.run(), name="proxy-supervisor")
    signalled = asyncio.create_task(wait_for_shutdown_signal(), name="proxy-supervisor-signal")
    logger.info("proxy supervisor: %d workers on %s:%d", workers, config.http_host, config.http_port)
    try:
        await asyncio.wait({runner, signalled}, return_when=asyncio.FIRST_COMPLETED)
        supervisor.stop()
        status = await runner
    finally:
        signalled.cancel()
        await asyncio.gather(signalled, return_exceptions=True)
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    logger.info("proxy supervisor stopped (%d restarts)", supervisor.restarts)
    if status:
        raise SystemExit(status)


def supervises() -> bool:
    """True when this process is to be the supervisor: not a worker, and more than one worker is asked for."""
    return WorkerRole.from_environ() is None and worker_count(load_config(ProxyConfig).proxy_workers) > 1


async def main() -> None:
    """``python -m candela_proxy`` with more than one worker: the supervisor."""
    config = load_config(ProxyConfig)
    configure_logging("candela-proxy", config.log_level)
    await supervise(config, worker_count(config.proxy_workers))
