"""Process lifecycle: the event loop, waiting for SIGTERM/SIGINT, and time-boxed shutdown steps."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import uvloop
from prometheus_client import start_http_server

from candela_runtime import workers
from candela_runtime.config import env_field, load_config
from candela_runtime.logs import configure_logging

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Settings of every Candela process, whatever it serves."""

    metrics_host: str = env_field("Address of the Prometheus scrape endpoint.", "127.0.0.1")
    metrics_port: int = env_field("Port of the Prometheus scrape endpoint (GET /metrics); 0 serves none.", 0)


WORKER_STOP_GRACE_S = 30.0
"""How long a gRPC service's worker gets to stop after SIGTERM (its own steps are time-boxed shorter)."""

BATCH_GC_THRESHOLD = 1_000_000
"""Allocations between young-generation collections in a process that handles logs in batches: about one
collection per writer batch of 20,000 logs (~75 container objects each, all alive until the batch is
stored). Each collection walks the young objects still alive, so at 50,000 the batch's objects were walked
in every pass they outlived: measured on the writer's batch path (decode, ledger, Native block), 4-6 us of
CPU per log in the collector at 50,000, 1.6 at 200,000, none left inside the batch at 1,000,000."""


def tune_gc_for_batches(young_threshold: int = BATCH_GC_THRESHOLD) -> None:
    """Makes the cyclic garbage collector cheap for a process that builds thousands of objects per batch.

    Python collects its young generation every 700 net allocations by default, so a batch of 20,000 logs
    (tens of containers each) sets off hundreds of collections, and each older-generation pass walks every
    object alive, the long-lived ones included. Freezing what exists after start-up (modules, descriptors,
    clients) moves it out of the collector's sight for good, and a higher young threshold makes the
    collections rare; cycles are still collected, just in fewer, larger passes.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def run(
    main: Callable[[], Coroutine[Any, Any, None]],
    *,
    batch_gc: bool = False,
    workers_variable: str | None = None,
    default_workers: int = 1,
    module: str = "",
) -> None:
    """Runs a service's ``main()`` on uvloop, with its metrics endpoint; exits 0 after a clean shutdown.

    ``batch_gc``: the process handles logs in large batches (ingest, writers): see :func:`tune_gc_for_batches`.
    ``workers_variable`` (a gRPC service, run as ``python -m module``): when that variable (``default_workers``
    when unset; 0: one per core) asks for more than one worker, this process supervises that many copies of
    the service on its port instead (see :mod:`candela_runtime.workers`).
    """
    process = load_config(ProcessConfig)
    if workers_variable is not None and not workers.is_grpc_worker():
        count = workers.grpc_workers(workers_variable, default_workers)
        if count > 1:
            configure_logging(module, os.environ.get("CANDELA_LOG_LEVEL", "INFO"))
            metrics = (process.metrics_host, process.metrics_port)
            uvloop.run(workers.run_grpc_workers(module, count, WORKER_STOP_GRACE_S, metrics))
            return
    if workers.is_grpc_worker():
        workers.follow_parent(int(os.environ[workers.GRPC_SUPERVISOR_ENV]))
    if batch_gc:
        tune_gc_for_batches()
    if process.metrics_port:
        # A daemon thread: it serves until the process exits and needs no shutdown step of its own.
        # Metrics are auxiliary: a taken port is reported loudly but does not stop the service.
        try:
            start_http_server(process.metrics_port, addr=process.metrics_host)
        except OSError as err:
            logger.error("no metrics endpoint: cannot bind %s:%d: %s", process.metrics_host, process.metrics_port, err)
    uvloop.run(main())


def _resolve_once(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


async def wait_for_shutdown_signal() -> str:
    """Returns the name of the first SIGTERM or SIGINT received."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _resolve_once, received, sig.name)
    try:
        name = await received
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    logger.info("received %s, shutting down", name)
    return name


async def shutdown_step(name: str, step: Callable[[], Awaitable[Any]], timeout_s: float) -> None:
    """Runs one shutdown step, logging (not raising) when it fails or overruns, so later steps still run."""
    try:
        await asyncio.wait_for(step(), timeout_s)
    except TimeoutError:
        logger.error("shutdown step %r did not finish within %.1fs", name, timeout_s)
    except Exception:
        logger.exception("shutdown step %r failed", name)


async def serve_until_signal(server: GrpcServerLike, grace_s: float) -> None:
    """Marks ``server`` SERVING, waits for SIGTERM/SIGINT, then stops it gracefully within ``grace_s``."""
    await server.set_serving()
    await wait_for_shutdown_signal()
    await shutdown_step("grpc server", lambda: server.stop(grace_s), grace_s + 2.0)


class GrpcServerLike(Protocol):
    """What :func:`serve_until_signal` needs of a server (see :class:`~candela_runtime.grpc_server.GrpcServer`)."""

    async def set_serving(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...
