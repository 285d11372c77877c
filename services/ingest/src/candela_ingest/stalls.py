"""Deadlines on store calls, and which stores are stalled right now: what health and metrics report.

A store that stops answering (SeaweedFS out of writable volumes, a broker waiting on it) does not fail a
call: the call hangs. Every S3 and Kafka call of ingest and the writers therefore has a deadline, and a call
that runs past it marks its store *stalled*: ``candela_store_stalled{store}`` goes to 1, the reason is
logged once, and the owner's ``on_change`` callback turns the process's gRPC health to NOT_SERVING. The
store is clear again as soon as one call to it or one probe (:meth:`StallWatch.probe`) succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge

from candela_ingest.kafka import KafkaUnavailable
from candela_ingest.writer.errors import StoreUnavailable
from candela_runtime.errors import Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

STORE_STALLED = Gauge(
    "candela_store_stalled",
    "1 while a store is stalled (its last call ran past its deadline and none succeeded since), else 0.",
    ["store"],
    # Several ingest workers (CANDELA_INGEST_WORKERS): 1 when any live worker has the store stalled, one
    # series per store; a worker that died stalled stops counting (prometheus_client's default keeps every
    # worker's last value, dead ones included, as a series per PID).
    multiprocess_mode="livemax",
)
STORE_TIMEOUTS = Counter(
    "candela_store_timeouts",
    "Store calls that ran past their deadline, by store (s3, kafka) and operation.",
    ["store", "operation"],
)

STORES = ("s3", "kafka")

PROBE_FAILURES = (Unavailable, KafkaUnavailable, StoreUnavailable, TimeoutError, OSError)
"""How the probes of a store say it still does not answer (their own errors, a deadline, a socket error)."""


class StoreStalled(Exception):
    """A store call ran past its deadline; nothing it was doing may be assumed done."""

    def __init__(self, store: str, operation: str, timeout_s: float) -> None:
        super().__init__(f"{store} {operation} took over {timeout_s:.1f}s")
        self.store = store
        self.operation = operation
        self.timeout_s = timeout_s


async def _ignore_change(stalled: bool) -> None:
    """The default ``on_change``: nothing to report to."""


class StallWatch:
    """Which stores are stalled; calls ``on_change(True)`` when the first stalls, ``(False)`` when all clear."""

    def __init__(self, on_change: Callable[[bool], Awaitable[None]] = _ignore_change) -> None:
        self._stalled: dict[str, str] = {}
        self._on_change = on_change
        for store in STORES:
            STORE_STALLED.labels(store).set(0)

    @property
    def stalled(self) -> dict[str, str]:
        """Stalled store -> why (a copy)."""
        return dict(self._stalled)

    def set_on_change(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        """Replaces the callback (the server that reports health exists only after the watch)."""
        self._on_change = on_change

    async def call(self, store: str, operation: str, timeout_s: float, awaitable: Awaitable[T]) -> T:
        """Awaits ``awaitable`` within ``timeout_s``; past it, marks ``store`` stalled and raises
        :class:`StoreStalled`. Success marks the store clear."""
        try:
            async with asyncio.timeout(timeout_s):
                result = await awaitable
        except TimeoutError as err:
            stalled = StoreStalled(store, operation, timeout_s)
            await self.timed_out(store, operation, str(stalled))
            raise stalled from err
        await self.answered(store)
        return result

    async def timed_out(self, store: str, operation: str, reason: str) -> None:
        """Counts a call to ``store`` that ran past its deadline and marks the store stalled (``reason`` is
        logged when it becomes stalled)."""
        STORE_TIMEOUTS.labels(store, operation).inc()
        await self._mark(store, reason)

    async def answered(self, store: str) -> None:
        """Marks ``store`` clear: a call to it just succeeded."""
        if self._stalled.pop(store, None) is None:
            return
        STORE_STALLED.labels(store).set(0)
        logger.warning("store %s answers again (stalled stores left: %s)", store, sorted(self._stalled) or "none")
        if not self._stalled:
            await self._on_change(False)

    async def probe(self, checks: dict[str, Callable[[], Awaitable[None]]], timeout_s: float) -> None:
        """Runs each store's check within ``timeout_s``: one that succeeds clears its store, one that runs past
        the deadline marks it stalled, so a stall shows even while no traffic comes. A check that fails
        otherwise (refused: the store is down, not stalled) changes nothing; calls report that case."""
        for store, check in checks.items():
            try:
                async with asyncio.timeout(timeout_s):
                    await check()
            except TimeoutError:
                await self.timed_out(store, "probe", f"a probe took over {timeout_s:.1f}s")
            except PROBE_FAILURES as err:
                logger.debug("the probe of store %s failed: %r", store, err)
            else:
                await self.answered(store)

    async def _mark(self, store: str, reason: str) -> None:
        first = not self._stalled
        if store not in self._stalled:
            STORE_STALLED.labels(store).set(1)
            logger.error("store %s is stalled: %s; refusing work that needs it until it answers", store, reason)
        self._stalled[store] = reason
        if first:
            await self._on_change(True)


async def probe_until_stopped(
    watch: StallWatch, checks: dict[str, Callable[[], Awaitable[None]]], interval_s: float, timeout_s: float
) -> None:
    """Probes every store each ``interval_s`` until cancelled, so a stall shows, and ends, without traffic."""
    while True:
        await asyncio.sleep(interval_s)
        await watch.probe(checks, timeout_s)
